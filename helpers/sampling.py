"""Pick the next token from logits: greedy, temperature, top-k, top-p (nucleus)."""
import torch


def check_sampling(temperature=0.0, top_k=None, top_p=None):
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be an integer >= 1 (or None for no limit)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (or None for no limit)")


def sample_next(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
    """logits [vocab] fp32 -> token id (int)."""
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    probs, ids = torch.sort(probs, descending=True)          # [vocab], largest first
    if top_k is not None:
        probs = probs[:top_k]
        ids = ids[:top_k]
    if top_p is not None:
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        before = torch.cumsum(probs, dim=-1) - probs
        keep = before < top_p
        probs, ids = probs[keep], ids[keep]
    choice = torch.multinomial(probs / probs.sum(), 1, generator=generator)
    return int(ids[choice])

"""Pick the next token from logits: greedy, temperature, top-k, top-p (nucleus)."""
import numbers

import numpy as np
import torch


def check_sampling(temperature=0.0, top_k=None, top_p=None):
    """ValueError naming the bad option; `not x >= 0` also catches NaN. numpy numbers are fine, bools are not."""
    def real(x):
        return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))
    if not real(temperature) or not temperature >= 0:
        raise ValueError(f"temperature={temperature!r} must be a number >= 0 (0 means greedy)")
    if top_k is not None and (not real(top_k) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be an integer >= 1 (or None for no limit)")
    if top_p is not None and (not real(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r} must be in (0, 1] (or None for no limit)")


def kept_distribution(logits, temperature=1.0, top_k=None, top_p=None):
    """The tokens sampling may pick and their renormalised probabilities, largest first.

    logits [vocab] -> (probs [n], ids [n]). temperature > 0 here; 0 (greedy) never samples.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    probs, ids = torch.sort(probs, descending=True)          # [vocab], largest first
    if top_k is not None:
        probs, ids = probs[:top_k], ids[:top_k]
    if top_p is not None:
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        before = torch.cumsum(probs, dim=-1) - probs
        keep = before < top_p
        probs, ids = probs[keep], ids[keep]
    return probs / probs.sum(), ids


def sample_next(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
    """logits [vocab] fp32 -> token id (int). generator (a CPU torch.Generator) makes draws reproducible."""
    if temperature == 0:
        return int(torch.argmax(logits))
    probs, ids = kept_distribution(logits.cpu(), temperature, top_k, top_p)
    choice = torch.multinomial(probs, 1, generator=generator)
    return int(ids[choice])

"""Generation, what notebook 08 teaches: pick the next token (greedy, temperature, top-k, top-p), keep a KV
cache, and loop: the prompt runs through the model once, then each new token is one position.
"""
import numbers

import numpy as np
import torch

from helpers.device import DEVICE
from helpers.transformer import as_index, auto_fp32, check_precision, check_tokens, forward, fp32_weights

# ---- sampling: logits -> the next token


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


# ---- the KV cache


class KVCache:
    """Per layer, k (after RoPE) and v for every position so far, with n_kv_heads heads (GQA).

    Kept in fp32 so cached steps give the same logits as a full recomputation;
    size = 2 (k, v) * n_layers * max_len * n_kv_heads * head_dim * 4 bytes.
    """

    def __init__(self, args, max_len):
        shape = (args.n_layers, max_len, args.n_kv_heads, args.head_dim)
        self.k = torch.zeros(shape, device=DEVICE)  # [n_layers, max_len, n_kv_heads, head_dim]
        self.v = torch.zeros(shape, device=DEVICE)
        self.max_len = max_len

    @property
    def nbytes(self):
        return self.k.nbytes + self.v.nbytes

    def update(self, i, start_pos, k, v):
        """store k, v [T, n_kv_heads, head_dim] at start_pos.. and return all keys/values so far."""
        end = start_pos + k.shape[0]
        self.k[i, start_pos:end], self.v[i, start_pos:end] = k, v
        return self.k[i, :end], self.v[i, :end]


# ---- the loop


@torch.inference_mode()
def generate(weights, args, tokenizer, prompt, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
             seed=None, stop_tokens=None, progress=None, on_token=None, fp32_copy="auto", precision="fp32"):
    """Continue prompt (text, or a list of ids) with up to max_new_tokens; return the new text only.

    Greedy by default; temperature/top_k/top_p sample, reproducibly when seed is given. Stops at
    <|end_of_text|>/<|eot_id|> (not included in the text). on_token(id) is called as each token arrives.
    The prompt runs through the model once, filling a KVCache; each new token is then one position.
    fp32_copy: "auto" upcasts the weights once when that copy fits in FP32_AUTO_LIMIT (small models: same
    numbers, no per-token upcasting); True/False force it on/off. The 8B always upcasts per use.
    precision: "fp32" (exact, default) or "bf16" (weight matmuls in bf16, as forward; no fp32 copy).
    """
    check_precision(precision)
    if isinstance(prompt, str) and not prompt:
        raise ValueError("empty prompt: give some text (or token ids) to continue")
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else check_tokens(args, prompt)
    n = as_index(max_new_tokens)
    if n is None or n <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    max_new_tokens = n
    check_sampling(temperature, top_k, top_p)
    total = len(ids) + max_new_tokens
    if total > args.max_seq_len:
        raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
                         f"the context limit max_seq_len={args.max_seq_len}; shorten one of them")
    stop = set(tokenizer.stop_tokens if stop_tokens is None else stop_tokens)
    if fp32_copy is True:
        weights = fp32_weights(weights)
    elif fp32_copy == "auto" and (precision == "fp32" or hasattr(weights, "matmul")):
        weights = auto_fp32(weights)  # a small GGUF: dequantize once, not at every step (bf16 rounds it per use)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    cache = KVCache(args, total)
    steps = range(max_new_tokens)
    if progress or (progress is None and max_new_tokens >= 64):
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="tokens", leave=False)
    logits, pos, out = forward(weights, args, ids, cache, 0, last_only=True, precision=precision), len(ids), []
    for _ in steps:
        nxt = sample_next(logits[-1], temperature, top_k, top_p, gen)
        if nxt in stop:
            break
        out.append(nxt)
        if on_token is not None:
            on_token(nxt)
        if len(out) < max_new_tokens:                                       # the last token needs no forward
            logits = forward(weights, args, [nxt], cache, pos, last_only=True, precision=precision)
            pos += 1
    return tokenizer.decode(out)

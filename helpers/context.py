"""Context length (notebook 18): loss at every position of windows longer than the model trained on, and the
RoPE fixes that stretch a model's positions: position interpolation, NTK-aware theta, Llama 3.1's scaling.

Each fix is a different frequency vector for RoPE; `position_losses` runs the by-hand forward pass
(helpers.transformer.layer) with the rotations those frequencies give, so the same weights are scored under
each.
"""
import dataclasses
import math

import torch

from helpers.device import DEVICE
from helpers.generate import KVCache
from helpers.transformer import fp32, layer, linear, rms_norm, scale_frequencies

METHODS = ("none", "linear", "ntk", "dynamic", "llama3")


def base_frequencies(head_dim, theta):
    """theta^(-2i/head_dim), i < head_dim/2: RoPE's angle per position for each pair (fp32)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def ntk_theta(theta, head_dim, factor):
    """NTK-aware base: theta * factor^(d/(d-2)) leaves the fastest pair alone and slows the slowest pair by
    exactly `factor`, so positions up to factor x the trained length stay within trained angles there."""
    return theta * factor ** (head_dim / (head_dim - 2))


def dynamic_factor(factor, seq_len, trained):
    """the NTK factor transformers' 'dynamic' rope uses at seq_len: 1 up to the trained length, then growing."""
    return factor * max(seq_len, trained) / trained - (factor - 1)


def check_scaling(method, factor, trained):
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {METHODS}")
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 1):
        raise ValueError(f"factor={factor!r} must be a finite number >= 1 (the context is stretched factor times)")
    if isinstance(trained, bool) or not isinstance(trained, int) or trained < 1:
        raise ValueError(f"trained={trained!r} must be the trained context length, a positive integer")


def scaled_frequencies(args, method="none", factor=1.0, trained=None, seq_len=None, low=1.0, high=4.0):
    """RoPE frequencies [head_dim/2] for a model trained on `trained` positions, stretched `factor` times:
    none: theta^(-2i/d) as trained | linear: all / factor (position interpolation: position p acts as p/factor)
    ntk: theta -> ntk_theta | dynamic: ntk with the factor grown from seq_len (transformers' 'dynamic')
    llama3: helpers.transformer.scale_frequencies with original context `trained` and low/high factors."""
    trained = args.max_seq_len if trained is None else trained
    check_scaling(method, factor, trained)
    hd = args.head_dim
    freqs = base_frequencies(hd, args.rope_theta)
    if method == "linear":
        return freqs / factor
    if method == "ntk":
        return base_frequencies(hd, ntk_theta(args.rope_theta, hd, factor))
    if method == "dynamic":
        f = dynamic_factor(factor, trained if seq_len is None else seq_len, trained)
        return base_frequencies(hd, ntk_theta(args.rope_theta, hd, f))
    if method == "llama3":
        a = dataclasses.replace(args, rope_scaling_factor=float(factor), rope_low_freq_factor=low,
                                rope_high_freq_factor=high, rope_original_context=trained)
        return scale_frequencies(freqs, a)
    return freqs


def hf_frequencies(args, method, factor, trained, seq_len=None, low=1.0, high=4.0):
    """the same frequencies from transformers' ROPE_INIT_FUNCTIONS (rope_type linear/dynamic/llama3), for checks."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    rope = dict(rope_type=method, factor=float(factor), rope_theta=float(args.rope_theta))
    if method == "llama3":
        rope.update(low_freq_factor=low, high_freq_factor=high, original_max_position_embeddings=trained)
    config = LlamaConfig(hidden_size=args.dim, num_attention_heads=args.n_heads, head_dim=args.head_dim,
                         max_position_embeddings=math.ceil(trained * (factor if method == "llama3" else 1)),
                         rope_parameters=rope)
    return ROPE_INIT_FUNCTIONS[method](config, seq_len=seq_len)[0]


def rotations(freqs, T):
    """e^(i * p * freq) for p < T: [T, head_dim/2] complex64, as helpers.transformer.rope_rotations."""
    angles = torch.outer(torch.arange(T, dtype=torch.float32), freqs)     # [T, head_dim/2]
    return torch.polar(torch.ones_like(angles), angles).to(DEVICE)


@torch.inference_mode()
def position_losses(weights, args, windows, freqs, stride=1, rows=256):
    """nats of the next-token predictions at positions 0, stride, 2*stride, ... < T-1: [n, ceil((T-1)/stride)]
    float64, for windows [n, T] of ids, with RoPE frequencies freqs. Every position still attends to all
    earlier ones; stride only skips the output matmul (vocab x dim per position, the costly part for a small
    model) at the others. Logits are made `rows` positions at a time."""
    windows = torch.as_tensor(windows, dtype=torch.long)
    n, T = windows.shape
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride={stride!r} must be a positive integer")
    if T > args.max_seq_len:
        args = dataclasses.replace(args, max_seq_len=T)  # the point here is to go past it
    rot = rotations(freqs, T)
    pos = torch.arange(0, T - 1, stride)                                   # scored positions
    out = torch.empty(n, len(pos), dtype=torch.float64)
    for j, w in enumerate(windows):
        h = weights["tok_embeddings.weight"][w].to(device=DEVICE, dtype=torch.float32)  # [T, dim]
        for i in range(args.n_layers):
            h = layer(h, weights, args, i, rot)
        h = rms_norm(h[pos], fp32(weights, "norm.weight"), args.norm_eps)   # [len(pos), dim]
        y = w[pos + 1].to(DEVICE)                                          # [len(pos)] targets
        for a in range(0, len(pos), rows):
            logits = linear(h[a:a + rows], weights, "output.weight")       # [<=rows, vocab]
            nll = torch.logsumexp(logits, -1) - logits.gather(1, y[a:a + rows, None])[:, 0]
            out[j, a:a + len(nll)] = nll.double().cpu()
    return out


def heldout_windows(tokenizer, T, n, play=None):
    """n windows [n, T] of ids cut one after another from a held-out play (helpers.data.VAL_PLAYS[0] by
    default), each starting with the tokenizer's bos as training rows do."""
    from helpers.data import VAL_PLAYS, load_texts
    text = load_texts()[play or VAL_PLAYS[0]]
    ids = tokenizer.encode(text, bos=False, eos=False)
    if len(ids) < n * (T - 1):
        raise ValueError(f"the play has {len(ids)} tokens, fewer than {n} windows of {T - 1}: ask for fewer")
    bos = tokenizer.encode("", bos=True, eos=False)
    body = torch.tensor(ids[: n * (T - 1)]).view(n, T - 1)                 # [n, T-1]
    return torch.cat([torch.full((n, 1), bos[0]) if bos else body[:, :1], body], 1)  # [n, T]


def attention_bytes(args, T, bytes_per=4):
    """bytes of one layer's attention scores [n_heads, T, T] if materialised (as helpers.transformer does)."""
    return bytes_per * args.n_heads * T * T


def kv_cache_bytes(args, T, bytes_per=4):
    """bytes of a KV cache for T positions: 2 (k, v) x n_layers x T x n_kv_heads x head_dim."""
    return bytes_per * 2 * args.n_layers * T * args.n_kv_heads * args.head_dim


def kv_cache_nbytes(args, T):
    """helpers.generate.KVCache(args, T).nbytes, measured by building one (fp32)."""
    return KVCache(args, T).nbytes

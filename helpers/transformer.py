"""The Llama 3 forward pass by hand, on the raw weights dict: what notebooks 02-07 teach, in one place.

Weights stay as loaded (bf16, mmap'd); each matrix is upcast to fp32 only while it is used. With
precision="bf16" the weight matmuls run in bf16 instead (faster on CPUs/GPUs with bf16 units, not exact).
Generation (the KV cache, sampling; notebook 08) is in helpers.generate; helpers.model imports both.
"""
import math
import operator
from collections.abc import Sequence

import torch

from helpers.device import DEVICE
from helpers.upcast import CHUNK, matmul_upcast, upcast_rows  # noqa: F401 (CHUNK, upcast_rows: re-exported)


def fp32(weights, name):
    """One tensor of the checkpoint, upcast to fp32 on DEVICE."""
    return weights[name].to(device=DEVICE, dtype=torch.float32)


PRECISIONS = ("fp32", "bf16")


def check_precision(precision):
    """precision is 'fp32' (exact, the default) or 'bf16'; anything else: one ValueError naming both."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {PRECISIONS}: 'fp32' (default) computes every "
                         "step in fp32, exact to the printed digits; 'bf16' runs the weight matmuls in bf16 "
                         "(fp32 accumulation, as Hugging Face's bf16 model), faster where the CPU/GPU has bf16 units")
    return precision


def linear(x, weights, name, precision="fp32"):
    """x @ W.T for W = weights[name] [out, in], upcasting W a block of rows at a time (helpers.upcast).

    precision="bf16": one bf16 matmul instead (x rounded to bf16, fp32 accumulation inside the kernel, the
    output rounded to bf16 as Hugging Face's bf16 model does), returned as fp32; no fp32 copy of W.
    int8 W (helpers.quant.int8_weights): PyTorch's int8 weight-only kernel, on x in fp32 or (faster) bf16.
    A GGUF file's weights (helpers.gguf_file) are dequantized a block of rows at a time, never whole."""
    bf16 = precision != "fp32" and check_precision(precision) == "bf16"
    if hasattr(weights, "matmul"):       # GGUFWeights: weights[name] would dequantize the whole matrix
        return weights.matmul(x, name, bf16)
    w = weights[name]
    if w.dtype == torch.int8:             # helpers.quant.int8_weights; precision sets the activations' dtype
        from helpers.quant import int8_linear
        q, scale = w.to(DEVICE), weights[name + "_scale"].to(DEVICE)
        return int8_linear(x.to(torch.bfloat16) if bf16 else x, q, scale).float()
    if bf16:
        return (x.to(torch.bfloat16) @ w.to(device=DEVICE, dtype=torch.bfloat16).T).float()
    if w.dtype == torch.float32 or (torch.is_grad_enabled() and x.requires_grad):  # fp32_weights, autograd
        return x @ fp32(weights, name).T
    return matmul_upcast(x, w)


def rms_norm(x, weight, eps):
    """x / sqrt(mean(x^2) + eps) * weight, in fp32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def rope_frequencies(args):
    """theta^(-2i/head_dim) for i < head_dim/2, with llama 3.1 scaling when params ask for it."""
    hd = args.head_dim
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    if args.use_scaled_rope:
        freqs = scale_frequencies(freqs, args)
    return freqs


def scale_frequencies(freqs, args):
    """llama 3.1: slow the low frequencies by the factor, keep the high ones, blend in between."""
    factor, lo, hi = args.rope_scaling_factor, args.rope_low_freq_factor, args.rope_high_freq_factor
    old = args.rope_original_context
    wavelen = 2 * math.pi / freqs
    scaled = torch.where(wavelen > old / lo, freqs / factor, freqs)
    smooth = (old / wavelen - lo) / (hi - lo)
    mid = (wavelen >= old / hi) & (wavelen <= old / lo)
    return torch.where(mid, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def rope_rotations(args, positions):
    """e^(i * pos * freq): [len(positions), head_dim/2] complex64."""
    angles = torch.outer(positions.float(), rope_frequencies(args))
    return torch.polar(torch.ones_like(angles), angles).to(DEVICE)


def apply_rope(x, rot):
    """Rotate consecutive pairs of x [T, heads, head_dim] by rot [T, head_dim/2]."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [T, heads, head_dim/2]
    return torch.view_as_real(pairs * rot[:, None, :]).flatten(-2)           # [T, heads, head_dim]


def causal_mask(T, start_pos=0):
    """[T, start_pos+T]: 0 where query t may see key s (s <= start_pos + t), -inf elsewhere."""
    q = torch.arange(T, device=DEVICE)[:, None] + start_pos
    s = torch.arange(start_pos + T, device=DEVICE)[None, :]
    return torch.zeros(T, start_pos + T, device=DEVICE).masked_fill(s > q, float("-inf"))


def attention(x, weights, args, i, rot, cache=None, start_pos=0, record=None, precision="fp32"):
    """Grouped-query attention of layer i on normed x [T, dim] -> [T, dim]."""
    T, hd, p, pr = x.shape[0], args.head_dim, f"layers.{i}.attention.", precision
    q = linear(x, weights, p + "wq.weight", pr).view(T, args.n_heads, hd)     # [T, n_heads, head_dim]
    k = linear(x, weights, p + "wk.weight", pr).view(T, args.n_kv_heads, hd)  # [T, n_kv_heads, head_dim]
    v = linear(x, weights, p + "wv.weight", pr).view(T, args.n_kv_heads, hd)  # [T, n_kv_heads, head_dim]
    q, k = apply_rope(q, rot), apply_rope(k, rot)
    if cache is not None:
        k, v = cache.update(i, start_pos, k, v)                            # [S, n_kv_heads, head_dim]
    k = k.repeat_interleave(args.n_rep, dim=1)                             # [S, n_heads, head_dim]
    v = v.repeat_interleave(args.n_rep, dim=1)                             # [S, n_heads, head_dim]
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd)            # [n_heads, T, S]
    masked = scores + causal_mask(T, start_pos) if T > 1 else scores      # one new token may see every key
    probs = torch.softmax(masked, dim=-1)
    if record is not None:
        record.setdefault("scores", []).append(scores)
        record.setdefault("attn", []).append(probs)
    out = torch.einsum("hts,shd->thd", probs, v).reshape(T, args.dim)     # [T, dim]
    return linear(out, weights, p + "wo.weight", pr)


def feed_forward(x, weights, i, precision="fp32"):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""
    p = f"layers.{i}.feed_forward."
    gate = torch.nn.functional.silu(linear(x, weights, p + "w1.weight", precision))
    return linear(gate * linear(x, weights, p + "w3.weight", precision), weights, p + "w2.weight", precision)


def layer(h, weights, args, i, rot, cache=None, start_pos=0, record=None, precision="fp32"):
    """One transformer block: pre-norm attention and pre-norm SwiGLU, each added to the residual."""
    x = rms_norm(h, fp32(weights, f"layers.{i}.attention_norm.weight"), args.norm_eps)
    h = h + attention(x, weights, args, i, rot, cache, start_pos, record, precision)
    x = rms_norm(h, fp32(weights, f"layers.{i}.ffn_norm.weight"), args.norm_eps)
    return h + feed_forward(x, weights, i, precision)


def embed(weights, tokens):
    """Embedding lookup = row indexing: [T] ids -> [T, dim] fp32."""
    return embedding_rows(weights, tokens).to(device=DEVICE, dtype=torch.float32)


def embedding_rows(weights, tokens):
    """The embedding rows of ids; a GGUF file's (helpers.gguf_file) dequantizes only those rows."""
    ids = torch.as_tensor(tokens, dtype=torch.long)
    if hasattr(weights, "rows"):
        return weights.rows("tok_embeddings.weight", ids)
    return weights["tok_embeddings.weight"][ids]


def as_index(x):
    """x as a Python int if it is an integer (int, numpy or 0-d torch integer), else None; bools are not ids."""
    if isinstance(x, bool) or (torch.is_tensor(x) and x.dtype == torch.bool):
        return None
    try:
        return operator.index(x)
    except TypeError:
        return None


def check_tokens(args, tokens):
    """ids (a flat list, 1-D tensor or array of ints) -> list of ints, each a row of the embedding table."""
    ndim = getattr(tokens, "ndim", 1)                                       # tensors and numpy arrays have one
    if isinstance(tokens, (str, bytes)) or ndim == 0 or not (isinstance(tokens, Sequence) or hasattr(tokens, "tolist")):
        raise ValueError(f"token ids (the prompt) must be a list of integers (one id: [id]), got "
                         f"{type(tokens).__name__} {tokens!r:.60}; to run text, tokenizer.encode(text) first")
    shape = list(getattr(tokens, "shape", [len(tokens)]))
    tokens = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
    if ndim != 1 or (tokens and isinstance(tokens[0], (list, tuple))):      # [[1, 2, 3]]: the HF batch habit
        shape = shape if ndim != 1 else [len(tokens), len(tokens[0])]
        raise ValueError(f"token ids must be one flat sequence, got a batch of shape {shape}: forward runs one "
                         "sequence at a time; pass a flat list of ids, e.g. ids[0]")
    if not tokens:
        raise ValueError("no tokens (an empty prompt?): give at least one token id")
    ids = [as_index(t) for t in tokens]
    if None in ids:
        n = ids.index(None)
        raise ValueError(f"token ids must be integers, got {type(tokens[n]).__name__} {tokens[n]!r:.40} at "
                         f"position {n}; to run text, tokenizer.encode(text) first")
    if max(ids) >= args.vocab_size or min(ids) < 0:
        bad = max(ids) if max(ids) >= args.vocab_size else min(ids)
        raise ValueError(f"token id {bad} is outside the vocabulary (vocab_size={args.vocab_size}); "
                         "was it made by another tokenizer?")
    return ids


def forward_order(args):
    """Weight names in the order forward() uses them."""
    names = ["tok_embeddings.weight"]
    for i in range(args.n_layers):
        a, f = f"layers.{i}.attention.", f"layers.{i}.feed_forward."
        names += [f"layers.{i}.attention_norm.weight", a + "wq.weight", a + "wk.weight", a + "wv.weight",
                  a + "wo.weight", f"layers.{i}.ffn_norm.weight", f + "w1.weight", f + "w3.weight", f + "w2.weight"]
    return names + ["norm.weight", "output.weight"]


def count_nonfinite(t):
    """NaN/inf count of t, a block at a time: no full-size copy of an 8B matrix."""
    flat = t.reshape(-1)
    return sum(int((~torch.isfinite(flat[a:a + CHUNK])).sum()) for a in range(0, flat.numel(), CHUNK))


def nonfinite_cause(weights, args, tokens):
    """Why the logits hold NaN/inf: the first weight (in forward order) that does, else bad params, else overflow."""
    rows = embedding_rows(weights, tokens)
    for n, row in zip(tokens, rows):
        if count_nonfinite(row):
            return f"tok_embeddings.weight row {n} (the embedding of token {n}) holds NaN/inf"
    for name in forward_order(args)[1:]:
        if name in weights and (bad := count_nonfinite(weights[name])):
            return f"weight {name} holds {bad} NaN/inf value(s) of {weights[name].numel()}"
    bad = [f"{k}={getattr(args, k)!r}" for k in ("rope_theta", "norm_eps")
           if not (math.isfinite(getattr(args, k)) and getattr(args, k) > 0)]
    if bad:
        return f"the weights are finite but {' and '.join(bad)} must be a positive finite number (fix params.json)"
    if not torch.isfinite(rope_frequencies(args)).all():
        return (f"the RoPE frequencies are not finite: check rope_scaling_factor={args.rope_scaling_factor!r}, "
                f"rope_low_freq_factor={args.rope_low_freq_factor!r}, "
                f"rope_high_freq_factor={args.rope_high_freq_factor!r}")
    return ("the weights and params are finite, so the activations overflowed fp32 inside the model: "
            "are the weights scaled wrongly (e.g. saved from a diverged training run)?")


RECORD_LIMIT = 1 << 30  # bytes forward(record=...) may keep: attention is n_layers * n_heads * T^2 per tensor


def record_bytes(args, T, S=None):
    """bytes a record dict keeps for T queries over S keys: fp32 scores and probs [n_heads, T, S] per layer,
    plus the residual [T, dim] per layer."""
    S = T if S is None else S
    return 4 * args.n_layers * (2 * args.n_heads * T * S + T * args.dim)


def nbytes(n):
    """A byte count for messages: MiB below 0.25 GiB, else GiB."""
    return f"{n / 2**20:.1f} MiB" if n < 1 << 28 else f"{n / 2**30:.2f} GiB"


def forward(weights, args, tokens, cache=None, start_pos=0, last_only=False, record=None, progress=False,
            record_max_bytes=RECORD_LIMIT, precision="fp32"):
    """Token ids -> fp32 logits [len(tokens), vocab_size] (or [1, vocab_size] with last_only).

    cache/start_pos: continue from a KVCache (helpers.generate) holding positions < start_pos.
    record: a dict that receives per-layer 'attn', 'scores' and the residual stream 'resid'
    (refused up front when that would exceed record_max_bytes).
    precision: "fp32" (exact) or "bf16" (the weight matmuls in bf16; norms, RoPE, attention, KV cache in fp32).
    """
    check_precision(precision)
    tokens = check_tokens(args, tokens)
    end = start_pos + len(tokens)
    limit = cache.max_len if cache is not None else args.max_seq_len
    if end > limit:
        raise ValueError(f"{end} positions exceed the limit of {limit} (max_seq_len / cache size); "
                         "shorten the prompt")
    if record is not None and (need := record_bytes(args, len(tokens), end)) > record_max_bytes:
        raise ValueError(f"record= would keep {nbytes(need)} of attention for {len(tokens)} tokens "
                         f"({args.n_layers} layers x {args.n_heads} heads x T^2 scores and probs), over "
                         f"record_max_bytes={nbytes(record_max_bytes)}: use a shorter prompt, "
                         "record fewer layers (helpers.viz.Trace), or raise record_max_bytes")
    h = embed(weights, tokens)                                              # [T, dim]
    rot = rope_rotations(args, torch.arange(start_pos, end))
    layers = range(args.n_layers)
    if progress:
        from tqdm.auto import tqdm
        layers = tqdm(layers, desc="layers", leave=False)
    for i in layers:
        h = layer(h, weights, args, i, rot, cache, start_pos, record, precision)
        if record is not None:
            record.setdefault("resid", []).append(h)
    h = h[-1:] if last_only else h
    h = rms_norm(h, fp32(weights, "norm.weight"), args.norm_eps)
    logits = linear(h, weights, "output.weight", precision)                 # [T, vocab_size]
    lo, hi = torch.aminmax(logits)                                          # NaN/inf show in min or max: one
    if not (lo.isfinite() & hi.isfinite()):                                 # cheap check; the search only on failure
        raise ValueError(f"the logits hold NaN/inf: {nonfinite_cause(weights, args, tokens)}")
    return logits


FP32_COPY_LIMIT = 2 << 30  # bytes: fine for small models; the real 8B would need 32 GB


FP32_AUTO_LIMIT = 1 << 30  # generate() upcasts once below this; above, per use (no 2x RAM for big models)


def fp32_bytes(weights):
    """bytes of an fp32 copy of every distinct tensor (tied embeddings count once). A lazily merged
    multi-shard dict (helpers.shards) or a GGUF file (helpers.gguf_file) is counted from its shapes: merging
    or dequantizing every tensor to count it would hold the whole model in memory at once."""
    if hasattr(weights, "fp32_bytes"):
        return weights.fp32_bytes()
    if hasattr(weights, "shape"):
        stored = {weights.layout[name][0]: name for name in weights}             # a tied output is stored once
        return sum(4 * math.prod(weights.shape(name)) for name in stored.values())
    return sum(4 * t.numel() for t in {id(t): t for t in weights.values()}.values())


def is_int8(weights):
    """weights made by helpers.quant.int8_weights (its scales are the only '_scale' keys); names only, so a
    lazily merged multi-shard dict is not merged."""
    return any(name.endswith("_scale") for name in weights)


def auto_fp32(weights):
    """fp32_weights(weights) when that copy fits in FP32_AUTO_LIMIT (same numbers, no per-use upcasting), else
    weights as they are: the 8B keeps upcasting one block at a time."""
    if is_int8(weights):                                                    # int8 weights stay int8
        return weights
    return fp32_weights(weights) if fp32_bytes(weights) <= FP32_AUTO_LIMIT else weights


def fp32_weights(weights, max_bytes=FP32_COPY_LIMIT):
    """Opt-in speed-up for small models: every tensor upcast to fp32 on DEVICE once, so generation
    stops re-upcasting bf16 matrices at every token. Same numbers; refuses above max_bytes."""
    if is_int8(weights):
        raise ValueError("these weights are int8 (helpers.quant.int8_weights): an fp32 copy of the int8 values "
                         "would drop their scales; use them as they are, or the bf16 checkpoint")
    need = fp32_bytes(weights)                                              # before touching any tensor
    if need > max_bytes:
        raise ValueError(f"an fp32 copy of these weights needs {need / 2**30:.1f} GiB, over max_bytes="
                         f"{max_bytes / 2**30:.1f} GiB; keep the bf16 weights (upcast per use) or raise max_bytes")
    unique = {id(t): t for t in weights.values()}                          # tied embeddings count once
    copies = {i: t.to(device=DEVICE, dtype=torch.float32) for i, t in unique.items()}
    return {name: copies[id(t)] for name, t in weights.items()}

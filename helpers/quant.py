"""Quantization by hand, what notebook 14 teaches: int8 per output channel, int4 in groups (GGUF Q4_0's
layout), dequantization, the error each leaves, bytes per format, and PyTorch's int8 weight-only matmul.

Weights are [out, in] as in the checkpoint (y = x @ W.T), so a row is one output channel and a group is
`group` consecutive inputs of one row.
"""
import torch

from helpers.state_dict import expected_shapes

GROUPS = (32, 64, 128)


def check_matrix(w, group=None):
    if not torch.is_tensor(w) or w.ndim != 2 or not w.is_floating_point():
        raise ValueError(f"expected a 2-D float weight matrix [out, in], got "
                         f"{type(w).__name__} {getattr(w, 'dtype', '')} {tuple(getattr(w, 'shape', ()))}")
    if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 2 or group % 2):
        raise ValueError(f"group={group!r} must be an even integer >= 2, e.g. one of {GROUPS}")


# ---- int8, symmetric, one scale per output channel (row)


def quantize_int8(w):
    """w [out, in] -> (q int8 [out, in], scale fp32 [out]): scale = max|row| / 127, q = round(w / scale)."""
    check_matrix(w)
    w = w.float()
    scale = w.abs().amax(dim=1) / 127                     # [out]
    scale = torch.where(scale > 0, scale, 1.0)             # an all-zero row: any scale gives q = 0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q, scale):
    """q * scale, row by row: fp32 [out, in]."""
    return q.float() * scale[:, None]


# ---- int4, symmetric, one scale per group of inputs (GGUF Q4_0 for group 32)


def quantize_int4(w, group=32):
    """w [out, in] -> (packed uint8 [out, n/2], scale fp16 [out, n/group]), n = in rounded up to a whole group.

    As Q4_0: per group, d = (the value of largest magnitude, with its sign) / -8, stored as fp16; each
    value becomes q = round(w / d) in [-8, 7] (only the opposite extreme, w / d = +8, is clamped to 7).
    An input dim that is not a multiple of group is padded with zeros (dequantize_int4(..., n=in) trims them).
    """
    check_matrix(w, group)
    out, n = w.shape[0], -(-w.shape[1] // group) * group
    g = torch.nn.functional.pad(w.float(), (0, n - w.shape[1])).view(out, n // group, group)  # [out, n_groups, group]
    idx = g.abs().argmax(dim=-1, keepdim=True)
    d = (g.gather(-1, idx) / -8).squeeze(-1).half()        # [out, n_groups], rounded to fp16 first
    d = torch.where(d != 0, d, torch.ones_like(d))         # an all-zero group: q = 0
    q = torch.round(g / d.float()[..., None]).clamp(-8, 7).to(torch.int8)
    return pack_int4(q.view(out, n), group), d


def pack_int4(q, group):
    """int8 values in [-8, 7] [out, in] -> uint8 [out, in/2], two per byte, Q4_0's layout per group:
    the byte j of a group holds value j (low nibble) and value j + group/2 (high nibble), each + 8."""
    out, n = q.shape
    u = (q.to(torch.int16) + 8).to(torch.uint8).view(out, n // group, 2, group // 2)  # [out, groups, 2, g/2]
    return (u[:, :, 0] | (u[:, :, 1] << 4)).reshape(out, n // 2)


def unpack_int4(packed, group):
    """uint8 [out, in/2] -> int8 [out, in] in [-8, 7]: the inverse of pack_int4."""
    out, half = packed.shape
    b = packed.view(out, half * 2 // group, group // 2)  # [out, groups, g/2]
    lo, hi = b & 0x0F, b >> 4
    return (torch.cat([lo, hi], dim=-1).to(torch.int8) - 8).reshape(out, half * 2)


def dequantize_int4(packed, scale, group=32, n=None):
    """(q - 8) * d per group: fp32 [out, in]; n: the original input dim, to drop the padding."""
    q = unpack_int4(packed, group).float()
    out, m = q.shape
    return (q.view(out, m // group, group) * scale.float()[..., None]).reshape(out, m)[:, :n]


# ---- whole checkpoints and their size


def quantize_roundtrip(w, fmt):
    """w quantized to fmt ('int8', 'int4-32', 'int4-64', 'int4-128'; 'bf16' rounds only) and back: fp32."""
    if fmt == "bf16":
        return w.to(torch.bfloat16).float()
    if fmt == "int8":
        return dequantize_int8(*quantize_int8(w))
    if fmt.startswith("int4-") and fmt[5:].isdigit():
        group = int(fmt[5:])
        return dequantize_int4(*quantize_int4(w, group), group, w.shape[1])
    raise ValueError(f"format {fmt!r}: use 'bf16', 'int8' or 'int4-G' for a group size G such as {GROUPS}")


def dequantized_weights(weights, fmt):
    """Every matrix of a checkpoint quantized to fmt and dequantized (fp32); norms (1-D) upcast as they are.
    A tied output matrix stays tied (quantized once)."""
    done, out = {}, {}
    for name, t in weights.items():
        if id(t) not in done:  # t stays alive in done: a lazy dict's (GGUF) next tensor cannot reuse its id
            done[id(t)] = t, quantize_roundtrip(t, fmt) if t.ndim == 2 else t.float()
        out[name] = done[id(t)][1]
    return out


def relative_error(w, deq):
    """||w - deq|| / ||w|| (Frobenius), in float64."""
    w = w.double()
    return ((w - deq.double()).norm() / w.norm()).item()


def bytes_per_format(args, fmt):
    """Bytes of a checkpoint of args's shape stored in fmt: 2-D matrices quantized (scales included: int8
    one fp32 per row, int4 one fp16 per group as Q4_0), norms in bf16. fmt: 'fp32', 'bf16', 'int8', 'int4-G'."""
    total = 0
    for shape in expected_shapes(args).values():
        n = shape[0] * (shape[1] if len(shape) == 2 else 1)
        if len(shape) == 1 or fmt == "bf16":
            total += 2 * n if fmt != "fp32" else 4 * n
        elif fmt == "fp32":
            total += 4 * n
        elif fmt == "int8":
            total += n + 4 * shape[0]
        elif fmt.startswith("int4-") and fmt[5:].isdigit():
            g = int(fmt[5:])
            n_groups = -(-shape[1] // g)                     # an input dim that is not a multiple: padded
            total += shape[0] * n_groups * (g // 2 + 2)
        else:
            raise ValueError(f"format {fmt!r}: use 'fp32', 'bf16', 'int8' or 'int4-G' (G in {GROUPS})")
    return total


# ---- the int8 weight-only matmul


def int8_weights(weights, rows=4096):
    """The weights for an int8 weight-only forward: every matrix but the embedding table becomes int8, its
    per-row scales under name + "_scale"; helpers.transformer.linear then calls int8_linear. The embedding (a
    row lookup, not a matmul) and the norms stay as they are. An in-memory format for forward/generate, not a
    checkpoint. Quantized `rows` rows at a time (each row has its own scale: the same result), so no fp32 copy
    of a whole matrix exists; a tied output matrix is quantized on its own (the embedding stays bf16)."""
    out = {}
    for name in weights:
        t = weights[name]
        if t.ndim != 2 or name == "tok_embeddings.weight":
            out[name] = t
            continue
        parts = [quantize_int8(t[r:r + rows]) for r in range(0, t.shape[0], rows)]
        out[name], out[name + "_scale"] = torch.cat([q for q, _ in parts]), torch.cat([s for _, s in parts])
    return out


def int8_linear(x, q, scale):
    """x @ (q * scale).T without materialising the dequantized matrix: PyTorch's private int8 weight-only
    kernel torch._weight_int8pack_mm when this build has one for x's device and dtype, else dequantize and
    matmul. x [T, in]."""
    kernel = getattr(torch.ops.aten, "_weight_int8pack_mm", None)
    if kernel is not None and x.dtype in (torch.float32, torch.bfloat16, torch.float16):
        try:
            return kernel(x, q, scale.to(x.dtype))
        except (RuntimeError, NotImplementedError):  # no kernel for this device or dtype
            pass
    return x @ dequantize_int8(q, scale).to(x.dtype).T

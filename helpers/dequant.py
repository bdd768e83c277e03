"""GGUF dequantization by hand: ggml's block layouts, unpacked with plain torch ops.

A quantized GGUF row is a run of fixed-size blocks; each block holds a fixed number of weights as small
integers plus the fp16 scale(s) that turn them back into floats. `dequantize` unpacks all the blocks of a
step of about a million weights with whole-tensor ops (no Python loop over blocks) and writes float32 into
one output tensor, so the peak memory is the output plus a few MB. Every type is checked bit for bit
against `gguf.quants.dequantize` in tests/test_dequant.py.
"""
import numpy as np
import torch

from helpers.params import CheckpointError

# type name -> (weights per block, bytes per block); the K-quants use 256-weight "super-blocks"
BLOCKS = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q8_0": (32, 2 + 32),                # d, 32 x int8
    "Q4_0": (32, 2 + 16),                # d, 32 x 4 bits
    "Q4_1": (32, 2 + 2 + 16),            # d, m, 32 x 4 bits
    "Q5_0": (32, 2 + 4 + 16),            # d, 32 high bits, 32 x 4 low bits
    "Q5_1": (32, 2 + 2 + 4 + 16),        # d, m, 32 high bits, 32 x 4 low bits
    "Q4_K": (256, 2 + 2 + 12 + 128),     # d, dmin, 8 x (6-bit scale, 6-bit min), 256 x 4 bits
    "Q5_K": (256, 2 + 2 + 12 + 32 + 128),  # as Q4_K + 256 high bits
    "Q6_K": (256, 128 + 64 + 16 + 2),    # 256 x 4 low bits, 256 x 2 high bits, 16 x int8 scale, d
}


def fp16(b):
    """uint8 [..., 2k] (little-endian fp16 bytes) -> float32 [..., k]."""
    return b.view(torch.float16).float()


def nibbles(q, lo, hi):
    """Write the low 4 bits of each byte of q into lo and the high 4 bits into hi (uint8 -> float32 copies)."""
    lo.copy_(q & 0x0F)
    hi.copy_(q >> 4)


def bits(qh, n):
    """uint8 [blocks, n/8] -> uint8 [blocks, n]: bit j of the little-endian bit field, for j = 0..n-1."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((qh[:, :, None] >> shifts) & 1).view(qh.shape[0], n)


# ---- plain floats: one value per "block"


def dq_f32(b, out):
    out.copy_(b.view(torch.float32))


def dq_f16(b, out):
    out.copy_(b.view(torch.float16))


def dq_bf16(b, out):
    # bf16 is the top half of an fp32: put the 16 bits into the high half of a 32-bit word
    out.view(torch.int32).copy_(b.view(torch.int16).to(torch.int32) << 16)


# ---- 32-weight blocks: one fp16 scale d (and for the _1 types an fp16 offset m) per block


def dq_q8_0(b, out):
    # 34 bytes: d (fp16), then 32 signed bytes; w = q * d
    out.copy_(b[:, 2:].view(torch.int8))
    out.mul_(fp16(b[:, 0:2]))


def dq_q4_0(b, out):
    # 18 bytes: d (fp16), then 16 bytes; byte j holds weight j in its low nibble and weight j+16 in its
    # high nibble; q is unsigned 0..15 centred on 8: w = (q - 8) * d
    o = out.view(-1, 2, 16)
    nibbles(b[:, 2:], o[:, 0], o[:, 1])
    out.sub_(8).mul_(fp16(b[:, 0:2]))


def dq_q4_1(b, out):
    # 20 bytes: d (fp16), m (fp16), then 16 bytes of nibbles as in Q4_0; q is 0..15: w = q * d + m
    o = out.view(-1, 2, 16)
    nibbles(b[:, 4:], o[:, 0], o[:, 1])
    out.mul_(fp16(b[:, 0:2])).add_(fp16(b[:, 2:4]))


def q5_into(qh, qs, out):
    # qh: 4 bytes = 32 bits, bit j is the 5th (high) bit of weight j; qs: 16 bytes of nibbles as in Q4_0
    o = out.view(-1, 2, 16)
    nibbles(qs, o[:, 0], o[:, 1])
    out.add_(bits(qh, 32) << 4)


def dq_q5_0(b, out):
    # 22 bytes: d (fp16), qh (4 bytes), qs (16 bytes); q is 0..31 centred on 16: w = (q - 16) * d
    q5_into(b[:, 2:6], b[:, 6:], out)
    out.sub_(16).mul_(fp16(b[:, 0:2]))


def dq_q5_1(b, out):
    # 24 bytes: d (fp16), m (fp16), qh (4 bytes), qs (16 bytes); q is 0..31: w = q * d + m
    q5_into(b[:, 4:8], b[:, 8:], out)
    out.mul_(fp16(b[:, 0:2])).add_(fp16(b[:, 2:4]))


# ---- K-quants: 256-weight super-blocks cut into sub-blocks, each with its own small integer scale


def k_scales(s):
    """Q4_K/Q5_K's 12 scale bytes -> (scale, min), each uint8 [blocks, 8], 6 bits per value.

    Sub-blocks 0-3 keep their 6-bit scale in the low 6 bits of bytes 0-3 and their min in bytes 4-7.
    Sub-blocks 4-7 keep the low 4 bits of scale and min in the two nibbles of bytes 8-11, and their top
    2 bits in the spare top 2 bits of bytes 0-3 (scale) and 4-7 (min).
    """
    a, m, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scale = torch.cat([a & 63, (c & 15) | ((a >> 6) << 4)], dim=1)
    mins = torch.cat([m & 63, (c >> 4) | ((m >> 6) << 4)], dim=1)
    return scale, mins


def k_affine(b, out):
    # out [blocks, 256] holds q; w = (d * scale) * q - (dmin * min), per 32-weight sub-block
    scale, mins = k_scales(b[:, 4:16])
    d, dmin = fp16(b[:, 0:2]), fp16(b[:, 2:4])
    o = out.view(-1, 8, 32)
    o.mul_((d * scale.float())[:, :, None]).sub_((dmin * mins.float())[:, :, None])


def dq_q4_k(b, out):
    # 144 bytes: d, dmin (fp16), 12 scale bytes, 128 bytes of nibbles. The nibbles come in 4 runs of 32 bytes;
    # run r holds sub-block 2r in its low nibbles and sub-block 2r+1 in its high nibbles
    o = out.view(-1, 4, 2, 32)
    nibbles(b[:, 16:].view(-1, 4, 32), o[:, :, 0], o[:, :, 1])
    k_affine(b, out)


def dq_q5_k(b, out):
    # 176 bytes: as Q4_K with 32 bytes qh between the scales and the nibbles: bit s of qh byte l is the
    # 5th bit of weight l of sub-block s
    o = out.view(-1, 4, 2, 32)
    nibbles(b[:, 48:].view(-1, 4, 32), o[:, :, 0], o[:, :, 1])
    high = (b[:, 16:48, None] >> torch.arange(8, dtype=torch.uint8)) & 1   # [blocks, l, s]
    out.view(-1, 8, 32).add_(high.transpose(1, 2) << 4)
    k_affine(b, out)


def dq_q6_k(b, out):
    # 210 bytes: ql (128 bytes of low nibbles), qh (64 bytes of 2-bit pairs), 16 int8 scales, d (fp16).
    # Two halves of 128 weights; half h uses ql[64h:64h+64] and qh[32h:32h+32]. Weight 32k + l of a half
    # (k = 0..3, l = 0..31) takes the low nibble (k = 0, 1) or high nibble (k = 2, 3) of ql byte
    # 32 * (k % 2) + l, and bits 2k, 2k+1 of qh byte l as its top two bits. q is 0..63 centred on 32;
    # each run of 16 weights has its own scale: w = (d * scale) * (q - 32)
    q = torch.empty(b.shape[0], 2, 2, 2, 32, dtype=torch.uint8)    # [blocks, half, nibble, k % 2, l]
    ql = b[:, :128].view(-1, 2, 2, 32)                               # [blocks, half, k % 2, l]
    torch.bitwise_and(ql, 0x0F, out=q[:, :, 0])
    torch.bitwise_right_shift(ql, 4, out=q[:, :, 1])
    qh = b[:, 128:192].view(-1, 2, 1, 32) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8)[:, None]
    q.view(-1, 2, 4, 32).bitwise_or_((qh & 3) << 4)                  # [blocks, half, k, l]
    out.copy_(q.view(-1, 256).view(torch.int8).sub_(32))             # 6 bits fit in int8 with room to centre
    scale = b[:, 192:208].view(torch.int8).float()
    out.view(-1, 16, 16).mul_((fp16(b[:, 208:210]) * scale)[:, :, None])


KERNELS = {"F32": dq_f32, "F16": dq_f16, "BF16": dq_bf16, "Q8_0": dq_q8_0, "Q4_0": dq_q4_0, "Q4_1": dq_q4_1,
           "Q5_0": dq_q5_0, "Q5_1": dq_q5_1, "Q4_K": dq_q4_k, "Q5_K": dq_q5_k, "Q6_K": dq_q6_k}
SUPPORTED = tuple(KERNELS)
CHUNK = 1 << 20   # weights dequantized per step


def type_name(qtype):
    """A gguf.GGMLQuantizationType, its name or its number -> the name, if we can dequantize it."""
    if isinstance(qtype, str) or hasattr(qtype, "name"):
        name = getattr(qtype, "name", qtype)
    else:
        import gguf  # only to name a bare number
        try:
            name = gguf.GGMLQuantizationType(qtype).name
        except ValueError:
            name = f"number {qtype!r}"
    if name not in KERNELS:
        raise CheckpointError(f"GGUF tensor type {name} is not supported; supported: {', '.join(SUPPORTED)}. "
                              f"Convert the file to one of these (e.g. llama.cpp's llama-quantize ... Q4_K_M)")
    return name


def dequantize(raw, qtype, shape, out=None):
    """GGUF tensor data -> float32 tensor of `shape` (torch order: rows, cols; GGUF's ne reversed).

    raw: `reader.tensors[i].data` or any slice of its rows (uint8 [rows, row_bytes] for quantized types,
    float32/float16 arrays for F32/F16); out: optional float32 tensor of `shape` to write into.
    """
    name = type_name(qtype)
    per_block, nbytes = BLOCKS[name]
    shape = tuple(int(s) for s in shape)
    numel = int(np.prod(shape))
    b = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)   # no copy of GGUFReader's memmap
    if shape and shape[-1] % per_block:
        raise CheckpointError(f"a {name} tensor's rows must hold whole blocks of {per_block} weights; "
                              f"shape {shape} does not")
    if b.size != numel // per_block * nbytes:
        raise CheckpointError(f"{name} data of {b.size} bytes cannot hold shape {shape} "
                              f"({numel // per_block * nbytes} bytes); the file is truncated or the shape is wrong")
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    elif out.dtype != torch.float32 or tuple(out.shape) != shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape {shape}, "
                         f"got {out.dtype} {tuple(out.shape)}")
    b, o = b.reshape(-1, nbytes), out.view(-1, per_block)
    step = max(1, CHUNK // per_block)          # a few MB at a time: the unpacking passes stay in cache
    for i in range(0, b.shape[0], step):
        # a copy of this step's packed bytes: the memmap is read-only, which torch will not wrap silently
        KERNELS[name](torch.from_numpy(b[i:i + step].copy()), o[i:i + step])
    return out


# ---- random quantized data that dequantizes to weight-like values (|w| mostly < 0.1)


def f16_bytes(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16).view(np.uint8)


def random_blocks(qtype, rows, cols, seed=0):
    """Random GGUF data of type qtype for a [rows, cols] matrix: numpy uint8 [rows, row_bytes].

    The integer parts are uniform random bytes; the fp16 scales are picked so that |w| stays about 0.1 or
    below, with both signs of d for the types whose d may be negative.
    """
    name = type_name(qtype)
    per_block, nbytes = BLOCKS[name]
    if cols % per_block:
        raise ValueError(f"cols={cols} must be a multiple of {name}'s block of {per_block} weights")
    rng = np.random.default_rng(seed)
    n = rows * cols // per_block
    if name in ("F32", "F16", "BF16"):
        w = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
        if name == "BF16":
            return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, -1)
        return w.astype(np.float16 if name == "F16" else np.float32).view(np.uint8).reshape(rows, -1)
    b = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    size = rng.uniform(0.5, 1.5, n).astype(np.float32)                  # per-block spread of magnitudes
    sign = np.where(rng.random(n) < 0.5, -1, 1).astype(np.float32)
    # the largest |q| (times the largest sub-scale for the K-quants), so that |w| <= 0.1 * size
    qmax = {"Q8_0": 128, "Q4_0": 8, "Q4_1": 15, "Q5_0": 16, "Q5_1": 31, "Q4_K": 15 * 63, "Q5_K": 31 * 63,
            "Q6_K": 32 * 128}[name]
    d = 0.1 * size / qmax
    if name in ("Q4_1", "Q5_1"):       # q is unsigned: w = q * d + m, with m = minus half the range
        b[:, 0:2] = f16_bytes(d * sign).reshape(n, 2)
        b[:, 2:4] = f16_bytes(-d * sign * qmax / 2).reshape(n, 2)
    elif name in ("Q4_K", "Q5_K"):     # d and dmin are positive in llama.cpp's files; dmin * min recentres
        b[:, 0:2] = f16_bytes(d).reshape(n, 2)
        b[:, 2:4] = f16_bytes(0.05 * size / 63).reshape(n, 2)
    else:
        at = 208 if name == "Q6_K" else 0
        b[:, at:at + 2] = f16_bytes(d * sign).reshape(n, 2)
    return b.reshape(rows, -1)

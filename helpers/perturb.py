"""A test mode that finds printed digits fp32 does not determine: every product and sum is nudged by a few ulps.

PyTorch's CPU kernel families (avx512, avx2, default) and thread counts add up a matrix product in different
orders, so its last bits differ from machine to machine, and a deep computation can move a printed value by
1e-5 of itself (notebook 10's logit lens: 0.021350 with avx512, 0.021349 with avx2). A printed digit that sits
that close to a rounding boundary passes where it was recorded and fails elsewhere.

LLAMA3_PERTURB=+N (or -N) scales each element of the float32/float64 result of every matrix product and
softmax by (1 + N * sqrt(n) * eps * s), and of every sum, mean and RMSNorm (but not an exact sum) by
(1 + N * eps * s): eps is the dtype's machine epsilon, n the terms a product adds up (its inner dimension) or a
softmax row's nonzero terms less one (a row with one unmasked key is exactly 1 on every machine), s = +-1 from
a hash of the value's leading bits. Runs with +N and -N move every value by about the same amount in opposite
directions, so a printed digit within that distance of a rounding boundary changes in one of the two: nbval
then fails on that cell, showing the stored and the new text. N = 1 moves notebook 10's logit-lens probability
(0.021350 with avx512, 0.021349 with avx2) about three times as far as those two kernel families disagree.
"""
import math
import os

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

PRODUCTS = {torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.einsum, torch.tensordot,
            torch.inner, torch.dot, torch.mv, F.linear, F.scaled_dot_product_attention, torch.Tensor.__matmul__,
            torch.Tensor.__rmatmul__, torch.Tensor.matmul, torch.Tensor.mm, torch.Tensor.bmm, torch.Tensor.mv,
            torch.Tensor.dot}
SOFTMAX = {torch.softmax, torch.Tensor.softmax, F.softmax, torch.log_softmax, torch.Tensor.log_softmax,
           F.log_softmax}
SUMS = {torch.sum, torch.mean, torch.Tensor.sum, torch.Tensor.mean, torch.cumsum, torch.Tensor.cumsum,
        torch.logsumexp, torch.Tensor.logsumexp, F.rms_norm}


def signs(t):
    """+-1 per element from a hash of the element's leading bits (sign, exponent, 12 bits of mantissa): equal
    values get equal nudges wherever they sit, so a computation that only permutes numbers (another weight
    layout) stays exact; and the +N and -N runs, whose values differ far below the 12th bit, nudge alike."""
    bits = t.view(torch.int32) >> 11 if t.dtype == torch.float32 else t.view(torch.int64) >> 40
    return ((bits * 2654435761 >> 7) & 1).to(t.dtype).mul_(2).sub_(1)


def nudge(t, ulps):
    """t * (1 + ulps * eps * s) for a float32/float64 tensor (ulps: a number, or a tensor that broadcasts)."""
    return t * (1 + ulps * torch.finfo(t.dtype).eps * signs(t))


class Perturb(TorchFunctionMode):
    """Nudge the float results of PRODUCTS, SOFTMAX and SUMS; exact sums stay (nudging them would flag digits
    no kernel can change)."""

    def __init__(self, ulps):
        super().__init__()
        self.ulps = ulps

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if "out" in kwargs or not isinstance(out, torch.Tensor) or out.dtype not in (torch.float32, torch.float64) \
                or out.numel() == 0:
            return out
        if func in PRODUCTS:
            return nudge(out, self.ulps * math.sqrt(inner(func, args)))
        if func in SOFTMAX:
            dim = kwargs.get("dim", args[1] if len(args) > 1 and isinstance(args[1], int) else -1)
            p = out.exp() if func in (torch.log_softmax, torch.Tensor.log_softmax, F.log_softmax) else out
            terms = (p > 0).sum(dim, keepdim=True).clamp(min=1) - 1      # beyond the first: 0 for one key
            return nudge(out, self.ulps * terms.to(out.dtype).sqrt())
        if func in SUMS and not exact(func, args, kwargs, out):
            return nudge(out, self.ulps)
        return out


ADDS = {torch.sum, torch.mean, torch.Tensor.sum, torch.Tensor.mean, torch.cumsum, torch.Tensor.cumsum}


def exact(func, args, kwargs, out):
    """True when every machine gets this sum bit for bit: its terms are whole numbers (a count, a mean of 0/1
    values), or it equals the float64 sum exactly (terms like 0.125 + 0.5 add without rounding)."""
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if x is None or not x.is_floating_point():
        return True
    if torch.equal(x, x.round()):
        return True
    if func not in ADDS or x.dtype != torch.float32:
        return False
    ref = func(x.double(), *args[1:], **kwargs)
    return torch.equal(out.double(), ref)


def inner(func, args):
    """the terms each element of a product adds up: the first operand's last dim (64 for einsum/tensordot)."""
    x = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if x is None or x.dim() == 0:
        return 1
    if func in (torch.einsum, torch.tensordot):
        return 64
    if func is F.scaled_dot_product_attention:
        return max(x.shape[-1], args[1].shape[-2] if len(args) > 1 else 1)
    if func is torch.Tensor.__rmatmul__:
        return x.shape[-2] if x.dim() > 1 else x.shape[-1]
    return x.shape[-1]


_mode = None


def parse(value):
    """'+8' / '-8' / '8' -> 8.0 ulps; anything else is one clear error naming the variable."""
    try:
        ulps = float(value)
    except ValueError:
        ulps = float("nan")
    if not (ulps == ulps and 0 < abs(ulps) <= 1e6):
        raise ValueError(f"LLAMA3_PERTURB={value!r}: give a signed number of fp32 ulps, e.g. +8 or -8 "
                         "(unset it for normal runs)")
    return ulps


def enable(value=None):
    """Turn the mode on in this thread (the notebook kernel's); value defaults to $LLAMA3_PERTURB."""
    global _mode
    ulps = parse(value if value is not None else os.environ["LLAMA3_PERTURB"])
    disable()
    _mode = Perturb(ulps)
    _mode.__enter__()
    return _mode


def disable():
    global _mode
    if _mode is not None:
        _mode.__exit__(None, None, None)
        _mode = None

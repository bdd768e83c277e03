"""x @ W.T in fp32 for a bf16 matrix W, without an fp32 copy of W: a block of rows is upcast at a time.

helpers.transformer.linear's exact path. A full fp32 copy per use would cost a page fault per 4 KB and 2x the
memory; so each block of CHUNK elements goes into a reused fp32 buffer (one per thread) that stays in cache,
and is multiplied there. Figures and the sweeps behind the constants: bench/RESULTS.md.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from helpers.device import DEVICE, cpu_vendor


# elements upcast at a time, swept for one-token decoding of the 8B: 512K (2 MB of fp32, in one core's L2)
# was best on the Intel Xeon; 2M (8 MB, in L3) on AMD EPYC, whose L2 is 512 KB
CHUNK = 1 << 21 if cpu_vendor() == "AuthenticAMD" else 1 << 19
DECODE_ROWS = 8  # up to this many rows of x (decoding), each CPU thread takes its own blocks: see matmul_upcast

_buffers = {}
_pools = {}


def buffer(key, n):
    """A reused fp32 buffer of at least n elements on DEVICE, one per key."""
    buf = _buffers.get(key)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):  # a normal tensor: reusable inside and outside inference_mode
            buf = _buffers[key] = torch.empty(n, device=DEVICE)
    return buf


def upcast_rows(w, r, rows):
    """fp32 copy of w[r:r+rows] on DEVICE in a reused buffer, one per thread (valid until this thread's next
    call): callers on other threads, or a pool job still running after an interrupt, never share it."""
    block = w[r:r + rows]
    return buffer((DEVICE, threading.get_ident()), block.numel())[:block.numel()].view(block.shape).copy_(block)


def matmul_upcast(x, w):
    """x [T, in] fp32 @ w.T for a bf16 w [out, in] -> [T, out] fp32, upcasting CHUNK elements at a time.

    Decoding (T <= DECODE_ROWS) on a multi-core CPU: n threads each upcast and multiply their own blocks,
    one core each. With one parallel upcast and one parallel matmul per block instead, a step of the 8B costs
    hundreds of fork/joins per layer, which on the AMD EPYC measured were at times 2.5x slower for many seconds."""
    rows = max(1, CHUNK // w.shape[1])
    n, blocks = torch.get_num_threads(), -(-w.shape[0] // rows)
    # with fewer blocks than threads, one parallel op per block keeps more cores busy
    if x.shape[0] <= DECODE_ROWS and x.device.type == "cpu" and 1 < n <= blocks and not modes():
        return threaded(x, w, rows, n)
    return torch.cat([x @ upcast_rows(w, r, rows).T for r in range(0, w.shape[0], rows)], dim=-1)


def modes():
    """True inside a torch function/dispatch mode (FlopCounterMode, ...): those are per thread, so a pool
    thread's ops would escape them. True too if this torch cannot tell (private API)."""
    counts = [getattr(torch._C, f, None) for f in ("_len_torch_dispatch_stack", "_len_torch_function_stack")]
    return None in counts or any(c() > 0 for c in counts)


def in_threads(work, n):
    """work(k) for k < n on a pool of n threads of one core each (torch ops run serially inside each), then
    back to n threads; one pool per process and n (a forked child inherits the pool but not its threads)."""
    key = (os.getpid(), n)
    pool = _pools.get(key) or _pools.setdefault(key, ThreadPoolExecutor(n, thread_name_prefix="upcast"))
    torch.set_num_threads(1)
    try:
        for job in [pool.submit(work, k) for k in range(n)]:
            job.result()
    finally:
        torch.set_num_threads(n)


def threaded(x, w, rows, n):
    """matmul_upcast on n threads of one core each: thread k takes blocks k, k+n, k+2n, ..."""
    y = torch.empty(x.shape[0], w.shape[0], dtype=torch.float32)
    starts = range(0, w.shape[0], rows)

    def work(k):
        with torch.inference_mode():  # no autograd here (linear sends those inputs elsewhere); y may be either kind
            for r in starts[k::n]:
                torch.mm(x, upcast_rows(w, r, rows).T, out=y[:, r:r + rows])

    in_threads(work, n)
    return y

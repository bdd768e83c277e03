"""Tensor parallelism by hand: the Llama 3 forward split over ranks, each holding one Meta shard.

Rank r holds file r of a model-parallel checkpoint (helpers/shards.py): whole query heads with the kv heads
they use, a slice of the SwiGLU hidden units, a slice of the vocabulary. A layer then runs on each rank on its
own, except twice: after wo and after w2 each rank holds a partial sum of the [T, dim] output, and an
all-reduce adds the partial sums up on every rank. The embedding needs one more (each rank knows only its
vocab rows), and the logits an all-gather (each rank computes only its vocab slice).

    python -m helpers.tensor_parallel --dir SHARDS --tokens 1,2,3 --out logits.pt  # one rank; needs RANK,
    # WORLD_SIZE, MASTER_ADDR, MASTER_PORT: torchrun sets them, launch() below starts world local processes
"""
import argparse
import contextlib
import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path

import torch

from helpers.checkpoint import SHARD, CheckpointError, load_state_dict, read_params
from helpers.files import atomic_write
from helpers.reference import free_port
from helpers.model import DEVICE, attention, feed_forward, fp32, linear, rms_norm, rope_rotations
from helpers.shards import check_world, rank_shapes, shard_name

ROOT = Path(__file__).resolve().parent.parent


def local_args(args, world):
    """args as one rank sees them: n_heads/world query heads, their kv heads, and dim = the width of those
    heads' concatenated output (head_dim stays). helpers.model.attention then runs unchanged on a shard."""
    n_heads, n_kv = args.n_heads // world, max(1, args.n_kv_heads // world)
    return dataclasses.replace(args, dim=n_heads * args.head_dim, n_heads=n_heads, n_kv_heads=n_kv)


def embed_part(shard, tokens, rank):
    """Vocab-parallel embedding: rows of this rank's vocab slice, zeros for the others' tokens."""
    w = shard["tok_embeddings.weight"]                                   # [vocab/world, dim]
    ids = torch.as_tensor(tokens) - rank * w.shape[0]
    mine = (ids >= 0) & (ids < w.shape[0])
    h = torch.zeros(len(tokens), w.shape[1], device=DEVICE)              # [T, dim]
    h[mine.to(DEVICE)] = w[ids[mine]].to(device=DEVICE, dtype=torch.float32)
    return h


def output_name(shard):
    """the key of a shard's output matrix: tied embeddings (split_weights keeps no output.weight) read the
    rank's tok_embeddings slice, which is the same vocab-parallel cut"""
    return "output.weight" if "output.weight" in shard else "tok_embeddings.weight"


def rank_forward(shard, args, tokens, rank, world, all_reduce, all_gather):
    """One rank's forward: token ids -> fp32 logits [T, vocab]. all_reduce(x) returns the sum of every
    rank's x; all_gather(x) the ranks' x concatenated along the last dim."""
    local = local_args(args, world)
    h = all_reduce(embed_part(shard, tokens, rank))                      # [T, dim] on every rank
    rot = rope_rotations(args, torch.arange(len(tokens)))
    for i in range(args.n_layers):
        x = rms_norm(h, fp32(shard, f"layers.{i}.attention_norm.weight"), args.norm_eps)
        h = h + all_reduce(attention(x, shard, local, i, rot))          # wo row-parallel: partial sums
        x = rms_norm(h, fp32(shard, f"layers.{i}.ffn_norm.weight"), args.norm_eps)
        h = h + all_reduce(feed_forward(x, shard, i))                   # w2 row-parallel: partial sums
    h = rms_norm(h, fp32(shard, "norm.weight"), args.norm_eps)
    return all_gather(linear(h, shard, "output.weight"))                 # [T, vocab/world] -> [T, vocab]


def simulate(shards, args, tokens):
    """All ranks in one process, in turn: each all-reduce is a sum over the ranks' partial results."""
    local = local_args(args, len(shards))
    h = sum(embed_part(s, tokens, r) for r, s in enumerate(shards))
    rot = rope_rotations(args, torch.arange(len(tokens)))
    for i in range(args.n_layers):                                       # norms are replicated: shard 0's
        x = rms_norm(h, fp32(shards[0], f"layers.{i}.attention_norm.weight"), args.norm_eps)
        h = h + sum(attention(x, s, local, i, rot) for s in shards)
        x = rms_norm(h, fp32(shards[0], f"layers.{i}.ffn_norm.weight"), args.norm_eps)
        h = h + sum(feed_forward(x, s, i) for s in shards)
    h = rms_norm(h, fp32(shards[0], "norm.weight"), args.norm_eps)
    return torch.cat([linear(h, s, output_name(s)) for s in shards], dim=-1)


def wire_floats(args, world, T):
    """fp32 values each rank hands to collectives in one forward of T tokens: two all-reduces of [T, dim] per
    layer, one for the embedding, and its [T, vocab/world] logits slice for the all-gather."""
    return T * args.dim * (2 * args.n_layers + 1) + T * args.vocab_size // world


def load_rank(model_dir, rank, world):
    """(this rank's state dict, args): only file `rank`, mmap'd, checked against the shapes params.json implies."""
    d = Path(model_dir)
    args = read_params(d)
    check_world(args, world)
    n = sum(1 for p in d.glob("*.pth") if SHARD.fullmatch(p.name))
    if n != world:
        raise CheckpointError(f"{d} holds {n} shard file(s), one per rank: run with world size {n}, or rewrite "
                              f"it as {world} shards (helpers.shards.write_shards)")
    path = d / shard_name(rank)
    shard = load_state_dict(path)
    if "output.weight" not in shard:
        shard["output.weight"] = shard["tok_embeddings.weight"]         # tied: both vocab-parallel
    want = rank_shapes(args, world)
    bad = [f"{k}: {tuple(shard[k].shape) if k in shard else 'missing'} != {s}" for k, s in want.items()
           if k not in shard or tuple(shard[k].shape) != s]
    if bad or set(shard) - set(want):
        raise CheckpointError(f"{path}: not rank {rank} of {world} for params.json: {'; '.join(bad[:4])}")
    return shard, args


def run_rank(model_dir, tokens, meta=False):
    """This process's rank (torch.distributed env://) -> (logits, stats); gloo on CPU, NCCL when each rank
    has a GPU of its own."""
    import torch.distributed as dist
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))                         # index on this machine (torchrun)
    nccl = DEVICE.type == "cuda" and DEVICE.index is None \
        and torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if nccl:
        torch.cuda.set_device(local)                                     # "cuda" now means this rank's GPU
    dist.init_process_group("nccl" if nccl else "gloo", rank=rank, world_size=world)
    try:
        shard, args = load_rank(model_dir, rank, world)
        stats = {"all_reduce_floats": 0, "all_gather_floats": 0, "collectives": 0,
                 "shard_bytes": sum(t.nbytes for k, t in shard.items() if k != "output.weight"
                                    or t is not shard["tok_embeddings.weight"])}
        if meta:
            logits = meta_rank_logits(shard, args, tokens, world)
            dist.barrier()                 # no rank tears down while a peer still talks: gloo aborts it otherwise
            return logits, stats

        def all_reduce(x):
            stats["all_reduce_floats"] += x.numel()
            stats["collectives"] += 1
            y = x.contiguous() if nccl else x.cpu()
            dist.all_reduce(y)                                           # sum over ranks, in place
            return y.to(x.device)

        def all_gather(x):
            stats["all_gather_floats"] += x.numel()
            stats["collectives"] += 1
            y = x.contiguous() if nccl else x.cpu()
            out = [torch.empty_like(y) for _ in range(world)]
            dist.all_gather(out, y)
            return torch.cat(out, dim=-1).to(x.device)

        with torch.inference_mode():
            logits = rank_forward(shard, args, tokens, rank, world, all_reduce, all_gather)
        dist.barrier()
        return logits, stats
    finally:
        dist.destroy_process_group()


def meta_rank_logits(shard, args, tokens, world):
    """Meta's reference Transformer with fairscale model-parallel size world, holding this rank's shard."""
    import fairscale.nn.model_parallel.initialize as fs_init

    from helpers.reference import meta_logits, meta_model
    with contextlib.redirect_stdout(io.StringIO()):                      # fairscale prints its set-up
        fs_init.initialize_model_parallel(world)
    return meta_logits(meta_model(shard, args, max_seq_len=len(tokens)), tokens)


def run_ranks(cmd, world, logs, timeout=300):
    """Run cmd as world local processes (RANK 0..world-1, gloo over loopback), each logging to logs[rank]; wait,
    kill the rest if one hangs, and raise naming the first failed rank and its last log line."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world),
           "LOCAL_WORLD_SIZE": str(world), "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    procs = []
    try:
        for r in range(world):
            with open(logs[r], "w") as f:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}))
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [r for r, p in enumerate(procs) if p.returncode]
    if failed:
        tail = logs[failed[0]].read_text().strip().splitlines()[-1:]
        raise RuntimeError(f"rank {failed[0]} of {world} failed (exit {procs[failed[0]].returncode}): "
                           f"{tail[0] if tail else 'no output'}; log: {logs[failed[0]]}")
    for log in logs:
        log.unlink()


def launch(model_dir, world, tokens, out, meta=False, timeout=300):
    """Start world local processes (ranks 0..world-1, gloo over loopback), wait; rank 0's {logits, stats}."""
    out = Path(out)
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "helpers.tensor_parallel", "--dir", str(model_dir), "--out", str(out),
           "--tokens", ",".join(map(str, tokens))] + ["--meta"] * meta
    run_ranks(cmd, world, [out.with_name(f"{out.name}.rank{r}.log") for r in range(world)], timeout)
    return torch.load(out, weights_only=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", required=True, help="a Meta model-parallel checkpoint: one shard per rank")
    p.add_argument("--tokens", required=True, help="token ids, comma-separated")
    p.add_argument("--out", required=True, help="rank 0 writes {'logits', 'stats'} here (torch.save)")
    p.add_argument("--meta", action="store_true", help="run Meta's reference Transformer (fairscale) instead")
    a = p.parse_args(argv)
    tokens = [int(t) for t in a.tokens.split(",")]
    logits, stats = run_rank(a.dir, tokens, a.meta)
    if int(os.environ["RANK"]) == 0:
        atomic_write(a.out, lambda p: torch.save({"logits": logits.float().cpu(), "stats": stats}, p))


if __name__ == "__main__":
    main()

"""Data parallelism by hand: every rank holds the whole model and trains on its own rows of each batch.

Each step every rank runs forward and backward on its rows, then one all-reduce per gradient sums the ranks'
gradients and each rank divides by the world size: all ranks now hold the gradient of the whole batch (the
mean of equal-sized slices' mean losses is the whole batch's mean loss), so the same AdamW step on the same
weights keeps them identical. The model is helpers.tiny's TinyLlama at a small width with the loaded
checkpoint's head layout; the batches are the default recipe's (helpers.data.batches) drawn from a sonnet.

    python -m helpers.data_parallel --params "$(cat params.json)" --out DIR   # one rank; needs RANK,
    # WORLD_SIZE, MASTER_ADDR, MASTER_PORT: torchrun sets them, launch() below starts world local processes
"""
import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers.data import batches
from helpers.files import atomic_write
from helpers.params import ModelArgs
from helpers.tensor_parallel import run_ranks
from helpers.tiny import TinyLlama, Vocab


# Shakespeare, Sonnet 116 (public domain): enough distinct windows for a few steps of a tiny model
TEXT = """Let me not to the marriage of true minds
Admit impediments. Love is not love
Which alters when it alteration finds,
Or bends with the remover to remove:
O no! it is an ever-fixed mark
That looks on tempests and is never shaken;
It is the star to every wandering bark,
Whose worth's unknown, although his height be taken.
Love's not Time's fool, though rosy lips and cheeks
Within his bending sickle's compass come:
Love alters not with his brief hours and weeks,
But bears it out even to the edge of doom.
If this be error and upon me proved,
I never writ, nor no man ever loved.
"""



@dataclass(frozen=True)
class Config:
    """helpers.train.TrainConfig's fields that matter here, shrunk to seconds. No dropout (every rank must
    compute the same function), no copy rows (their masked targets would give ranks unequal counts of scored
    tokens), one flat lr (the schedule changes nothing about the comparison). helpers.train is not imported:
    it pulls in matplotlib, seconds of start-up for every rank."""
    steps: int = 6
    batch: int = 8
    seq_len: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    bos_rows: int = 2
    copy_rows: int = 0
    seed: int = 0


CFG = Config()


def small_args(args, head_dim=16, n_layers=2):
    """the loaded checkpoint's attention layout (query and kv heads, rope_theta, eps) at a width that trains in
    seconds on a CPU, whatever the checkpoint's size."""
    return ModelArgs(dim=args.n_heads * head_dim, n_layers=n_layers, n_heads=args.n_heads,
                     n_kv_heads=args.n_kv_heads, vocab_size=args.vocab_size, multiple_of=32,
                     ffn_dim_multiplier=args.ffn_dim_multiplier, norm_eps=args.norm_eps, rope_theta=args.rope_theta)


def text_ids(tok):
    """(TEXT as token ids with the tokenizer's own start and end: Llama 3's <|begin_of_text|> ... <|end_of_text|>,
    the id that starts text (None for a tokenizer that adds no BOS, e.g. SmolLM2's: no bos rows then))."""
    start = tok.encode("", bos=True)                                      # the tokenizer's own rule
    return tok.encode(TEXT, bos=True, eos=True), (start[0] if start else None)


def setup(args, ids, bos, cfg=CFG):
    """(vocab, batches): the compact vocabulary of ids and cfg.steps whole batches (x, y), each [batch,
    seq_len] of compact ids; every rank calls this and gets the same batches (one seeded generator)."""
    ids = torch.as_tensor(ids)
    vocab = Vocab(ids, args.vocab_size, min_count=1)
    bos = None if bos is None else int(vocab.to_compact[bos])         # None: no rows put behind a bos
    data = batches(vocab.to_compact[ids], cfg, torch.Generator().manual_seed(cfg.seed), None, bos)
    return vocab, [next(data) for _ in range(cfg.steps)]


def new_model(args, vocab, cfg=CFG, device="cpu"):
    """(model, AdamW): the same seeded initial weights in every process, helpers.train's parameter groups."""
    torch.manual_seed(cfg.seed)
    model = TinyLlama(args, vocab).to(device)
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    return model, opt


def loss_of(model, x, y):
    dev = next(model.parameters()).device
    return F.cross_entropy(model(x.to(dev)).flatten(0, 1), y.to(dev).flatten())  # [rows * seq_len, vocab] -> mean


def rows(x, rank, world):
    """this rank's rows of a batch: equal contiguous slices."""
    if x.shape[0] % world:
        raise ValueError(f"batch of {x.shape[0]} rows does not split over {world} ranks: use a multiple of {world}")
    n = x.shape[0] // world
    return x[rank * n:(rank + 1) * n]


def adamw_step(model, opt):
    """what helpers.train does once the gradients are in: clip their global norm to 1, then AdamW."""
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def flat(model):
    """every parameter in one fp32 vector, in model.parameters() order."""
    return torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()


def train_whole(args, vocab, data, cfg=CFG, micro=1):
    """one process, the whole batch per step; micro > 1: gradient accumulation over micro equal slices, each
    slice's loss divided by micro so that the summed gradients are the whole batch's."""
    model, opt = new_model(args, vocab, cfg)
    for x, y in data:
        for m in range(micro):
            (loss_of(model, rows(x, m, micro), rows(y, m, micro)) / micro).backward()  # grads add up
        adamw_step(model, opt)
    return model


def train_rank(args, vocab, data, rank, world, all_reduce, cfg=CFG, device="cpu"):
    """one rank of world: its rows, then all_reduce(t) (sums t over ranks, in place) on every gradient."""
    model, opt = new_model(args, vocab, cfg, device)
    for x, y in data:
        loss_of(model, rows(x, rank, world), rows(y, rank, world)).backward()
        for p in model.parameters():
            all_reduce(p.grad)
            p.grad /= world                                             # sum of means -> mean of the batch
        adamw_step(model, opt)
    return model


def simulate(args, vocab, data, world, cfg=CFG, reduce=True):
    """all ranks in one process, in turn; the all-reduce is a sum over the ranks' gradients. reduce=False:
    each rank steps on its own gradient (what forgetting the all-reduce does). Returns the ranks' models."""
    runs = [new_model(args, vocab, cfg) for _ in range(world)]
    for x, y in data:
        for r, (model, _) in enumerate(runs):
            loss_of(model, rows(x, r, world), rows(y, r, world)).backward()
        if reduce:
            for ps in zip(*(m.parameters() for m, _ in runs)):          # the same parameter on every rank
                total = sum(p.grad for p in ps)
                for p in ps:
                    p.grad = total / world
        for model, opt in runs:
            adamw_step(model, opt)
    return [m for m, _ in runs]


def train_ddp(args, vocab, data, rank, world, stats, cfg=CFG, device="cpu"):
    """the same run through torch's DistributedDataParallel; a comm hook counts what it all-reduces."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel as DDP

    model, opt = new_model(args, vocab, cfg, device)
    ddp = DDP(model)                                                    # on a GPU: that of this rank

    def counting_hook(state, bucket):
        stats["ddp_floats"] += bucket.buffer().numel()
        stats["ddp_buckets"] += 1
        return allreduce_hook(state, bucket)                              # divides by world, then all-reduces

    ddp.register_comm_hook(None, counting_hook)
    for x, y in data:
        loss_of(ddp, rows(x, rank, world), rows(y, rank, world)).backward()  # hooks fire during backward
        adamw_step(model, opt)
    return model


def run_rank(params, ids, bos, out):
    """this process's rank (torch.distributed env://): train by hand and with DDP, write rank{r}.pt to out."""
    import torch.distributed as dist
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    nccl = torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if nccl:                                                             # each rank needs a GPU of its own
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if nccl else "gloo", rank=rank, world_size=world)
    try:
        args = ModelArgs.from_params(params)
        vocab, data = setup(args, ids, bos)
        stats = {"hand_floats": 0, "hand_collectives": 0, "ddp_floats": 0, "ddp_buckets": 0,
                 "backend": dist.get_backend()}

        def all_reduce(t):
            stats["hand_floats"] += t.numel()
            stats["hand_collectives"] += 1
            dist.all_reduce(t)                                           # sum over ranks, in place

        dev = "cuda" if nccl else "cpu"                                  # NCCL talks between GPUs only
        hand = train_rank(args, vocab, data, rank, world, all_reduce, device=dev)
        ddp = train_ddp(args, vocab, data, rank, world, stats, device=dev)
        dist.barrier()                     # no rank tears down while a peer still talks: gloo aborts it otherwise
        atomic_write(Path(out) / f"rank{rank}.pt",
                     lambda p: torch.save({"hand": flat(hand), "ddp": flat(ddp), "stats": stats}, p))
    finally:
        dist.destroy_process_group()


def launch(args, ids, bos, world, out, timeout=300):
    """Start world local processes (gloo over loopback), wait; every rank's {hand, ddp, stats}, in rank order."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "helpers.data_parallel", "--params", json.dumps(args.to_params()),
           "--tokens", ",".join(map(str, ids)), *(["--bos", str(bos)] if bos is not None else []), "--out", str(out)]
    run_ranks(cmd, world, [out / f"rank{r}.log" for r in range(world)], timeout)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def zero_bytes(n_params, world, stage):
    """{weights, grads, optimizer}: bytes of model states one rank holds in mixed-precision AdamW training
    (ZeRO paper's accounting: bf16 weights 2, bf16 grads 2, fp32 master weights + Adam m + v 12 bytes per
    parameter), ZeRO stage 0 (plain data parallel) to 3 (= FSDP full sharding): stage s >= 1 shards the
    optimizer states over world ranks, >= 2 also the grads, 3 also the weights. Activations not included."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage {stage!r}: 0, 1, 2 or 3")
    part = lambda bytes_per_param, from_stage: n_params * bytes_per_param / (world if stage >= from_stage else 1)
    return {"weights": part(2, 3), "grads": part(2, 2), "optimizer": part(12, 1)}


def ring_bytes(n_bytes, world):
    """bytes each rank sends (and receives) in a ring all-reduce of n_bytes: a reduce-scatter, then an
    all-gather, each world-1 steps of n_bytes/world."""
    return 2 * (world - 1) * n_bytes / world


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", required=True, help="the model's params.json, as a JSON string")
    p.add_argument("--tokens", help="the training text's token ids, comma-separated (default: TEXT, tokenized)")
    p.add_argument("--bos", type=int, help="the id that starts text, e.g. <|begin_of_text|> (with --tokens; "
                   "leave it out for a tokenizer without one: no rows then start with it)")
    p.add_argument("--out", required=True, help="folder: each rank writes rank{r}.pt there")
    a = p.parse_args(argv)
    if a.tokens:
        ids, bos = [int(t) for t in a.tokens.split(",")], a.bos
    else:
        from helpers.tokenizer import load_tokenizer
        ids, bos = text_ids(load_tokenizer())
    torch.set_num_threads(1)                                             # a tiny model: threads only contend
    run_rank(json.loads(a.params), ids, bos, a.out)


if __name__ == "__main__":
    main()

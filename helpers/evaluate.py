"""Held-out evaluation: a checkpoint's next-token loss over the full vocabulary, and an interpolated
bigram baseline scored on exactly the same predictions.

    python -m helpers.evaluate              # the bundled model on the held-out plays (helpers.data.VAL_PLAYS)
    python -m helpers.evaluate --record     # ... and store the result as "heldout_eval" in its train_stats.json

Windows are those of the training run's evaluation (helpers.tiny.evaluate): inputs
x = tokens[i*w : (i+1)*w], targets y = tokens[i*w+1 : (i+1)*w+1], for i < (len(tokens) - 1) // w; the ids
after the last whole window are not scored. So a window's first input is context only, and every scored
target has its previous id inside its own window: the bigram conditions on that id, the model on it and
every earlier id of the window.
"""
import argparse
import json
import math
import os
import platform
import time

import torch

from helpers import heads
from helpers.device import cpuinfo
from helpers.files import write_json
from helpers.model import auto_fp32, forward


def windows(tokens, window=512):
    """(x, y), each [n, window]: non-overlapping input windows and their next-token targets."""
    tokens = torch.as_tensor(tokens, dtype=torch.long).flatten()
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window={window!r} must be a positive integer")
    n = (len(tokens) - 1) // window
    if n < 1:
        raise ValueError(f"{len(tokens)} tokens make no window of {window} inputs + 1 target; "
                         f"give at least {window + 1} tokens or a smaller window")
    return tokens[:n * window].view(n, window), tokens[1:n * window + 1].view(n, window)


@torch.inference_mode()
def token_losses(weights, args, tokens, window=512, merged=None, progress=False):
    """nats of every target, float64 [n * window]: -log softmax over all vocab_size ids of the fp32 logits
    of helpers.model.forward. With merged (bool [vocab_size]) also a second tensor where each target in
    merged is scored as one class, -log(sum of the merged ids' probabilities), as a compact-vocabulary
    training loss does."""
    if window > args.max_seq_len:
        raise ValueError(f"window={window} exceeds max_seq_len={args.max_seq_len}; use a smaller window")
    x, y = windows(tokens, window)
    weights = auto_fp32(weights)  # as generate() does: upcast once, same numbers
    full, grouped = [], []
    rows = range(len(x))
    if progress:
        from tqdm.auto import tqdm
        rows = tqdm(rows, desc="windows", leave=False)
    for i in rows:
        logits = forward(weights, args, x[i].tolist())                     # [window, vocab_size] fp32
        yi = y[i].to(logits.device)
        lse = torch.logsumexp(logits, dim=-1)                              # [window]
        nll = lse - logits.gather(1, yi[:, None])[:, 0]
        full.append(nll.double().cpu())
        if merged is not None:
            m = merged.to(logits.device)
            hit = m[yi]                                                    # targets in the merged class
            g = nll.clone()
            g[hit] = lse[hit] - torch.logsumexp(logits[hit][:, m], dim=-1)
            grouped.append(g.double().cpu())
    full = torch.cat(full)
    return full if merged is None else (full, torch.cat(grouped))


def heldout_loss(weights, args, tokens, window=512):
    """mean next-token cross-entropy (nats) over non-overlapping windows, full vocabulary."""
    return token_losses(weights, args, tokens, window).mean().item()


class Bigram:
    """Interpolated bigram over all vocab_size ids, counted on a training stream:

        p(b | a) = lam_a * c(a, b) / c(a) + (1 - lam_a) * u(b),    lam_a = lam if c(a) > 0 else 0
        u(b)     = (1 - mu) * c(b) / N + mu / vocab_size

    c(a, b): times b follows a; c(a) = sum over b of c(a, b); c(b): times b occurs; N: stream length.
    With 0 <= lam < 1 and 0 < mu <= 1 every id has probability > 0 and each row sums to 1."""

    def __init__(self, train, vocab_size, lam, mu):
        self.check_smoothing(lam, mu)
        train = self.check(torch.as_tensor(train, dtype=torch.long).flatten(), vocab_size)
        if len(train) < 2:
            raise ValueError(f"a training stream of {len(train)} ids has no pairs to count")
        self.V, self.lam, self.mu, self.N = vocab_size, lam, mu, len(train)
        self.uni_counts = torch.bincount(train, minlength=vocab_size).double()  # c(b)
        self.ctx = torch.bincount(train[:-1], minlength=vocab_size).double()  # c(a)
        self.keys, self.counts = torch.unique(train[:-1] * vocab_size + train[1:], return_counts=True)

    @staticmethod
    def check_smoothing(lam, mu):
        if not 0 <= lam < 1 or not 0 < mu <= 1:
            raise ValueError(f"lam={lam}, mu={mu}: need 0 <= lam < 1 and 0 < mu <= 1 so no id gets probability 0")

    @staticmethod
    def check(ids, vocab_size):
        if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"token id {int(ids.max() if ids.max() >= vocab_size else ids.min())} is outside "
                             f"the vocabulary (vocab_size={vocab_size})")
        return ids

    def unigram(self, ids):
        """u(ids): the unigram interpolated with a uniform over all vocab_size ids."""
        return (1 - self.mu) * self.uni_counts[ids] / self.N + self.mu / self.V

    def pair_counts(self, prev, nxt):
        q = prev * self.V + nxt
        pos = torch.searchsorted(self.keys, q).clamp(max=len(self.keys) - 1)
        return torch.where(self.keys[pos] == q, self.counts[pos], 0).double()

    def prob(self, prev, nxt):
        """p(nxt | prev), float64, elementwise over two id tensors of one shape."""
        prev = self.check(torch.as_tensor(prev, dtype=torch.long), self.V)
        nxt = self.check(torch.as_tensor(nxt, dtype=torch.long), self.V)
        c = self.ctx[prev]
        lam = torch.where(c > 0, self.lam, 0.0)
        return lam * self.pair_counts(prev, nxt) / c.clamp(min=1) + (1 - lam) * self.unigram(nxt)

    def row(self, prev):
        """p(. | prev) over all vocab_size ids, float64 [vocab_size]."""
        return self.prob(torch.full((self.V,), int(prev)), torch.arange(self.V))

    def token_losses(self, tokens, window=512):
        """nats of every target of windows(tokens, window), the previous id as context; float64."""
        x, y = windows(tokens, window)
        return -torch.log(self.prob(x.flatten(), y.flatten()))


LAMS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
MUS = (1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3)


def fit_bigram(train, vocab_size, dev_frac=0.1, lams=LAMS, mus=MUS):
    """Pick (lam, mu) on the training stream alone: count on its first 1 - dev_frac, score every pair of
    the last dev_frac; then count on the whole stream. Returns (Bigram, {(lam, mu): dev nats/token})."""
    train = torch.as_tensor(train, dtype=torch.long).flatten()
    cut = int(len(train) * (1 - dev_frac))
    if not 2 <= cut <= len(train) - 2:
        raise ValueError(f"dev_frac={dev_frac} leaves no pairs on one side of {len(train)} training ids")
    fit, dev = train[:cut], train[cut:]
    b, grid = Bigram(fit, vocab_size, lams[0], mus[0]), {}
    for lam in lams:
        for mu in mus:
            b.check_smoothing(lam, mu)
            b.lam, b.mu = lam, mu  # same counts, other smoothing
            grid[(lam, mu)] = (-torch.log(b.prob(dev[:-1], dev[1:]))).mean().item()
    lam, mu = min(grid, key=grid.get)
    return Bigram(train, vocab_size, lam, mu), grid


def cpu_name():
    """the CPU model, for recording where a figure was measured."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


def head_scores(weights, args, tokenizer, val_ids, window=512):
    """The two heads of helpers.heads, as the model card reports them: the best induction head on four probes
    (bos + 50 random common words, twice), the best previous-token head averaged over the first window of
    each held-out text."""
    val_ids = torch.as_tensor(val_ids).flatten()
    starts = torch.nonzero(val_ids == tokenizer.special_tokens["<|begin_of_text|>"]).flatten().tolist() or [0]
    prev = torch.stack([heads.prev_scores(weights, args, val_ids[s:s + window].tolist()) for s in starts]).mean(0)
    out = {}
    for name, table in (("induction", heads.induction_scores(weights, args, tokenizer)), ("prev", prev)):
        i, h, v = heads.best(table)
        out[name] = {"layer": i, "head": h, "score": v, "all": [[round(float(x), 4) for x in r] for r in table]}
    out["induction"]["probe"] = "helpers.heads.induction_probe(tokenizer, n=50, seed) for seed in 0..3"
    out["prev"]["texts"] = f"the first {window} ids of each of the {len(starts)} held-out texts"
    return out


MIN_COUNT = 3  # helpers.train.TrainConfig.min_count, for a checkpoint without its train_stats.json


def evaluate(model_dir=None, window=512, min_count=None, progress=False):
    """The held-out figures of the model card, as a dict. Rare ids: seen < min_count times in the training
    plays (the ids that share one row in a model from helpers.train, Vocab); by default the min_count of the
    run's train_stats.json beside the checkpoint, else MIN_COUNT."""
    from helpers.checkpoint import load_checkpoint, resolve_dir
    from helpers.data import tokenize_split
    from helpers.tokenizer import load_tokenizer

    if min_count is None:
        stats = resolve_dir(model_dir) / "train_stats.json"
        min_count = json.loads(stats.read_text())["config"]["min_count"] if stats.is_file() else MIN_COUNT
    weights, args = load_checkpoint(model_dir)
    tokenizer = load_tokenizer(model_dir)
    train_ids, val_ids = tokenize_split(tokenizer)
    rare = torch.bincount(train_ids, minlength=args.vocab_size) < min_count  # [vocab_size] bool
    _, y = windows(val_ids, window)
    rare_t = rare[y.flatten()]
    load0, t0, c0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
    full, grouped = token_losses(weights, args, val_ids, window, merged=rare, progress=progress)
    t_model, c_model = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    bigram, grid = fit_bigram(train_ids, args.vocab_size)
    big = bigram.token_losses(val_ids, window)
    t_bigram = time.perf_counter() - t0
    part = lambda t: {"all": t.mean().item(), "rare_targets": t[rare_t].mean().item(),
                      "other_targets": t[~rare_t].mean().item()}
    return {
        "window": window, "windows": y.shape[0], "heldout_tokens": len(val_ids), "scored_targets": y.numel(),
        "min_count": min_count, "rare_ids": int(rare.sum()), "rare_targets": int(rare_t.sum()),
        "model": part(full), "model_rare_as_one_class": part(grouped),
        "bigram": {**part(big), "lam": bigram.lam, "mu": bigram.mu,
                   "dev_grid": {f"{lam},{mu}": v for (lam, mu), v in grid.items()}},
        "uniform": math.log(args.vocab_size),
        "heads": head_scores(weights, args, tokenizer, val_ids, window),
        "seconds": {"model": round(t_model, 1), "model_cpu": round(c_model, 1),
                    "bigram_fit_and_score": round(t_bigram, 1)},
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_1min": [round(load0, 1), round(os.getloadavg()[0], 1)]},  # before, after
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=None, help="checkpoint dir (default: LLAMA3_DIR, else the bundled model)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--record", action="store_true", help="store the result in the bundled model's train_stats.json")
    a = p.parse_args()
    from helpers.checkpoint import DEFAULT_DIR, resolve_dir, sha256
    if a.record and resolve_dir(a.model_dir).resolve() != DEFAULT_DIR.resolve():
        p.error(f"--record writes {DEFAULT_DIR}/train_stats.json: only for the bundled model (unset LLAMA3_DIR)")
    out = evaluate(a.model_dir, a.window, progress=True)
    print(json.dumps(out, indent=2))
    if a.record:
        path = DEFAULT_DIR / "train_stats.json"
        stats = json.loads(path.read_text())
        stats["heldout_eval"] = {"command": "python -m helpers.evaluate --record",
                                 "sha256": sha256(DEFAULT_DIR / "consolidated.00.pth"), **out}
        write_json(path, stats)


if __name__ == "__main__":
    main()

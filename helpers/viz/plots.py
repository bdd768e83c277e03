"""Pictures of attention and the logit lens: plot_* take the tensors of helpers.viz.data plus token labels and
return a matplotlib Figure; heatmap() hatches masked cells, so a zero from the mask differs from a learned one.
"""
import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import PatchCollection
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle

from helpers.viz.data import STATS, blocked, layer_labels, token_labels

MAX_TICKS = 48           # more tokens than this: label every k-th one
MAX_WIDTH = 11.0         # inches: wider figures are shrunk (JupyterLab would shrink them anyway, labels and all)
MASKED = "0.88"          # grey of masked (blocked) cells, drawn hatched

# tokens come from every script; a glyph the font lacks draws as a box, which needs no warning per figure
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")


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


def _ticks(ax, labels, axis, max_size=10.0):
    """Token labels on one axis: thinned past MAX_TICKS, smaller font as they multiply."""
    n = len(labels)
    step = max(1, math.ceil(n / MAX_TICKS))
    pos = list(range(0, n, step))
    size = max(5.0, min(max_size, 300 / max(len(pos), 1)))
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


def figure(w, h):
    """a constrained-layout figure of w x h inches, scaled down as a whole to at most MAX_WIDTH wide."""
    s = min(1.0, MAX_WIDTH / w)
    return plt.figure(figsize=(w * s, h * s), layout="constrained")


def _new(ax, w, h):
    if ax is not None:
        return ax.figure, ax
    fig = figure(w, h)
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
    side = min(3.0, _side(S, hi=6.5))                                      # three panels within 11 inches
    fig = figure(3 * side + 2, side * T / S + 1.5)
    axes = fig.subplots(1, 3, sharey=True)
    lim = max(float(scores.abs().max()), 1e-9)
    norm = TwoSlopeNorm(0.0, -lim, lim)
    for ax, data, hid, name in ((axes[0], scores, None, "scores  q·k/√d"),
                                (axes[1], masked, hidden, "+ causal mask (-inf)"),
                                (axes[2], probs, hidden, "softmax")):
        if name == "softmax":
            im = heatmap(ax, data, hid, cmap="viridis", vmin=0, vmax=1)
        else:
            im = heatmap(ax, data, hid, cmap="RdBu_r", norm=norm)
        _ticks(ax, labels, "x", max_size=7.0)
        ax.set_title(name)
        fig.colorbar(im, ax=ax, shrink=0.7)
    _ticks(axes[0], labels[S - T:], "y", max_size=7.0)                      # shared y: the first panel only
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
    fig = figure(cols * cell + 1.0 + 0.6 * show_labels, rows * cell + 0.6 + 0.8 * show_labels)
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
    fig = figure(cols * w + 0.5, rows * h + 0.4)
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

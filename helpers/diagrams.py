"""Diagrams drawn from ModelArgs: the architecture with a tensor shape at every arrow, and GQA head groups.

Each draw_* function returns (figure, labels): the labels are the very strings it drew, so tests check the
shapes without looking at pixels. Shapes come from `args` only; `T` is the number of tokens.

    fig, labels = draw_architecture({"this model": args, "Llama 3 8B": ModelArgs(**facts.PARAMS)})
    fig, kv_of = draw_gqa({"this model": args, "Llama 3 8B": ModelArgs(**facts.PARAMS)})
"""
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch, Rectangle

FONT = 9
WIDTH = 11.0          # inches: figures stay legible in a notebook at this width
COLORS = plt.get_cmap("tab10").colors

# (step, box text, kind): one row of the architecture per step; "layer" rows repeat n_layers times
STEPS = [
    ("tokens", "token ids", "io"),
    ("tok_embeddings", "tok_embeddings[ids]", "weight"),
    ("attention_norm", "attention_norm (RMSNorm)", "norm"),
    ("wq", "wq", "weight"), ("wk", "wk", "weight"), ("wv", "wv", "weight"),
    ("rope", "RoPE on q and k", "op"),
    ("attention", "softmax(q·kᵀ/√head_dim + causal mask)·v\none kv head per n_rep query heads", "op"),
    ("wo", "wo", "weight"),
    ("add_attention", "h + attention", "add"),
    ("ffn_norm", "ffn_norm (RMSNorm)", "norm"),
    ("w1", "w1 (gate)", "weight"), ("w3", "w3 (up)", "weight"),
    ("swiglu", "silu(w1·x) * w3·x", "op"),
    ("w2", "w2 (down)", "weight"),
    ("add_ffn", "h + feed_forward", "add"),
    ("norm", "norm (final RMSNorm)", "norm"),
    ("output", "output", "weight"),
]
PARALLEL = [("wq", "wk", "wv"), ("w1", "w3")]   # side by side in one row: they read the same x
LAYER = ("attention_norm", "add_ffn")            # first and last step inside the repeated block
KIND_COLOR = {"io": "0.92", "weight": "#cfe2f3", "norm": "#fce5cd", "op": "#d9ead3", "add": "#ead1dc"}


def shape(*dims):
    return "[" + ", ".join(str(d) for d in dims) + "]"


def architecture_labels(args):
    """step -> the shape label drawn at its outgoing arrow (weight shape first for matrices)."""
    d, nh, nkv, hd, hid, v = args.dim, args.n_heads, args.n_kv_heads, args.head_dim, args.hidden_dim, args.vocab_size
    q, kv = shape("T", nh, hd), shape("T", nkv, hd)
    return {
        "tokens": "ids " + shape("T"),
        "tok_embeddings": f"{shape(v, d)} → h {shape('T', d)}",
        "attention_norm": "x " + shape("T", d),
        "wq": f"{shape(nh * hd, d)} → q {q}",
        "wk": f"{shape(nkv * hd, d)} → k {kv}",
        "wv": f"{shape(nkv * hd, d)} → v {kv}",
        "rope": f"q {q}, k {kv}",
        "attention": f"n_rep {args.n_rep} → {shape('T', nh, hd)} → {shape('T', nh * hd)}",
        "wo": f"{shape(d, nh * hd)} → {shape('T', d)}",
        "add_attention": "h " + shape("T", d),
        "ffn_norm": "x " + shape("T", d),
        "w1": f"{shape(hid, d)} → {shape('T', hid)}",
        "w3": f"{shape(hid, d)} → {shape('T', hid)}",
        "swiglu": shape("T", hid),
        "w2": f"{shape(d, hid)} → {shape('T', d)}",
        "add_ffn": "h " + shape("T", d),
        "norm": shape("T", d),
        "output": f"{shape(v, d)} → logits {shape('T', v)}",
    }


def rows():
    """STEPS grouped into drawing rows: parallel matrices share one row."""
    out, done = [], set()
    for step, _, _ in STEPS:
        if step in done:
            continue
        group = next((g for g in PARALLEL if step in g), (step,))
        out.append(group)
        done.update(group)
    return out


def box(ax, x, y, w, h, text, color, fontsize=FONT):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec="0.3", lw=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def arrow(ax, x0, y0, x1, y1, **kw):
    ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="-|>", color="0.3", lw=0.8, **kw))


def describe(args):
    return (f"dim {args.dim}, {args.n_layers} layers, {args.n_heads} heads, {args.n_kv_heads} kv heads\n"
            f"head_dim {args.head_dim}, hidden_dim {args.hidden_dim}, vocab {args.vocab_size:,}")


def draw_architecture(models, width=WIDTH):
    """one column of boxes (the computation) and one column of shape labels per model.

    models: {name: ModelArgs}. Returns (fig, {name: {step: label}}) with exactly the labels drawn."""
    if not models:
        raise ValueError("draw_architecture needs at least one {name: ModelArgs}")
    labels = {name: architecture_labels(a) for name, a in models.items()}
    text = {s: t for s, t, _ in STEPS}
    kind = {s: k for s, _, k in STEPS}
    grid = rows()
    step_h = [0.95 if len(g) > 2 or any("\n" in text[s] for s in g) else 0.7 for g in grid]
    box_w, left = 3.4, 3.9                       # box column, then one label column per model
    col_w, cx = (width - left) / len(models), 0.3 + 3.4 / 2
    total_h = sum(step_h) + 1.6
    fig, ax = plt.subplots(figsize=(width, total_h * 0.6), layout="constrained")
    ax.set_xlim(0, width)
    ax.set_ylim(-total_h + 1.2, 1.2)
    ax.axis("off")
    for m, (name, a) in enumerate(models.items()):
        ax.text(left + 0.1 + m * col_w, 0.75, name, ha="left", va="center", fontsize=FONT + 1,
                fontweight="bold", color=COLORS[m])
        ax.text(left + 0.1 + m * col_w, 0.2, describe(a), ha="left", va="center", fontsize=FONT - 1,
                color=COLORS[m])
    y, centers, prev = -0.3, {}, 0.0
    for g, h in zip(grid, step_h):
        y -= (prev + h) / 2
        prev = h
        centers[g] = y
        w = box_w / len(g)
        for j, s in enumerate(g):
            x = cx - box_w / 2 + (j + 0.5) * w
            box(ax, x, y, w - 0.12, h * 0.6, text[s], KIND_COLOR[kind[s]])
            for m, name in enumerate(models):
                ly = y + ((len(g) - 1) / 2 - j) * 0.29
                ax.text(left + 0.1 + m * col_w, ly, (s + ": " if len(g) > 1 else "") + labels[name][s],
                        ha="left", va="center", fontsize=FONT, family="monospace", color=COLORS[m])
    ys = [centers[g] for g in grid]
    for (g0, y0), (g1, y1), h0, h1 in zip(zip(grid, ys), zip(grid[1:], ys[1:]), step_h, step_h[1:]):
        arrow(ax, cx, y0 - h0 * 0.3, cx, y1 + h1 * 0.3)
    # the repeated block and its two residual connections (skip arrows on the left)
    first = next(g for g in grid if LAYER[0] in g)
    last = next(g for g in grid if LAYER[1] in g)
    top, bottom = centers[first] + 0.4, centers[last] - 0.35
    ax.add_patch(Rectangle((0.05, bottom), width - 0.1, top - bottom, fill=False, ls="--", ec="0.5", lw=0.8))
    ax.text(width - 0.15, top - 0.06, "× n_layers (same block, own weights)", fontsize=FONT, color="0.35",
            va="top", ha="right")
    add_att = next(g for g in grid if "add_attention" in g)
    ffn_norm = next(g for g in grid if "ffn_norm" in g)
    for start, end in ((centers[first] + 0.3, centers[add_att]), (centers[ffn_norm] + 0.3, centers[last])):
        ax.plot([cx, 0.2, 0.2], [start, start, end], color="0.45", lw=0.8)
        arrow(ax, 0.2, end, cx - box_w / 2 + 0.05, end)
    return fig, labels


def kv_head_of(args):
    """query head h reads kv head h // n_rep (repeat_interleave order)."""
    return [h // args.n_rep for h in range(args.n_heads)]


def draw_blocks(ax, x0, y, widths, texts, colors, height=0.5, fontsize=FONT):
    """a horizontal bar cut into labelled blocks; returns their x centres (reusable for pairs, heads, ...)."""
    centers, x = [], x0
    for w, t, c in zip(widths, texts, colors):
        ax.add_patch(Rectangle((x, y - height / 2), w, height, fc=(*c[:3], 0.45), ec="0.25", lw=0.6))
        ax.text(x + w / 2, y, t, ha="center", va="center", fontsize=fontsize)
        centers.append(x + w / 2)
        x += w
    return centers


def draw_gqa(models, width=WIDTH):
    """per model: wq split into n_heads blocks of head_dim rows, wk/wv into n_kv_heads, a line from each
    query head to the kv head it reads. Returns (fig, {name: kv head of each query head})."""
    if not models:
        raise ValueError("draw_gqa needs at least one {name: ModelArgs}")
    fig, axes = plt.subplots(len(models), 1, figsize=(width, 2.3 * len(models)), layout="constrained",
                             squeeze=False)
    drawn = {}
    for ax, (name, a) in zip(axes[:, 0], models.items()):
        kv_of = kv_head_of(a)
        drawn[name] = kv_of
        unit = (width - 2.2) / a.n_heads           # width of one head_dim block
        small = 7 if unit < 0.33 else FONT
        every = 1 if unit >= 0.12 else -(-0.25 // unit)   # very many heads: number every k-th block only
        names = [str(h) if h % every == 0 else "" for h in range(a.n_heads)]
        q_x = draw_blocks(ax, 1.9, 1.6, [unit] * a.n_heads, names,
                          [COLORS[g % 10] for g in kv_of], fontsize=small)
        for g in range(a.n_kv_heads):              # kv head g sits under the middle of its group
            group = [h for h in range(a.n_heads) if kv_of[h] == g]
            mid = (q_x[group[0]] + q_x[group[-1]]) / 2
            draw_blocks(ax, mid - unit / 2, 0.3, [unit], [str(g)], [COLORS[g % 10]], fontsize=small)
            for h in group:
                ax.plot([q_x[h], mid], [1.6 - 0.25, 0.3 + 0.25], color=COLORS[g % 10], lw=0.8)
        ax.text(0.0, 1.6, f"query heads\nwq {shape(a.n_heads * a.head_dim, a.dim)}\n"
                f"= {a.n_heads} × {shape(a.head_dim, a.dim)}", va="center", fontsize=FONT)
        ax.text(0.0, 0.3, f"kv heads\nwk, wv {shape(a.n_kv_heads * a.head_dim, a.dim)}\n"
                f"= {a.n_kv_heads} × {shape(a.head_dim, a.dim)}", va="center", fontsize=FONT)
        ax.set_title(f"{name}: {a.n_heads} query heads, {a.n_kv_heads} kv heads, n_rep {a.n_rep} "
                     f"(query head h reads kv head h // {a.n_rep})", fontsize=FONT + 1, loc="left")
        ax.set_xlim(0, width)
        ax.set_ylim(-0.1, 2.0)
        ax.axis("off")
    return fig, drawn


def rope_pairs(args):
    """pair i of a head: channels (2i, 2i+1), read as one complex number, turned by freq_i per position."""
    hd = args.head_dim
    return [(2 * i, 2 * i + 1, args.rope_theta ** (-2 * i / hd)) for i in range(hd // 2)]


def draw_rope_pairs(args, width=WIDTH):
    """one head's head_dim channels -> head_dim/2 complex numbers -> each turned by m·freq_i at position m.
    Returns (fig, the pairs drawn as (channel, channel, freq))."""
    pairs = rope_pairs(args)
    hd, n = args.head_dim, len(pairs)
    fig = plt.figure(figsize=(width, 3.0))
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.9))            # data units = inches: the bars fill the width
    unit = (width - 2.1) / hd                         # width of one channel
    every = 1 if unit >= 0.25 else -(-0.5 // unit)    # many channels: number every k-th one only
    small = 7 if unit < 0.33 else FONT
    colors = [COLORS[i % 10] for i in range(n)]
    ch_x = draw_blocks(ax, 1.9, 2.0, [unit] * hd, [str(c) if c % every == 0 else "" for c in range(hd)],
                       [colors[c // 2] for c in range(hd)], fontsize=small)
    z_x = draw_blocks(ax, 1.9, 0.9, [2 * unit] * n, [f"z{i}" if i % every == 0 else "" for i in range(n)],
                      colors, fontsize=small)
    for i, (a, b, _) in enumerate(pairs):
        for c in (a, b):
            ax.plot([ch_x[c], z_x[i]], [2.0 - 0.25, 0.9 + 0.25], color=colors[i], lw=0.7)
    ax.text(0.05, 2.0, f"one head of q or k:\n{hd} channels", va="center", fontsize=FONT)
    ax.text(0.05, 0.9, f"{n} complex numbers\nz_i = x[2i] + i·x[2i+1]", va="center", fontsize=FONT)
    f0, f1 = pairs[0][2], pairs[-1][2]
    ax.text(1.9, 0.2, f"at position m, z_i is multiplied by e^(i·m·freq_i), freq_i = rope_theta^(-2i/head_dim)\n"
            f"z0 turns {f0:.3g} rad per position, z{n - 1} turns {f1:.3g} rad (rope_theta {args.rope_theta:g})",
            va="center", fontsize=FONT)
    fig.suptitle(f"RoPE's pairs: head_dim {hd} = {n} pairs of consecutive channels (Meta's layout)",
                 fontsize=FONT + 1, x=0.01, ha="left")
    ax.set_xlim(0, width)
    ax.set_ylim(-0.2, 2.5)
    ax.axis("off")
    return fig, pairs

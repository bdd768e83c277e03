"""RoPE and RMSNorm seen from inside (notebook 10's last section): the numbers and their pictures.

rope_spectrum, head_qk, rope_trajectory, rope_distance_scores and norm_stages return tensors; plot_rope_* and
plot_norm_hist draw them.
"""
import dataclasses
import math

import numpy as np
import torch

from helpers.transformer import DEVICE, apply_rope, linear, rms_norm, rope_frequencies, rope_rotations
from helpers.viz.plots import _new, _np, figure


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


# ---------------------------------------------------------------- RoPE plots

def plot_rope_rotation(traj, pairs, positions, title=None):
    """traj [P, head_dim/2] complex (rope_trajectory): the chosen pairs' paths in the complex plane."""
    pos = _np(torch.as_tensor(positions))
    fig = figure(3.3 * len(pairs) + 0.8, 3.6)
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
    fig = figure(11, 3.3)
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

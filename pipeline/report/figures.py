"""The report's pictures, drawn with matplotlib's object API on the Agg canvas (no pyplot,
no display, no global backend switch). Each function returns a `Figure`; `to_png` renders it.

Usage::

    png = to_png(confusion(matrix, class_names))
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.data.synthetic.skeleton_model import BONES  # DESIGN.md section 2, 0-based

ACTOR_COLOURS = ("tab:blue", "tab:orange")


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _class_colours(n: int) -> np.ndarray:
    """Distinct categorical colours: tab10 up to 10 classes, tab20 up to 20, tab20 + tab20b up
    to 40 (the synthetic set has 30, NTU-60 60), a sampled rainbow beyond."""
    from matplotlib import colormaps

    if n <= 20:
        return colormaps["tab10" if n <= 10 else "tab20"](np.arange(n))
    if n <= 40:
        return np.concatenate([colormaps["tab20"](np.arange(20)),
                               colormaps["tab20b"](np.arange(20))])[:n]
    return colormaps["turbo"](np.linspace(0, 1, n))


def curves(panels: list[tuple[str, dict[str, pd.DataFrame], str]]) -> Figure:
    """One panel per (title, {line label: DataFrame(epoch, value)}, y label), side by side."""
    fig = Figure(figsize=(4.2 * len(panels), 3.2), layout="constrained")
    for ax, (title, lines, ylabel) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        for label, df in lines.items():
            ax.plot(df["epoch"], df["value"], marker="." if len(df) < 30 else None, label=label)
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    return fig


def balanced_subsample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted positions of at most `per_class` samples of every label, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def tsne(feats: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE of L2-normalised features (the geometry kNN sees), fixed seed.

    One OpenMP thread: on a busy shared machine the multi-threaded Barnes-Hut gradient ran
    5-10x slower than one thread (1,800 points: about 50 s vs 10 s).
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    perplexity = min(30.0, max(2.0, (len(x) - 1) / 3))  # sklearn requires perplexity < N
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    n_jobs=1).fit_transform(x.astype(np.float64))


def tsne_pair(panels: list[tuple[str, np.ndarray, np.ndarray]], class_names: list[str]) -> Figure:
    """Scatter of each (title, xy (N, 2), labels (N,)) side by side, coloured by class. Up to
    12 classes a legend names them; beyond, each class name sits at its points' median, where a
    legend's colours would no longer tell the classes apart."""
    from matplotlib import patheffects

    colours = _class_colours(len(class_names))
    shown = np.unique(np.concatenate([labels for _, _, labels in panels]))
    fig = Figure(figsize=(6.5 * len(panels), 6.2), layout="constrained")
    halo = [patheffects.withStroke(linewidth=2.2, foreground="white")]
    for ax, (title, xy, labels) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        ax.scatter(xy[:, 0], xy[:, 1], c=colours[labels], s=9, linewidths=0)
        if len(shown) > 12:
            for c in np.unique(labels):
                x, y = np.median(xy[labels == c], axis=0)
                ax.text(x, y, class_names[c], fontsize=7, ha="center", va="center",
                        color=colours[c] * [0.6, 0.6, 0.6, 1], path_effects=halo)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(shown) <= 12:
        handles = [fig.axes[0].scatter([], [], color=colours[i], s=20, label=class_names[i])
                   for i in shown]
        fig.legend(handles=handles, loc="outside right center", fontsize=7, frameon=False)
    return fig


def confusion(matrix: np.ndarray, class_names: list[str]) -> Figure:
    """Row-normalised confusion matrix (percent of each actual class)."""
    n = len(class_names)
    rows = matrix.sum(axis=1, keepdims=True)
    pct = 100 * matrix / np.maximum(rows, 1)
    size = max(5.0, 0.16 * n + 2.5)
    font = float(np.clip(360 / n, 3, 8))
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), class_names, fontsize=font)
    ax.set(xlabel="predicted", ylabel="actual")
    if n <= 15:  # few enough cells to print their values
        for i, j in np.ndindex(n, n):
            ax.text(j, i, f"{pct[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if pct[i, j] > 50 else "black")
    fig.colorbar(im, ax=ax, shrink=0.6, label="% of actual class")
    return fig


def per_class(accuracy: np.ndarray, class_names: list[str], chance: float | None) -> Figure:
    """Horizontal bars of per-class accuracy (percent), class order kept."""
    n = len(class_names)
    fig = Figure(figsize=(6.5, max(2.5, 0.17 * n + 1)), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(n), accuracy, color="tab:blue")
    ax.set_yticks(range(n), class_names, fontsize=float(np.clip(360 / n, 3, 8)))
    ax.invert_yaxis()
    ax.set(xlim=(0, 100), xlabel="top-1 accuracy (%)")
    if chance is not None:
        ax.axvline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return fig


def stick_strips(samples: list[tuple[str, np.ndarray]], frames_per_strip: int = 8) -> Figure:
    """One strip per (title, frames (T, M, V, C)): `frames_per_strip` evenly spaced frames,
    x-y projection, bones of DESIGN.md section 2, one colour per actor."""
    fig = Figure(figsize=(12, 2.2 * len(samples)), layout="constrained")
    for ax, (title, frames) in zip(np.atleast_1d(fig.subplots(len(samples), 1)), samples):
        T, M = frames.shape[:2]
        present = np.abs(frames).sum(axis=(2, 3)) > 0      # (T, M) actor m in frame t
        xs = frames[..., 0][present]                         # (P, V) x of present actors
        x_min, x_max = (float(xs.min()), float(xs.max())) if xs.size else (-0.5, 0.5)
        step = (x_max - x_min) + 0.3  # one skeleton width plus a gap between frames
        for k, t in enumerate(np.linspace(0, T - 1, frames_per_strip).round().astype(int)):
            for m in range(M):
                if not present[t, m]:
                    continue
                x = frames[t, m, :, 0] - x_min + k * step
                y = frames[t, m, :, 1]
                for c, p in BONES:
                    ax.plot([x[c], x[p]], [y[c], y[p]], color=ACTOR_COLOURS[m % 2], lw=1.4)
                ax.scatter(x, y, s=4, color=ACTOR_COLOURS[m % 2])
            ax.text(k * step + (x_max - x_min) / 2, 1.0, f"t={t}", ha="center", va="bottom",
                    transform=ax.get_xaxis_transform(), fontsize=7, color="grey")
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(title, fontsize=9, loc="left", pad=12)
    return fig

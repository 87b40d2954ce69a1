"""Charts with matplotlib (Agg, no display): training curves, per-class bars, confusion heat maps, lines.

Each function writes a PNG atomically and returns the :class:`~matplotlib.figure.Figure` it drew (closed),
so callers and tests can read back exactly what was plotted.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .._io import atomic_path


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # without pyplot: no backend switch, no global state, no display
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: str | Path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return fig


def training_curves(recs: list[dict], out: str | Path):
    """Training loss and validation metrics per epoch from a run's ``metrics.jsonl`` records (None if empty)."""
    if not recs:
        return None
    fig = _figure(10, 3.8)
    loss_ax, val_ax = fig.subplots(1, 2)
    loss_ax.plot([r["epoch"] for r in recs], [r["train_loss"] for r in recs], label="train loss")
    loss_ax.set(title="training loss", xlabel="epoch")
    val = [r for r in recs if "val" in r]
    for key in ("miou", "mean_acc", "pixel_acc"):
        val_ax.plot([r["epoch"] for r in val], [r["val"][key] for r in val], marker=".", label=key)
    val_ax.set(title="validation", xlabel="epoch", ylim=(0, 1))
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, out)


def class_bars(names: list[str], values: list[float], out: str | Path, title: str = "per-class IoU"):
    """Horizontal bars, one per class, values in [0, 1]; a NaN (class absent) is drawn as an empty bar marked n/a."""
    fig = _figure(7, 0.9 + 0.32 * len(names))
    ax = fig.subplots()
    heights = [0.0 if (v is None or math.isnan(v)) else v for v in values]
    bars = ax.barh(range(len(names)), heights, color="tab:blue")
    for bar, v in zip(bars, values):
        text = "n/a" if (v is None or math.isnan(v)) else f"{100 * v:.1f}"
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.1), title=title)
    return _save(fig, out)


def confusion_heatmap(matrix: np.ndarray, names: list[str], out: str | Path):
    """Row-normalised confusion matrix in percent (rows: ground truth, columns: prediction)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rows = matrix.sum(1, keepdims=True)
    percent = np.divide(100 * matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    n = len(names)
    fig = _figure(1.6 + 0.45 * n, 1.2 + 0.45 * n)
    ax = fig.subplots()
    ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{percent[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if percent[i, j] > 50 else "black")
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    ax.set(xlabel="prediction", ylabel="ground truth", title="confusion (% of each true class)")
    return _save(fig, out)


def line_chart(series: dict[str, tuple[list, list]], out: str | Path, title: str, xlabel: str = "",
               ylabel: str = ""):
    """One line chart of named ``(x, y)`` series (e.g. mIoU per iteration, one line per step size)."""
    fig = _figure(7, 4)
    ax = fig.subplots()
    for name, (x, y) in series.items():
        ax.plot(x, y, marker=".", label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)

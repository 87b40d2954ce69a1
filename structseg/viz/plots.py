"""Charts drawn with Pillow alone (no plotting dependency): curves, bars, heat maps.

Each function writes a PNG atomically and returns its path.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.io import atomic_path

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _save(im: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        if t >= lo - 1e-9 * step:
            ticks.append(round(t, 10))
        t += step
    return ticks


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], series: dict[str, tuple[list, list]],
           title: str, ylim: tuple[float, float] | None = None) -> None:
    """One line chart with axes, ticks and legend inside ``box`` = (left, top, right, bottom)."""
    font = _font(12)
    l, t, r, b = box
    draw.text((l + (r - l) // 2, t), title, fill="black", font=_font(14), anchor="mt")
    pl, pt, pr, pb = l + 55, t + 24, r - 10, b - 30
    xs = [x for xv, _ in series.values() for x in xv]
    ys = [y for _, yv in series.values() for y in yv if y is not None and math.isfinite(y)]
    if not xs or not ys:
        draw.text((pl, pt + 20), "no data", fill="grey", font=font)
        return
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    y0, y1 = ylim if ylim else (min(ys), max(ys))
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = (y0 - pad, y1 + pad) if ylim is None else (y0, y1)
    sx = lambda x: pl + (x - x0) / (x1 - x0) * (pr - pl)  # noqa: E731
    sy = lambda y: pb - (y - y0) / (y1 - y0) * (pb - pt)  # noqa: E731
    for yt in _nice_ticks(y0, y1):
        draw.line([(pl, sy(yt)), (pr, sy(yt))], fill=(230, 230, 230))
        draw.text((pl - 5, sy(yt)), f"{yt:g}", fill="black", font=font, anchor="rm")
    for xt in _nice_ticks(x0, x1):
        draw.text((sx(xt), pb + 5), f"{xt:g}", fill="black", font=font, anchor="mt")
    draw.rectangle([pl, pt, pr, pb], outline="black")
    for i, (name, (xv, yv)) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = [(sx(x), sy(y)) for x, y in zip(xv, yv) if y is not None and math.isfinite(y)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for p in pts if len(pts) <= 60 else []:
            draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        draw.text((pr - 8, pt + 6 + 15 * i), name, fill=colour, font=font, anchor="ra")


def training_curves(jsonl: str | Path, out: str | Path) -> Path | None:
    """Loss and validation metrics per epoch from a run's ``metrics.jsonl``."""
    jsonl = Path(jsonl)
    if not jsonl.exists():
        return None
    recs = [json.loads(ln) for ln in jsonl.read_text().splitlines() if ln.strip()]
    im = Image.new("RGB", (1000, 380), "white")
    d = ImageDraw.Draw(im)
    ep = [r["epoch"] for r in recs]
    _panel(d, (0, 5, 500, 375), {"train loss": (ep, [r["train_loss"] for r in recs])}, "training loss")
    val = [r for r in recs if "val" in r]
    vx = [r["epoch"] for r in val]
    _panel(d, (500, 5, 1000, 375), {k: (vx, [r["val"][k] for r in val]) for k in ("miou", "mean_acc", "pixel_acc")},
           "validation (epoch)", ylim=(0.0, 1.0))
    return _save(im, out)


def class_bars(names: list[str], values: list[float], out: str | Path, title: str = "per-class IoU") -> Path:
    """Horizontal bars, one per class, values in [0, 1] (NaN drawn as 'n/a')."""
    row = 22
    im = Image.new("RGB", (700, 50 + row * len(names)), "white")
    d = ImageDraw.Draw(im)
    font = _font(12)
    d.text((350, 8), title, fill="black", font=_font(14), anchor="mt")
    left, right = 150, 620
    for i, (n, v) in enumerate(zip(names, values)):
        y = 35 + i * row
        d.text((left - 6, y + row // 2), n, fill="black", font=font, anchor="rm")
        if v is None or not math.isfinite(v):
            d.text((left + 4, y + row // 2), "n/a", fill="grey", font=font, anchor="lm")
            continue
        d.rectangle([left, y + 3, left + v * (right - left), y + row - 3], fill=COLOURS[0])
        d.text((left + v * (right - left) + 4, y + row // 2), f"{100 * v:.1f}", fill="black", font=font, anchor="lm")
    d.line([(left, 30), (left, 35 + row * len(names))], fill="black")
    return _save(im, out)


def confusion_heatmap(matrix: np.ndarray, names: list[str], out: str | Path) -> Path:
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction), percentages."""
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(names)
    cell = max(22, min(48, 700 // max(n, 1)))
    left, top = 130, 40
    im = Image.new("RGB", (left + cell * n + 20, top + cell * n + 120), "white")
    d = ImageDraw.Draw(im)
    font = _font(11 if cell < 34 else 12)
    d.text((left + cell * n // 2, 8), "confusion matrix (row-normalised, %)", fill="black", font=_font(14),
           anchor="mt")
    for i in range(n):
        d.text((left - 6, top + i * cell + cell // 2), names[i], fill="black", font=font, anchor="rm")
        for j in range(n):
            v = norm[i, j]
            shade = int(255 * (1 - v))
            colour = (shade, shade, 255) if i != j else (shade, 255, shade)
            x, y = left + j * cell, top + i * cell
            d.rectangle([x, y, x + cell, y + cell], fill=colour, outline=(220, 220, 220))
            if v >= 0.005:
                d.text((x + cell // 2, y + cell // 2), f"{100 * v:.0f}", font=font, anchor="mm",
                       fill="white" if v > 0.6 else "black")
    for j in range(n):  # column labels, rotated
        lab = Image.new("RGBA", (110, cell), (255, 255, 255, 0))
        ImageDraw.Draw(lab).text((105, cell // 2), names[j], fill="black", font=font, anchor="rm")
        lab = lab.rotate(90, expand=True)
        im.paste(lab, (left + j * cell, top + cell * n + 4), lab)
    return _save(im, out)


def line_chart(series: dict[str, tuple[list, list]], out: str | Path, title: str) -> Path:
    """One line chart of named ``(x, y)`` series (e.g. mIoU per iteration, one line per step size)."""
    im = Image.new("RGB", (700, 420), "white")
    _panel(ImageDraw.Draw(im), (0, 5, 700, 415), series, title)
    return _save(im, out)

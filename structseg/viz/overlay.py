"""Colour label maps, overlays and image | ground truth | prediction panels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_path


def colorize(label: np.ndarray, palette, ignore_index: int | None = None) -> np.ndarray:
    """``(H, W)`` indices -> ``(H, W, 3)`` uint8 colours; ignored or unknown values are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:len(palette)] = np.asarray(palette, dtype=np.uint8)
    if ignore_index is not None and ignore_index < 256:
        lut[ignore_index] = 0
    return lut[label.astype(np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour label map over the RGB image."""
    colour = colorize(label, palette).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colour * alpha).round().astype(np.uint8)


def panel(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, palette, ignore_index: int,
          out: str | Path) -> Path:
    """Write image | ground truth | prediction side by side (ground truth omitted when None)."""
    tiles = [image]
    if truth is not None:
        tiles.append(colorize(truth, palette, ignore_index))
    tiles.append(colorize(pred, palette))
    gap = np.full((image.shape[0], 6, 3), 255, dtype=np.uint8)
    row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    path = Path(out)
    with atomic_path(path) as tmp:
        Image.fromarray(row).save(tmp, format="PNG")
    return path

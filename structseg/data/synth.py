"""A procedural dataset in the unified layout, deterministic by seed.

Scenes have a sky/grass horizon, a road in perspective, and discs and boxes; each class has its
own colour *and* texture (gradient, fine noise, stripes, rings, checkers), colours are jittered per
image and Gaussian noise is added, so a model must use texture and context, not colour alone.
A one-pixel ring around each object is labelled ``ignore`` (255).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import default_mode, partial_dir, prepare_output_dir
from ..errors import DataError
from .layout import ClassInfo, write_layout

CLASSES = ClassInfo(
    names=("sky", "grass", "road", "disc", "box"),
    ignore_index=255,
    palette=((70, 130, 180), (60, 160, 60), (128, 64, 128), (220, 20, 60), (250, 170, 30)),
)
SKY, GRASS, ROAD, DISC, BOX = range(5)


def make_scene(rng: np.random.Generator, height: int = 96, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image uint8 (H,W,3), label uint8 (H,W))`` pair."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = height * rng.uniform(0.3, 0.5) + rng.uniform(-0.15, 0.15) * (xx - width / 2)
    label = np.where(yy < horizon, SKY, GRASS).astype(np.uint8)
    cx, spread = width * rng.uniform(0.3, 0.7), rng.uniform(0.4, 1.0)
    label[(yy > horizon) & (np.abs(xx - cx) < (yy - horizon) * spread + 2)] = ROAD
    objects = np.zeros((height, width), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        r = rng.uniform(0.06, 0.16) * height
        oy, ox = rng.uniform(r, height - r), rng.uniform(r, width - r)
        m = (yy - oy) ** 2 + (xx - ox) ** 2 < r ** 2
        label[m], objects = DISC, objects | m
    for _ in range(rng.integers(1, 3)):
        h, w = rng.uniform(0.12, 0.3) * height, rng.uniform(0.1, 0.3) * width
        oy, ox = rng.uniform(0, height - h), rng.uniform(0, width - w)
        m = (yy >= oy) & (yy < oy + h) & (xx >= ox) & (xx < ox + w)
        label[m], objects = BOX, objects | m

    base = np.array(CLASSES.palette, dtype=np.float32)
    base = np.clip(base + rng.normal(0, 18, base.shape), 0, 255)
    fine = rng.normal(0, 1, (height, width)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    texture = np.stack([
        (yy / height - 0.5) * 60,                               # sky: vertical gradient
        fine * 28,                                              # grass: fine noise
        np.sin(yy * 0.9 + phase) * 22,                         # road: horizontal stripes
        np.sin(np.hypot(yy - height / 2, xx - width / 2) * 0.8 + phase) * 30,  # disc: rings
        ((np.floor(yy / 4) + np.floor(xx / 4)) % 2 - 0.5) * 50,  # box: checkers
    ])
    image = base[label] + np.take_along_axis(texture, label[None].astype(np.int64), 0)[0][..., None]
    image = image * rng.uniform(0.75, 1.25) + rng.normal(0, 10, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)

    pad = np.pad(label, 1, mode="edge")
    edge = np.zeros_like(objects)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= pad[dy:dy + height, dx:dx + width] != label
    label[edge & objects] = CLASSES.ignore_index
    return image, label


def write_synthetic(out: str | Path, n: int = 64, seed: int = 0, size: tuple[int, int] = (96, 128),
                    val_fraction: float = 0.25, progress: bool = False) -> Path:
    """Write ``n`` scenes as ``OUT/{images,labels}/NNNN.png`` + ``train.txt``/``val.txt``/``classes.json``.

    The folder appears complete or not at all (it is built in a temporary sibling, then renamed).
    """
    out = Path(out)
    if n < 2:
        raise DataError(f"--n must be at least 2 (one train and one val image), got {n}")
    if size[0] < 8 or size[1] < 8:
        raise DataError(f"--height and --width must be at least 8 pixels, got {size[0]}x{size[1]}")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is an existing file; choose a new folder")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: folder exists and is not empty; choose a new folder")
    prepare_output_dir(out.parent, "folder of the dataset")
    tmp = partial_dir(out)
    try:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        pairs = []
        from tqdm import tqdm
        for i in tqdm(range(n), desc="synth", unit="img", disable=not progress, leave=False):
            image, label = make_scene(np.random.default_rng([seed, i]), *size)
            Image.fromarray(image).save(tmp / "images" / f"{i:04d}.png")
            Image.fromarray(label).save(tmp / "labels" / f"{i:04d}.png")
            pairs.append((f"images/{i:04d}.png", f"labels/{i:04d}.png"))
        n_val = max(1, int(round(n * val_fraction)))
        write_layout(tmp, CLASSES, {"train.txt": pairs[:-n_val], "val.txt": pairs[-n_val:]})
        if out.exists():
            out.rmdir()
        os.chmod(tmp, default_mode(directory=True))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

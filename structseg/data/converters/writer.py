"""Writing a converted dataset: the unified layout, atomically, with a progress bar and a summary.

A converter yields :class:`Sample` records; :func:`write_dataset` copies (or re-encodes) each image,
writes each label as an 8-bit palette PNG, checks sizes and label values, and only renames the
finished folder to ``DST`` at the end, so a failed conversion leaves nothing at ``DST``.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..._io import load_image, partial_dir, prepare_output_dir, save_png
from ...errors import DataError
from ..layout import ClassInfo, write_layout


@dataclass
class Sample:
    """One image of a split; ``label`` builds the class-index map (uint8) on demand."""

    split: str
    stem: str
    image: Path
    label: Callable[[], np.ndarray]
    scale: float = 1.0  # resize image (bicubic) and label (nearest) by this factor


@dataclass
class Summary:
    """What a conversion wrote: images per split, pixels per class, ignored pixels."""

    classes: ClassInfo
    images: dict[str, int] = field(default_factory=dict)
    pixels: np.ndarray | None = None
    ignored: int = 0

    def format(self) -> str:
        total = int(self.pixels.sum()) + self.ignored
        lines = ["split sizes: " + ", ".join(f"{k} {v}" for k, v in self.images.items())]
        present = [(n, int(c)) for n, c in zip(self.classes.names, self.pixels) if c > 0]
        lines.append(f"classes present: {len(present)} of {self.classes.num_classes}")
        width = max(len(n) for n in self.classes.names)
        for name, count in zip(self.classes.names, self.pixels):
            lines.append(f"  {name:<{width}} {100 * count / max(total, 1):7.3f} % of pixels")
        lines.append(f"pixels ignored (label {self.classes.ignore_index}): {100 * self.ignored / max(total, 1):.3f} %")
        return "\n".join(lines)


def read_indexed(path: Path) -> np.ndarray:
    """The raw pixel values of a single-channel (L or P mode) label image, as uint8."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"{path}: expected a single-channel label image (class indices), got mode {im.mode}")
            arr = np.array(im)
    except FileNotFoundError:
        raise DataError(f"{path}: label not found") from None
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: not a readable label image ({e})") from None
    if arr.max(initial=0) > 255:
        raise DataError(f"{path}: label values up to {arr.max()} do not fit 8 bits")
    return arr.astype(np.uint8)


def read_rgb(path: Path) -> np.ndarray:
    """An RGB colour-coded label image as ``(H, W, 3)`` uint8."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: label not found") from None
    except Exception as e:
        raise DataError(f"{path}: not a readable label image ({e})") from None


def colours_to_labels(rgb: np.ndarray, palette: dict[tuple[int, int, int], int], path: Path,
                      unknown: int | None = None) -> np.ndarray:
    """Map each pixel's colour through ``palette``; colours not in it are an error naming them
    (or ``unknown`` when given)."""
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int32)
    values = np.array(list(palette.values()), dtype=np.uint8)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    idx = np.clip(np.searchsorted(keys, code), 0, len(keys) - 1)
    found = keys[idx] == code
    if not found.all():
        if unknown is None:
            bad = np.unique(code[~found])[:5]
            colours = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in bad)
            raise DataError(f"{path}: colour(s) {colours} are not in the palette")
        return np.where(found, values[idx], unknown).astype(np.uint8)
    return values[idx]


def lookup(raw: np.ndarray, table: dict[int, int], default: int) -> np.ndarray:
    """Map raw label values through ``table`` (everything else -> ``default``)."""
    lut = np.full(256, default, dtype=np.uint8)
    for k, v in table.items():
        lut[k] = v
    return lut[raw]


def write_dataset(samples: Iterable[Sample], classes: ClassInfo, dst: str | Path, total: int | None = None,
                  progress: bool = True) -> Summary:
    """Write ``samples`` under ``dst`` in the unified layout (``images/SPLIT/``, ``labels/SPLIT/``, split
    files ``SPLIT.txt``, ``classes.json``). ``dst`` must not exist; it appears only when everything is written."""
    dst = Path(dst)
    if dst.exists():
        raise DataError(f"{dst}: already exists; choose a new folder (a conversion never overwrites)")
    prepare_output_dir(dst.parent, "folder of the converted dataset")
    tmp = partial_dir(dst)
    summary = Summary(classes, pixels=np.zeros(classes.num_classes, dtype=np.int64))
    splits: dict[str, list[tuple[str, str]]] = {}
    seen: set[tuple[str, str]] = set()
    try:
        for s in tqdm(samples, total=total, desc="converting", unit="img", disable=not progress):
            stem = re.sub(r"\s+", "_", s.stem)  # split files separate image and label by whitespace
            if (s.split, stem) in seen:
                raise DataError(f"{s.image}: a second image named {stem!r} in split {s.split!r}")
            seen.add((s.split, stem))
            decoded = load_image(s.image)  # decoded in full (EXIF applied): a corrupt image is refused, not copied
            h, w = decoded.shape[:2]
            label = s.label()
            if label.shape == (h, w) and s.scale != 1.0:
                h, w = round(h * s.scale), round(w * s.scale)
                label = np.array(Image.fromarray(label).resize((w, h), Image.NEAREST))
            elif label.shape != (h, w):
                raise DataError(f"{s.image}: image is {w}x{h} but its label is {label.shape[1]}x{label.shape[0]}")
            bad = (label >= classes.num_classes) & (label != classes.ignore_index)
            if bad.any():
                raise DataError(f"{s.image}: label values {sorted(np.unique(label[bad]).tolist())[:5]} are neither "
                                f"classes (0-{classes.num_classes - 1}) nor the ignore index {classes.ignore_index}")
            ext = s.image.suffix.lower()
            img_rel = f"images/{s.split}/{stem}{ext if ext in ('.jpg', '.jpeg', '.png') else '.png'}"
            lab_rel = f"labels/{s.split}/{stem}.png"
            (tmp / img_rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / lab_rel).parent.mkdir(parents=True, exist_ok=True)
            if ext in (".jpg", ".jpeg", ".png") and s.scale == 1.0:
                shutil.copyfile(s.image, tmp / img_rel)  # byte-exact: no re-compression
            else:
                im = Image.fromarray(decoded)
                if s.scale != 1.0:
                    im = im.resize((w, h), Image.BICUBIC)
                im.save(tmp / img_rel)
            save_png(label, tmp / lab_rel, [list(c) for c in classes.palette])
            counts = np.bincount(label.ravel(), minlength=256)
            summary.pixels += counts[:classes.num_classes]
            summary.ignored += int(counts[classes.ignore_index])
            splits.setdefault(s.split, []).append((img_rel, lab_rel))
        if not splits:
            raise DataError("no images found to convert; check the source folder layout (see docs/datasets.md)")
        write_layout(tmp, classes, {f"{k}.txt": sorted(v) for k, v in splits.items()})
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.images = {k: len(v) for k, v in splits.items()}
    return summary

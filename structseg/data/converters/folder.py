"""Any ``images/`` + ``masks/`` pair of folders, matched by file stem.

Masks are class indices (``L``/``P`` PNGs), or colours with ``--palette FILE`` (a ``classes.json``-like
file with ``classes`` and ``palette``; other colours are an error unless ``--unknown-colour ignore``).
Binary masks holding only 0 and 255 are recognised and mapped to {0, 1} (with a message), the most
common foreground/background convention that otherwise silently becomes "class 255".
Sub-folders of ``images/`` (e.g. ``train/``, ``val/``) become splits; without them everything is
``train``, and ``--val-fraction`` holds out a deterministic share as ``val``.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..layout import ClassInfo, default_palette
from .writer import Sample, colours_to_labels, read_indexed, read_rgb

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _index(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS}


def _held_out(stem: str, fraction: float) -> bool:
    return zlib.crc32(stem.encode()) % 10_000 < fraction * 10_000  # stable across runs and machines


def folder_samples(src: Path, classes: list[str] | None = None, palette_file: Path | None = None,
                   ignore_index: int = 255, val_fraction: float = 0.0, unknown_colour: str = "error",
                   messages: list[str] | None = None) -> tuple[ClassInfo, list[Sample]]:
    if not (isinstance(ignore_index, int) and 0 <= ignore_index <= 255):
        raise DataError(f"--ignore-index {ignore_index}: expected a label value in 0-255 (labels are 8-bit)")
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction {val_fraction}: expected a share in [0, 1)")
    images, masks = src / "images", src / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise DataError(f"{src}: expected images/ and masks/ folders in it")
    subdirs = sorted(p.name for p in images.iterdir() if p.is_dir())
    groups = [(d, images / d, masks / d) for d in subdirs] if subdirs else [(None, images, masks)]
    messages = messages if messages is not None else []
    colour_map = None
    if palette_file is not None:
        try:
            spec = json.loads(Path(palette_file).read_text())
            info = ClassInfo.from_dict({"ignore_index": ignore_index, **spec}, str(palette_file))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{palette_file}: cannot read the palette ({e})") from None
        colour_map = {tuple(c): i for i, c in enumerate(info.palette)}
        classes = list(info.names)
    pairs = []
    for split, img_dir, mask_dir in groups:
        if not mask_dir.is_dir():
            raise DataError(f"{mask_dir}: missing (images/{split}/ needs masks/{split}/)")
        imgs, msks = _index(img_dir), _index(mask_dir)
        missing = sorted(set(imgs) - set(msks))
        if missing:
            raise DataError(f"{mask_dir}: no mask for image(s) {', '.join(missing[:5])} (masks are matched by file stem)")
        for stem, path in imgs.items():
            s = split or ("val" if val_fraction and _held_out(stem, val_fraction) else "train")
            pairs.append((s, stem, path, msks[stem]))
    if not pairs:
        raise DataError(f"{images}: no images ({', '.join(IMAGE_EXTS)})")

    if colour_map is not None:
        unknown = ignore_index if unknown_colour == "ignore" else None
        load = lambda p: (lambda: colours_to_labels(read_rgb(p), colour_map, p, unknown))  # noqa: E731
    else:
        values = set()
        for *_, mask in pairs:
            values.update(np.unique(read_indexed(mask)).tolist())
        binary = values <= {0, 255} and 255 in values
        if binary:
            messages.append("masks hold only 0 and 255: read as binary, 0 -> class 0, 255 -> class 1")
            load = lambda p: (lambda: (read_indexed(p) == 255).astype(np.uint8))  # noqa: E731
            values = {0, 1}
        else:
            load = lambda p: (lambda: read_indexed(p))  # noqa: E731
        n = max((v for v in values if v != ignore_index), default=0) + 1
        if classes is None:
            classes = ["background", "foreground"] if binary else [f"class_{i}" for i in range(n)]
        elif len(classes) < n:
            raise DataError(f"{src}: masks use values up to {n - 1} but only {len(classes)} class names were given")
        info = ClassInfo(tuple(classes), ignore_index, tuple(tuple(c) for c in default_palette(len(classes))))
    samples = [Sample(split, stem, img, load(mask)) for split, stem, img, mask in pairs]
    return info, samples

"""``structseg data check``: scan a split's labels and report what training would trip over."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .._io import load_image, load_label
from ..errors import DataError
from .layout import read_classes, read_split


@dataclass
class CheckReport:
    """Per-class pixel counts and image counts, and every problem found (file: message)."""

    classes: list[str]
    ignore_index: int
    num_images: int = 0
    pixels: np.ndarray = None
    images_with: np.ndarray = None
    ignored_pixels: int = 0
    problems: list[str] = field(default_factory=list)

    def format(self) -> str:
        total = int(self.pixels.sum()) + self.ignored_pixels
        lines = [f"{self.num_images} images, {total} pixels ({self.ignored_pixels} ignored with value "
                 f"{self.ignore_index}; % below is of all pixels)",
                 f"{'idx':>3}  {'class':<16} {'pixels':>12} {'%':>7} {'images':>7}"]
        for i, name in enumerate(self.classes):
            share = 100 * self.pixels[i] / total if total else 0.0
            lines.append(f"{i:>3}  {name:<16} {int(self.pixels[i]):>12} {share:>6.2f}% {int(self.images_with[i]):>7}")
        absent = [n for n, k in zip(self.classes, self.images_with) if k == 0]
        if absent:
            lines.append(f"classes never present: {', '.join(absent)}")
        lines.append(f"{len(self.problems)} problem(s)" + (":" if self.problems else ""))
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def check_split(root: str | Path, split: str, progress: bool = True) -> CheckReport:
    """Read every pair in the split; collect out-of-range values, size mismatches, unreadable files."""
    classes = read_classes(root)
    pairs = read_split(root, split)
    c = classes.num_classes
    rep = CheckReport(list(classes.names), classes.ignore_index, pixels=np.zeros(c, np.int64),
                      images_with=np.zeros(c, np.int64))
    for img_path, lab_path in tqdm(pairs, desc="check", unit="img", disable=not progress, leave=False):
        try:
            label = load_label(lab_path)
            image = load_image(img_path)
        except DataError as e:
            rep.problems.append(str(e))
            continue
        rep.num_images += 1
        if image.shape[:2] != label.shape:
            rep.problems.append(f"{lab_path}: size {label.shape[1]}x{label.shape[0]} differs from image "
                                f"{image.shape[1]}x{image.shape[0]}")
        hist = np.bincount(label.ravel(), minlength=256)
        rep.pixels += hist[:c]
        rep.images_with += hist[:c] > 0
        if classes.ignore_index < 256:
            rep.ignored_pixels += int(hist[classes.ignore_index])
        bad = [int(v) for v in np.nonzero(hist)[0] if v >= c and v != classes.ignore_index]
        if bad:
            rep.problems.append(f"{lab_path}: values {bad[:10]} outside 0..{c - 1} and ignore {classes.ignore_index}")
    return rep

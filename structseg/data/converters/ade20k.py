"""ADE20K scene parsing (ADEChallengeData2016): 150 classes, label 0 ("other") ignored.

Labels are 8-bit PNGs with 0 = unlabelled and 1-150 the classes; they become 0-149 with 0 -> 255
(mmseg's ``reduce_zero_label``, made explicit here once and for all). Class names come from the
release's ``objectInfo150.txt`` (its first name of each row); without it they are ``class_1`` ...
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ..layout import ClassInfo, default_palette
from .writer import Sample, read_indexed

SPLITS = {"training": "train", "validation": "val"}


def class_names(root: Path) -> tuple[str, ...]:
    info = root / "objectInfo150.txt"
    if not info.is_file():
        return tuple(f"class_{i}" for i in range(1, 151))
    names = []
    for line in info.read_text().splitlines()[1:]:
        parts = line.split("\t") if "\t" in line else line.split(None, 4)
        if len(parts) >= 5:
            names.append(parts[-1].split(";")[0].strip())
    if len(names) != 150:
        raise DataError(f"{info}: expected 150 class rows (Idx Ratio Train Val Name), found {len(names)}")
    return tuple(names)


def reduce_zero_label(raw: np.ndarray) -> np.ndarray:
    return np.where(raw == 0, 255, raw.astype(np.int16) - 1).astype(np.uint8)


def ade20k_samples(src: Path) -> tuple[ClassInfo, list[Sample]]:
    root = src / "ADEChallengeData2016" if (src / "ADEChallengeData2016").is_dir() else src
    if not (root / "images").is_dir() or not (root / "annotations").is_dir():
        raise DataError(f"{src}: not an ADEChallengeData2016 folder (expected images/ and annotations/)")
    classes = ClassInfo(class_names(root), 255, tuple(tuple(c) for c in default_palette(150)))
    samples = []
    for folder, split in SPLITS.items():
        for image in sorted((root / "images" / folder).glob("*.jpg")):
            label = root / "annotations" / folder / f"{image.stem}.png"
            samples.append(Sample(split, image.stem, image,
                                  (lambda p: (lambda: reduce_zero_label(read_indexed(p))))(label)))
    return classes, samples

"""MSRC-21 from the original MSRC v2 release: ``Images/*.bmp`` and ``GroundTruth/*_GT.bmp`` colour maps.

The ground truth uses 23 colours plus black (void); horse and mountain have too few examples and are
made void, as is standard for MSRC-21 (Shotton et al. 2006). Splits: Shotton's ``Train.txt``,
``Validation.txt`` and ``Test.txt`` (file names, one per line) from ``--splits DIR`` or from SRC;
without them every image goes to ``all``.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ..layout import ClassInfo
from .voc import voc_colormap
from .writer import Sample, colours_to_labels, read_rgb

# MSRC v2 colour index order (the VOC bit-interleaved palette): 0 void, then these 23
ORIGINAL = ("building", "grass", "tree", "cow", "horse", "sheep", "sky", "mountain", "aeroplane", "water", "face",
            "car", "bicycle", "flower", "sign", "bird", "book", "chair", "road", "cat", "dog", "body", "boat")
DROPPED = ("horse", "mountain")
CLASSES = tuple(n for n in ORIGINAL if n not in DROPPED)
SPLIT_FILES = {"Train.txt": "train", "Validation.txt": "val", "Test.txt": "test"}


def msrc_classes() -> ClassInfo:
    cmap = voc_colormap(len(ORIGINAL) + 1)
    return ClassInfo(CLASSES, 255, tuple(tuple(cmap[ORIGINAL.index(n) + 1]) for n in CLASSES))


def colour_table() -> dict[tuple[int, int, int], int]:
    cmap = voc_colormap(len(ORIGINAL) + 1)
    table = {tuple(cmap[0]): 255}
    for i, name in enumerate(ORIGINAL, 1):
        table[tuple(cmap[i])] = 255 if name in DROPPED else CLASSES.index(name)
    return table


def read_splits(folder: Path) -> dict[str, str] | None:
    """``{image stem: split}`` from Shotton's split files in ``folder``, or None when there are none."""
    found = {name: folder / name for name in SPLIT_FILES if (folder / name).is_file()}
    if not found:
        return None
    split_of = {}
    for name, path in found.items():
        for line in path.read_text().splitlines():
            if line.strip():
                split_of[Path(line.strip()).stem] = SPLIT_FILES[name]
    return split_of


def msrc_samples(src: Path, splits_dir: Path | None = None) -> tuple[ClassInfo, list[Sample]]:
    root = src / "MSRC_ObjCategImageDatabase_v2" if (src / "MSRC_ObjCategImageDatabase_v2").is_dir() else src
    if not (root / "Images").is_dir() or not (root / "GroundTruth").is_dir():
        raise DataError(f"{src}: not an MSRC v2 folder (expected Images/ and GroundTruth/)")
    split_of = read_splits(splits_dir or root)
    if splits_dir is not None and split_of is None:
        raise DataError(f"{splits_dir}: no split files (expected {', '.join(SPLIT_FILES)})")
    table = colour_table()
    samples = []
    for image in sorted((root / "Images").glob("*.bmp")):
        split = "all" if split_of is None else split_of.get(image.stem)
        if split is None:
            continue  # not in any of the given splits
        label = root / "GroundTruth" / f"{image.stem}_GT.bmp"
        samples.append(Sample(split, image.stem, image, (lambda p: (lambda: colours_to_labels(read_rgb(p), table, p)))(label)))
    return msrc_classes(), samples

"""Cityscapes fine annotations: ``gtFine/SPLIT/CITY/*_gtFine_labelIds.png`` -> the 19 training classes.

The label ids (0-33, -1 for licence plates) map to the benchmark's train ids by the official table
(cityscapesScripts ``labels.py``); every other id becomes 255 (ignored). ``test`` has no public labels
and is skipped.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ..layout import ClassInfo
from .writer import Sample, lookup, read_indexed

# (name, label id, colour) of the 19 evaluated classes, in train-id order
CLASSES = [("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)), ("building", 11, (70, 70, 70)),
           ("wall", 12, (102, 102, 156)), ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
           ("traffic light", 19, (250, 170, 30)), ("traffic sign", 20, (220, 220, 0)),
           ("vegetation", 21, (107, 142, 35)), ("terrain", 22, (152, 251, 152)), ("sky", 23, (70, 130, 180)),
           ("person", 24, (220, 20, 60)), ("rider", 25, (255, 0, 0)), ("car", 26, (0, 0, 142)),
           ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)), ("train", 31, (0, 80, 100)),
           ("motorcycle", 32, (0, 0, 230)), ("bicycle", 33, (119, 11, 32))]
ID_TO_TRAIN = {label_id: train_id for train_id, (_, label_id, _) in enumerate(CLASSES)}


def cityscapes_samples(src: Path, splits: tuple[str, ...] = ("train", "val")) -> tuple[ClassInfo, list[Sample]]:
    if not (src / "leftImg8bit").is_dir() or not (src / "gtFine").is_dir():
        raise DataError(f"{src}: not a Cityscapes folder (expected leftImg8bit/ and gtFine/ in it)")
    classes = ClassInfo(tuple(c[0] for c in CLASSES), 255, tuple(c[2] for c in CLASSES))
    samples = []
    for split in splits:
        for image in sorted((src / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            label = src / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
            samples.append(Sample(split, stem, image,
                                  (lambda p: (lambda: lookup(read_indexed(p), ID_TO_TRAIN, 255)))(label)))
    return classes, samples

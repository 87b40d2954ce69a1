"""PASCAL VOC 2012 (``SegmentationClass``) and VOC + Berkeley SBD (the 10,582-image ``train_aug`` split).

VOC labels are palette PNGs whose indices are the classes (0 background ... 20 tvmonitor) and 255
on object borders and difficult regions (ignored). SBD labels are MATLAB files ``cls/NAME.mat`` with
a struct ``GTcls`` whose ``Segmentation`` field holds the class indices (no border label).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ..layout import ClassInfo
from .writer import Sample, read_indexed

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def voc_colormap(n: int) -> list[list[int]]:
    """The VOC palette: index bits interleaved into the high bits of r, g, b."""
    cmap = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap.append([r, g, b])
    return cmap


def voc_classes() -> ClassInfo:
    return ClassInfo(VOC_CLASSES, 255, tuple(tuple(c) for c in voc_colormap(21)))


def find_voc_root(src: Path) -> Path:
    """``VOC2012`` itself, or a folder holding ``VOCdevkit/VOC2012`` or ``VOC2012``."""
    for cand in (src, src / "VOC2012", src / "VOCdevkit" / "VOC2012"):
        if (cand / "ImageSets" / "Segmentation").is_dir() and (cand / "SegmentationClass").is_dir():
            return cand
    raise DataError(f"{src}: not a VOC 2012 folder (expected ImageSets/Segmentation/ and SegmentationClass/ "
                    "in it, in VOC2012/ or in VOCdevkit/VOC2012/)")


def read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _voc_label(path: Path):
    def load() -> np.ndarray:
        return read_indexed(path)  # palette indices are the classes; 255 stays 255 (ignored)
    return load


def voc_samples(src: Path, splits: tuple[str, ...] = ("train", "val")) -> tuple[ClassInfo, list[Sample]]:
    root = find_voc_root(src)
    samples = []
    for split in splits:
        for i in read_ids(root / "ImageSets" / "Segmentation" / f"{split}.txt"):
            samples.append(Sample(split, i, root / "JPEGImages" / f"{i}.jpg",
                                  _voc_label(root / "SegmentationClass" / f"{i}.png")))
    return voc_classes(), samples


def read_sbd_mat(path: Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/*.mat`` file as uint8."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError("reading SBD .mat files needs scipy: pip install scipy (or structseg[convert])") from None
    if not path.is_file():
        raise DataError(f"{path}: SBD label not found")
    try:
        mat = loadmat(str(path))
        seg = mat["GTcls"][0, 0]["Segmentation"]
    except Exception as e:
        raise DataError(f"{path}: not an SBD cls file (expected a struct GTcls with a Segmentation field: {e})") from None
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.max(initial=0) > 20:
        raise DataError(f"{path}: GTcls.Segmentation must be a 2-D map of classes 0-20")
    return seg.astype(np.uint8)


def find_sbd_root(sbd: Path) -> Path:
    for cand in (sbd, sbd / "dataset", sbd / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir() and (cand / "img").is_dir():
            return cand
    raise DataError(f"{sbd}: not an SBD folder (expected cls/ and img/ in it, in dataset/ or "
                    "benchmark_RELEASE/dataset/)")


def voc_sbd_samples(src: Path, sbd: Path) -> tuple[ClassInfo, list[Sample]]:
    """``train_aug`` = VOC train + SBD train + SBD val, minus every VOC val image; and VOC ``val``.

    An image with a VOC label keeps it (finer, with ignored borders); the others use SBD's.
    """
    root, sroot = find_voc_root(src), find_sbd_root(sbd)
    voc_val = read_ids(root / "ImageSets" / "Segmentation" / "val.txt")
    excluded = set(voc_val)
    ids = read_ids(root / "ImageSets" / "Segmentation" / "train.txt")
    ids += read_ids(sroot / "train.txt") + read_ids(sroot / "val.txt")
    samples, seen = [], set()
    for i in ids:
        if i in excluded or i in seen:
            continue
        seen.add(i)
        voc_label = root / "SegmentationClass" / f"{i}.png"
        if voc_label.is_file():
            image = root / "JPEGImages" / f"{i}.jpg"
            label = _voc_label(voc_label)
        else:
            image = sroot / "img" / f"{i}.jpg"
            label = (lambda p: (lambda: read_sbd_mat(p)))(sroot / "cls" / f"{i}.mat")
        samples.append(Sample("train_aug", i, image, label))
    for i in voc_val:
        samples.append(Sample("val", i, root / "JPEGImages" / f"{i}.jpg", _voc_label(root / "SegmentationClass" / f"{i}.png")))
    return voc_classes(), samples

"""Image-level labels ("tags") in the unified layout, for weakly supervised training.

A tags file lists one image per line, its path relative to the dataset root, a space, and the names of
the classes present in it separated by commas (names from ``classes.json``; a name may not contain a comma):

    images/1_10_s.png building,grass,sky
    images/1_11_s.png cow,grass

Lines starting with ``#`` and blank lines are skipped. ``structseg data tags ROOT --split train.txt --out
FILE`` writes one from the split's label maps: a class is present when it covers at least ``min_share``
of the image's labelled (non-ignore) pixels. A tags file may also be written by hand for images that have
no label maps at all: weak training reads the images and this file only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .._io import atomic_path, load_image, load_label, prepare_output_file
from ..errors import DataError
from .dataset import sample_generator
from .layout import ClassInfo, read_classes, read_split

DEFAULT_MIN_SHARE = 0.01


@dataclass(frozen=True)
class TaggedImage:
    image: Path
    tags: tuple[int, ...]  # class indices, sorted


def read_tags(root: str | Path, path: str | Path, classes: ClassInfo | None = None) -> list[TaggedImage]:
    """Read and check a tags file (relative paths are relative to ``root``)."""
    root = Path(root)
    classes = classes or read_classes(root)
    path = Path(path) if Path(path).is_absolute() else root / path
    if not path.is_file():
        raise DataError(f"{path}: tags file not found; write one from the split's label maps with `structseg data "
                        "tags ROOT --split train.txt --out FILE` (or by hand, 'IMAGE class,class' per line) and give "
                        "it as weak.tags (--set weak.tags=FILE, relative to data.root) or --tags FILE")
    index = {n: i for i, n in enumerate(classes.names)}
    entries, seen = [], set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        image, _, rest = line.partition(" ")
        names = [n.strip() for n in rest.split(",") if n.strip()]
        where = f"{path}:{lineno}"
        if not names:
            raise DataError(f"{where}: image {image} has no tags; expected 'IMAGE class,class,...' "
                            "(every image of a weak training split needs at least one)")
        unknown = [n for n in names if n not in index]
        if unknown:
            raise DataError(f"{where}: unknown class(es) {unknown}; classes.json has {list(classes.names)}")
        if image in seen:
            raise DataError(f"{where}: image {image} is listed twice")
        if not (root / image).is_file():
            raise DataError(f"{where}: listed image {root / image} does not exist")
        seen.add(image)
        entries.append(TaggedImage(root / image, tuple(sorted({index[n] for n in names}))))
    if not entries:
        raise DataError(f"{path}: no tagged images; expected 'IMAGE class,class,...' lines")
    return entries


def write_tags(path: str | Path, entries: list[TaggedImage], root: str | Path, classes: ClassInfo) -> Path:
    """Write a tags file atomically (image paths relative to ``root``)."""
    if any("," in n for n in classes.names):
        raise DataError(f"class names {[n for n in classes.names if ',' in n]} contain a comma; "
                        "a tags file cannot name them")
    path = prepare_output_file(path, "tags file")
    lines = [f"{e.image.relative_to(Path(root)).as_posix()} {','.join(classes.names[i] for i in e.tags)}\n"
             for e in entries]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines))
    return path


def tags_from_labels(root: str | Path, split: str, min_share: float = DEFAULT_MIN_SHARE,
                     progress: bool = True) -> list[TaggedImage]:
    """The tags of every image of ``ROOT/split``: the classes covering at least ``min_share`` of its labelled
    pixels (an image whose pixels are all ignored gets none and is an error)."""
    if not 0 <= min_share < 1:
        raise DataError(f"--min-share must be in [0, 1), got {min_share}")
    root = Path(root)
    classes = read_classes(root)
    entries = []
    for img, lab in tqdm(read_split(root, split), desc=f"tags {split}", unit="img", disable=not progress):
        label = load_label(lab)
        if (label == classes.ignore_index).all():
            raise DataError(f"{lab}: every pixel is the ignore index; the image has no tags")
        entries.append(TaggedImage(img, label_tags(label, classes, min_share)))
    return entries


def label_tags(label: np.ndarray, classes: ClassInfo, min_share: float = DEFAULT_MIN_SHARE) -> tuple[int, ...]:
    """The classes covering at least ``min_share`` of a label map's labelled (non-ignore) pixels, and at least one
    pixel; empty when every pixel is ignored."""
    counts = np.bincount(label[label != classes.ignore_index].ravel(), minlength=classes.num_classes)
    return tuple(int(c) for c in np.flatnonzero(counts >= max(min_share * counts.sum(), 1)))


class TaggedDataset(torch.utils.data.Dataset):
    """Images and their multi-hot tags ``(C,)`` float32, read from a tags file alone (no label maps).

    The transform is a paired one (``transform(image, label, generator)``, as training uses): it is called with
    a label map of the ignore index, and only its image is kept. Augmentation is seeded as in
    :class:`SegmentationDataset`, by ``(seed, epoch, index)``.
    """

    def __init__(self, root: str | Path, tags: str | Path, transform=None, seed: int = 0, channels: int = 3):
        self.root, self.channels = Path(root), channels
        self.classes = read_classes(self.root)
        self.entries = read_tags(self.root, tags, self.classes)
        self.transform, self.seed, self.epoch = transform, seed, 0
        self._images: list[np.ndarray | None] = [None] * len(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def multi_hot(self, index: int) -> torch.Tensor:
        y = torch.zeros(self.classes.num_classes)
        y[list(self.entries[index].tags)] = 1.0
        return y

    def preload(self, progress: bool = True) -> "TaggedDataset":
        """Decode every image once, so epochs never touch the files again."""
        for i in tqdm(range(len(self)), desc="decode tagged images", unit="img", disable=not progress, leave=False):
            self.load(i)
        return self

    def load(self, index: int) -> np.ndarray:
        if self._images[index] is None:
            self._images[index] = load_image(self.entries[index].image, self.channels)
        return self._images[index]

    def __getitem__(self, index: int):
        image = self.load(index)
        if self.transform is None:
            return torch.from_numpy(image).permute(2, 0, 1).contiguous(), self.multi_hot(index)
        g = sample_generator(self.seed, self.epoch, index)
        blank = np.full(image.shape[:2], self.classes.ignore_index, np.uint8)
        x, _ = self.transform(image, blank, g)
        return x, self.multi_hot(index)

"""A segmentation dataset in the unified layout, with decoded images cached in RAM.

Decoding PNGs costs more than the model step on 2 cores, so every image is decoded once
(``preload``) and kept as a ``uint8`` array; workers forked afterwards share those pages.
Augmentation is deterministic given ``(seed, epoch, index)``, which makes resumed training
identical to uninterrupted training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .._io import load_image, load_label
from ..errors import DataError
from .layout import read_classes, read_split, validate_pair
from .packed import PackedSplit, is_packed


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one sample's augmentation: a function of ``(seed, epoch, index)`` alone, so that a
    resumed run, any worker count and any thread count draw the same augmentation."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 10_000_019 + index)


class SegmentationDataset(torch.utils.data.Dataset):
    """Images and label maps listed in ``ROOT/SPLIT``; returns ``(image, label)`` tensors.

    Without a transform an item is ``(image (C,H,W), int64 (H,W))`` (``uint8`` RGB for ``channels=3``, the
    stored bands otherwise, see :func:`structseg._io.load_image`); with one, whatever the transform returns.
    The transform is called as ``transform(image_hwc, label_hw, generator)``. ``split`` may also name a packed
    split folder (``structseg data pack``, RGB only), read by memory map.
    """

    def __init__(self, root: str | Path, split: str | Path, transform: Callable | None = None,
                 cache: bool = True, seed: int = 0, channels: int = 3):
        self.root = Path(root)
        self.split = str(split)
        self.channels = channels
        self.classes = read_classes(self.root)
        folder = Path(split) if Path(split).is_absolute() else self.root / split
        self.packed = PackedSplit(folder) if is_packed(folder) else None
        if self.packed is not None and channels != 3:
            raise DataError(f"{folder}: a packed split holds RGB images; for {channels}-band images list the "
                            "files in a split file instead")
        if self.packed is not None:
            if self.packed.classes != self.classes:
                raise DataError(f"{folder}: packed with other classes than {self.root / 'classes.json'}; re-pack it")
            self.pairs = [tuple(self.root / n for n in self.packed.names(i)) for i in range(len(self.packed))]
            cache = False  # reading a packed sample is already a copy out of the page cache
        else:
            self.pairs = read_split(self.root, split)
        self.transform = transform
        self.cache = cache
        self.seed = seed
        self.epoch = 0
        self._images: list[np.ndarray | None] = [None] * len(self.pairs)
        self._labels: list[np.ndarray | None] = [None] * len(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before iterating)."""
        self.epoch = epoch

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded, validated ``(image (H,W,C), label (H,W) uint8)``, cached when enabled."""
        if self._images[index] is not None:
            return self._images[index], self._labels[index]
        if self.packed is not None:
            return self.packed.load(index)  # validated when packed
        img_path, lab_path = self.pairs[index]
        image, label = load_image(img_path, self.channels), load_label(lab_path)
        validate_pair(image, label, self.classes, img_path, lab_path)
        if self.cache:
            self._images[index], self._labels[index] = image, label
        return image, label

    def preload(self, progress: bool = True) -> "SegmentationDataset":
        """Decode every image once (with a progress bar) so epochs never touch the PNGs again."""
        if self.cache:
            for i in tqdm(range(len(self)), desc=f"decode {self.split}", unit="img", disable=not progress,
                          leave=False):
                self.load(i)
        return self

    def generator(self, index: int) -> torch.Generator:
        return sample_generator(self.seed, self.epoch, index)

    def __getitem__(self, index: int):
        image, label = self.load(index)
        if self.transform is not None:
            return self.transform(image, label, self.generator(index))
        return (torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                torch.from_numpy(label.astype(np.int64)))


def equal_size_batches(dataset: SegmentationDataset, indices, size: int):
    """Stacked ``(x, label, indices)`` of up to ``size`` items; consecutive items of equal shape share a batch
    (whole images of different sizes cannot be stacked)."""
    group: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    for i in indices:
        x, lab = dataset[i]
        if group and (len(group) == size or group[0][0].shape != x.shape):
            yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group]), [g[2] for g in group]
            group = []
        group.append((x, lab, i))
    if group:
        yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group]), [g[2] for g in group]

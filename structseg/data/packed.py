"""Packed splits: a split's decoded images and labels in a few large raw files, read by memory map.

``structseg data pack ROOT --split train.txt --out DIR`` writes the new folder ``DIR``: shard files
``shard-00000.bin`` ... holding each sample's image (``H x W x 3`` uint8) and label (``H x W`` uint8)
back to back, and ``index.json`` listing, per sample, its shard, byte offset, size and original file
names. Every pair is decoded and validated once, while packing, so reading a sample is a copy out of
the page cache: no PNG decoding, no per-process RAM cache (forked workers share the pages), and
splits larger than RAM stream from disk. A dataset opened on the folder reads it, e.g.
``data.train_split: /data/camvid_packed/train`` (a relative path is relative to ROOT). The folder is
written beside itself under a hidden name and renamed at the end.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .._io import load_image, load_label, partial_dir, prepare_output_dir
from ..errors import DataError
from .layout import ClassInfo, read_classes, read_split, validate_pair

FORMAT = "structseg-packed-v1"
INDEX = "index.json"


def is_packed(path: str | Path) -> bool:
    return (Path(path) / INDEX).is_file()


def pack_split(root: str | Path, split: str, out: str | Path, shard_mb: float = 256,
               progress: bool = True) -> Path:
    """Decode, validate and pack ``ROOT/split`` into the new folder ``out`` (never into the dataset unasked).

    The shards are written into a hidden ``.OUT.partial-PID`` folder renamed to ``out`` at the end; the
    partial folders of killed runs are removed by the next run.
    """
    if not (isinstance(shard_mb, (int, float)) and shard_mb > 0 and math.isfinite(shard_mb)):
        raise DataError(f"--shard-mb must be a positive number (MiB per shard), got {shard_mb!r}")
    root = Path(root)
    classes = read_classes(root)
    pairs = read_split(root, split)
    out = Path(out)
    if out.exists():
        raise DataError(f"{out}: already exists; remove it or choose another --out")
    prepare_output_dir(out.parent, "folder of the packed split")
    tmp = partial_dir(out)
    samples, shard, offset, handle = [], 0, 0, None
    try:
        handle = open(tmp / f"shard-{shard:05d}.bin", "wb")
        for img_path, lab_path in tqdm(pairs, desc=f"pack {split}", unit="img", disable=not progress):
            image, label = load_image(img_path), load_label(lab_path)
            validate_pair(image, label, classes, img_path, lab_path)
            size = image.nbytes + label.nbytes
            if offset and offset + size > shard_mb * 2**20:
                handle.close()
                shard, offset = shard + 1, 0
                handle = open(tmp / f"shard-{shard:05d}.bin", "wb")
            handle.write(np.ascontiguousarray(image).tobytes())
            handle.write(np.ascontiguousarray(label).tobytes())
            samples.append([shard, offset, int(image.shape[0]), int(image.shape[1]),
                            os.path.relpath(img_path, root), os.path.relpath(lab_path, root)])
            offset += size
        handle.close()
        index = {"format": FORMAT, "split": str(split), "classes": classes.to_dict(), "samples": samples}
        (tmp / INDEX).write_text(json.dumps(index))
        os.replace(tmp, out)
    except BaseException:
        if handle is not None:
            handle.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class PackedSplit:
    """Random access to a packed split: ``len``, ``load(i) -> (image, label)``, ``names[i]``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            index = json.loads((self.path / INDEX).read_text())
            if index.get("format") != FORMAT:
                raise ValueError(f"format {index.get('format')!r}")
            self.samples = [tuple(s) for s in index["samples"]]
            self.classes = ClassInfo.from_dict(index["classes"], str(self.path / INDEX))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{self.path / INDEX}: not a structseg packed split ({e}); re-run structseg data pack") from None
        self._maps: dict[int, np.memmap] = {}
        last: dict[int, tuple] = {}  # per shard, the sample that ends furthest into it: one stat per shard
        for s in self.samples:
            if s[0] not in last or s[1] > last[s[0]][1]:
                last[s[0]] = s
        for number, s in last.items():
            shard = self.path / f"shard-{number:05d}.bin"
            end = s[1] + s[2] * s[3] * 4
            if not shard.is_file() or shard.stat().st_size < end:
                raise DataError(f"{shard}: missing or truncated (sample {s[4]} ends at byte {end}); re-pack the split")

    def __len__(self) -> int:
        return len(self.samples)

    def names(self, index: int) -> tuple[str, str]:
        return self.samples[index][4], self.samples[index][5]

    def _map(self, shard: int) -> np.memmap:
        if shard not in self._maps:  # opened lazily, so a dataset pickled into workers maps its own view
            self._maps[shard] = np.memmap(self.path / f"shard-{shard:05d}.bin", dtype=np.uint8, mode="r")
        return self._maps[shard]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        shard, offset, h, w = self.samples[index][:4]
        data = self._map(shard)
        image = np.array(data[offset:offset + h * w * 3]).reshape(h, w, 3)
        label = np.array(data[offset + h * w * 3:offset + h * w * 4]).reshape(h, w)
        return image, label

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}

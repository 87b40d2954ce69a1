"""Loading a split: loose PNG files (decoded by Pillow) vs a packed split (memory-mapped raw shards).

For each dataset root: pack the split into a temporary folder (timed once), then read every sample
``--repeats`` times each way through ``SegmentationDataset.load`` with the RAM cache off, which is
what the first epoch (or every epoch of a split larger than RAM) pays. Files are read once before
timing so both sides start from a warm page cache; the disk footprint of each form is reported too.

    python benchmarks/packed_loading.py ../shared/data/camvid ../shared/data/msrc21 --split train.txt
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from structseg.data.dataset import SegmentationDataset
from structseg.data.packed import pack_split


def epoch_rate(ds: SegmentationDataset) -> float:
    t = time.perf_counter()
    for i in range(len(ds)):
        ds.load(i)
    return len(ds) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--split", default="train.txt")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    print(f"machine: {platform.machine()}, torch {torch.__version__}; median of {a.repeats} passes, img/s")
    print("| dataset | images | loose files MiB | packed MiB | pack once (s) | loose PNG img/s | packed img/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for root in a.roots:
        loose = SegmentationDataset(root, a.split, cache=False)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            out = pack_split(root, a.split, Path(tmp) / "pack", progress=False)
            pack_s = time.perf_counter() - t
            packed = SegmentationDataset(root, str(out))
            epoch_rate(loose), epoch_rate(packed)  # warm the page cache for both
            r_loose = statistics.median(epoch_rate(loose) for _ in range(a.repeats))
            r_packed = statistics.median(epoch_rate(packed) for _ in range(a.repeats))
            packed_mb = sum(f.stat().st_size for f in out.iterdir()) / 2**20
        loose_mb = sum(p.stat().st_size for pair in loose.pairs for p in pair) / 2**20
        print(f"| {Path(root).name} {a.split} | {len(loose)} | {loose_mb:.1f} | {packed_mb:.1f} | {pack_s:.1f} | "
              f"{r_loose:.0f} | {r_packed:.0f} | {r_packed / r_loose:.1f}x |")


if __name__ == "__main__":
    main()

"""Median-frequency class weights of a training split, beside SegNet's published CamVid weights.

    python benchmarks/class_weights.py ../shared/data/camvid --split train.txt
"""
from __future__ import annotations

import argparse

from structseg.data.class_weights import median_frequency_weights
from structseg.data.dataset import SegmentationDataset

# SegNet-Tutorial Models/segnet_train.prototxt, class_weighting, classes 0..10
SEGNET_CAMVID = [0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--split", default="train.txt")
    a = ap.parse_args()
    ds = SegmentationDataset(a.root, a.split)
    w = median_frequency_weights(ds)
    compare = len(w) == len(SEGNET_CAMVID)
    print("| class | ours |" + (" SegNet | ratio |" if compare else ""))
    print("|---|---|" + ("---|---|" if compare else ""))
    for i, (name, v) in enumerate(zip(ds.classes.names, w)):
        extra = f" {SEGNET_CAMVID[i]:.4f} | {v / SEGNET_CAMVID[i]:.2f} |" if compare else ""
        print(f"| {name} | {v:.4f} |{extra}")


if __name__ == "__main__":
    main()

"""How good are pseudo labels? Score a `structseg data pseudo-labels` folder against the true label maps.

    python benchmarks/pseudo_label_quality.py PSEUDO_DIR ../shared/data/msrc21 [--split train.txt]

Each image of PSEUDO_DIR/train.txt is matched (by its resolved image path) to the same image in ROOT's
split; prints the mean IoU, mean class accuracy and pixel accuracy of the pseudo labels over the pixels they
label, and the share of pixels they leave out (the ignore index, e.g. from ``--min-confidence``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from structseg._io import load_label
from structseg.data.layout import read_classes, read_split
from structseg.engine.metrics import ConfusionMatrix


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pseudo", help="the folder written by structseg data pseudo-labels")
    p.add_argument("root", help="the dataset with the true label maps")
    p.add_argument("--split", default="train.txt", help="ROOT's split holding the pseudo-labelled images")
    a = p.parse_args()
    classes = read_classes(a.root)
    truth = {image.resolve(): label for image, label in read_split(a.root, a.split)}
    cm = ConfusionMatrix(classes.num_classes, classes.ignore_index)
    left_out = total = 0
    for image, pseudo_path in read_split(a.pseudo, "train.txt"):
        if image.resolve() not in truth:
            raise SystemExit(f"{image}: not in {Path(a.root) / a.split}")
        pseudo = torch.from_numpy(load_label(pseudo_path).astype(np.int64))
        target = torch.from_numpy(load_label(truth[image.resolve()]).astype(np.int64))
        unlabelled = pseudo == classes.ignore_index
        left_out += int(unlabelled.sum())
        total += pseudo.numel()
        target[unlabelled] = classes.ignore_index  # scored over the pixels the pseudo labels label
        cm.update(pseudo.clamp(max=classes.num_classes - 1), target)
    m = cm.compute()
    print(f"{a.pseudo}: mIoU {100 * m['miou']:.1f}, mean class acc {100 * m['mean_acc']:.1f}, "
          f"pixel acc {100 * m['pixel_acc']:.1f} over the labelled pixels; left out {100 * left_out / total:.1f} %")


if __name__ == "__main__":
    main()

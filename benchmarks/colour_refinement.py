"""How much do per-image colour models add to a weak model's tag-restricted prediction?

    python benchmarks/colour_refinement.py msrc21-lite2-fpn-weak-sec [MORE TEACHERS ...] --data ../shared/data/msrc21 \
        --split val.txt [--weights 0 1 2 3] [--rounds 3] [--bins 16] [--threads 2]

Each image of the split gets its tags from its label map (a class covering >= 1 % of the labelled pixels,
as ``structseg data tags`` writes them), so this scores what ``structseg data pseudo-labels`` would write for
those images: the network's scores (several networks: the log of their mean softmax, as for an ensemble
of teachers) with untagged classes excluded, plus ``weight`` x the image's colour
log-likelihood (:mod:`structseg.structured.colour_model`), with and without the dense CRF (Krähenbühl's
defaults) after it. Weight 0 is the plain tag-restricted argmax. Prints mIoU, mean class acc and pixel acc.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from structseg._io import load_image, load_label
from structseg.data.layout import read_classes, read_split
from structseg.data.tags import label_tags
from structseg.engine.metrics import ConfusionMatrix
from structseg.engine.pseudo_labels import load_teachers, teacher_scores
from structseg.engine.runtime import amp_dtype
from structseg.structured.colour_model import ColourModel
from structseg.structured.crf_postprocess import image_tensor
from structseg.structured.dense_crf import CRFParams
from structseg.structured.seed_expand_constrain import tag_restricted_marginals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="weak models: shipped names or runs' best.pt (several: an ensemble)")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val.txt")
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bins", type=int, default=16)
    p.add_argument("--min-share", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cpu = torch.device("cpu")
    models = load_teachers(a.checkpoints, cpu)
    classes = read_classes(a.data)
    k = classes.num_classes
    no_crf = CRFParams(iterations=1, smoothness_weight=0.0, appearance_weight=0.0)
    settings = [(w, crf) for w in a.weights for crf in (no_crf, CRFParams())]
    matrices = [ConfusionMatrix(k, classes.ignore_index) for _ in settings]
    for image_path, label_path in read_split(a.data, a.split):
        image, label = load_image(image_path), load_label(label_path).astype(np.int64)
        tags = torch.zeros(1, k)
        tags[0, list(label_tags(label, classes, a.min_share))] = 1.0
        logits = teacher_scores(models, image, cpu, amp_dtype("auto", cpu))
        rgb = image_tensor(image, cpu)
        for (w, crf), cm in zip(settings, matrices):
            colour = ColourModel(w, a.rounds, a.bins) if w > 0 else None
            q = tag_restricted_marginals(logits, rgb, tags, crf, colour)
            cm.update(q[0].argmax(0), torch.from_numpy(label))
    print(f"{' + '.join(a.checkpoints)} on {a.split} with each image's true tags; colour rounds {a.rounds}, bins {a.bins}")
    print("| colour weight | dense CRF | mIoU | mean class acc | pixel acc |\n|---|---|---|---|---|")
    for (w, crf), cm in zip(settings, matrices):
        m = cm.compute()
        print(f"| {w:g} | {'yes' if crf.appearance_weight else 'no'} | {100 * m['miou']:.1f} | "
              f"{100 * m['mean_acc']:.1f} | {100 * m['pixel_acc']:.1f} |")


if __name__ == "__main__":
    main()

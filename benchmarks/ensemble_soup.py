"""Do several runs of one network make independent errors? Each checkpoint scored alone, their softmax
outputs averaged (an ensemble), and their weights averaged (a uniform "model soup", meaningful for runs that
share their initialisation: the same pretrained encoder and the same seed for the decoder).

One pass over the split; whole-image inference on the CPU, as ``structseg eval`` does by default.

    python benchmarks/ensemble_soup.py CKPT CKPT [CKPT ...] [--data ../shared/data/msrc21] [--split val.txt]
"""
from __future__ import annotations

import argparse
import copy

import torch

from structseg.engine.evaluate import open_for_evaluation
from structseg.engine.inference import infer_logits
from structseg.engine.metrics import ConfusionMatrix, class_map


def weight_average(models: list[torch.nn.Module]) -> torch.nn.Module:
    """A copy of the first model holding the mean of all models' parameters and buffers (integer buffers,
    such as batch-norm counters, from the first)."""
    states = [m.state_dict() for m in models]
    mean = {}
    for key, value in states[0].items():
        mean[key] = (sum(s[key].double() for s in states) / len(states)).to(value.dtype) \
            if value.is_floating_point() else value
    soup = copy.deepcopy(models[0])
    soup.load_state_dict(mean)
    return soup.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", default="../shared/data/msrc21")
    ap.add_argument("--split", default="val.txt")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if len(a.checkpoints) < 2:
        ap.error("give at least two checkpoints")
    models, dataset = [], None
    for path in a.checkpoints:
        _, model, ds = open_for_evaluation(path, a.data, a.split)
        if dataset is not None and ds.classes.names != dataset.classes.names:
            ap.error(f"{path}: other classes than {a.checkpoints[0]}")
        dataset = dataset or ds
        models.append(model.float().eval())
    soup = weight_average(models)
    c, ignore = dataset.classes.num_classes, dataset.classes.ignore_index
    names = list(a.checkpoints) + ["ensemble (mean softmax)", "weight average (soup)"]
    cms = [ConfusionMatrix(c, ignore) for _ in names]
    device = torch.device("cpu")
    with torch.no_grad():
        for i in range(len(dataset)):
            image, label = dataset[i]
            probs = [infer_logits(m, image[None], device, None).softmax(1) for m in models]
            preds = [class_map(p)[0] for p in probs] + [class_map(sum(probs))[0],
                                                       class_map(infer_logits(soup, image[None], device, None))[0]]
            for cm, pred in zip(cms, preds):
                cm.update(pred, label)
    print(f"| model | {a.split} mIoU | mean class acc | pixel acc |\n|---|---|---|---|")
    for name, cm in zip(names, cms):
        r = cm.compute()
        print(f"| {name} | {100 * r['miou']:.1f} | {100 * r['mean_acc']:.1f} | {100 * r['pixel_acc']:.1f} |")


if __name__ == "__main__":
    main()

"""How much of a weak model's error is the wrong classes, and how much the wrong extents.

Scores a checkpoint on a split three ways from one pass of the network: as it is; with the argmax restricted
to the classes truly present in each image (an oracle: the image's true tags, an upper bound on what any
test-time class filter can give); and with two filters that need no labels, dropping classes that the
prediction covers on less than a share ``s`` of the image, or whose global weighted rank pooling
(the expand loss's pooling) is below ``t``.

    python benchmarks/weak_class_filter.py CHECKPOINT [--data ../shared/data/msrc21] [--split val.txt]
"""
from __future__ import annotations

import argparse

import torch

from structseg.engine.evaluate import open_for_evaluation
from structseg.engine.inference import infer_logits
from structseg.engine.metrics import ConfusionMatrix
from structseg.structured.seed_expand_constrain import SEC_PIXELS, gwrp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="../shared/data/msrc21")
    ap.add_argument("--split", default="val.txt")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    _, model, ds = open_for_evaluation(a.checkpoint, a.data, a.split)
    model.eval()
    k, ignore = ds.classes.num_classes, ds.classes.ignore_index
    outputs = []
    with torch.no_grad():
        for i in range(len(ds)):
            image, label = ds[i]
            outputs.append((infer_logits(model, image[None], torch.device("cpu"), None, None, False)[0].float(), label))

    def score(keep_of) -> dict:
        cm = ConfusionMatrix(k, ignore)
        for logits, label in outputs:
            pred = logits.masked_fill(~keep_of(logits, label)[:, None, None], -1e9).argmax(0)
            cm.update(pred[None], label[None])
        return cm.compute()

    def by_share(s):
        def keep(logits, _):
            share = torch.bincount(logits.argmax(0).flatten(), minlength=k).float() / logits[0].numel()
            out = share >= s
            out[share.argmax()] = True
            return out
        return keep

    def by_pooling(t, decay=0.996):
        def keep(logits, _):
            pooled = gwrp(torch.softmax(logits, 0)[None], decay ** (SEC_PIXELS / logits[0].numel()))[0]
            out = pooled >= t
            out[pooled.argmax()] = True
            return out
        return keep

    rows = {"as it is": score(lambda logits, _: torch.ones(k, dtype=torch.bool)),
            "oracle: the image's true classes": score(lambda _, lab: torch.bincount(lab[lab < k], minlength=k) > 0)}
    for s in (0.01, 0.05, 0.1, 0.2):
        rows[f"share >= {s}"] = score(by_share(s))
    for t in (0.1, 0.3, 0.5):
        rows[f"pooled >= {t}"] = score(by_pooling(t))
    print(f"{a.checkpoint} on {a.split} ({len(ds)} images)\n| classes kept | mIoU | mean class acc | pixel acc |\n"
          "|---|---|---|---|")
    for name, m in rows.items():
        print(f"| {name} | {100 * m['miou']:.1f} | {100 * m['mean_acc']:.1f} | {100 * m['pixel_acc']:.1f} |")


if __name__ == "__main__":
    main()

"""What a trained dual-decomposition layer contributes: val mIoU with the layer off, and at other settings.

    python benchmarks/dd_ablation.py RUN/best.pt --data ../shared/data/msrc21 [--split val.txt] [--threads 2]

For a checkpoint trained with ``model.crf: {kind: dual_decomposition}``, scores the split (whole images,
no TTA) with: the layer as trained; the layer off (the network's own stride-16 logits, upsampled as the
model upsamples its output: what the backbone and head learned alongside the layer); and inference-time
changes of the solver (iterations 1 / 10, gamma 1 / 4, the early stop off). Also prints the size of the
learned pairwise scores on the split (mean |P| and the mean spread max - min of a K x K table), next to
the unary logits' spread, to tell a layer that learned tables from one that stayed near its N(0, 1e-3)
start. Settings are changed only at inference: this is a diagnosis of one trained model, not a search.
"""
from __future__ import annotations

import argparse
import copy

import torch

from structseg.engine.evaluate import evaluate, open_for_evaluation
from structseg.engine.report import metrics_record
from structseg.structured.dual_decomposition_net import DualDecompositionNet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val.txt")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    _, model, dataset = open_for_evaluation(a.checkpoint, a.data, a.split)
    if not isinstance(model, DualDecompositionNet):
        raise SystemExit(f"{a.checkpoint}: not a model with the dual-decomposition layer")
    layer = model.crf
    trained = copy.deepcopy(layer.params)
    stats = {"pair_abs": [], "pair_spread": [], "unary_spread": []}
    original_forward = layer.forward

    def record(unary, features):
        tables = layer.pairwise(features.float(), layer.params.strides)
        for ph, pv in tables.values():
            for t in (ph, pv):
                stats["pair_abs"].append(t.abs().mean().item())
                stats["pair_spread"].append((t.amax((1, 2)) - t.amin((1, 2))).mean().item())
        stats["unary_spread"].append((unary.amax(1) - unary.amin(1)).mean().item())
        return original_forward(unary, features)

    def off(unary, features):
        return unary

    variants = [("the layer as trained", {}, record), ("the layer off (network logits)", {}, off),
                ("iterations 1", {"iterations": 1}, original_forward),
                ("iterations 10", {"iterations": 10}, original_forward),
                ("gamma 1", {"gamma": 1.0}, original_forward), ("gamma 4", {"gamma": 4.0}, original_forward),
                ("no early stop", {"tol": 1e9}, original_forward)]
    device = torch.device("cpu")
    print(f"{a.checkpoint} on {a.data}/{a.split}; trained with {trained}")
    print("| variant | mIoU | mean class acc | pixel acc |\n|---|---|---|---|")
    for name, change, forward in variants:
        layer.params = copy.deepcopy(trained)
        for k, v in change.items():
            setattr(layer.params, k, v)
        layer.forward = forward
        with torch.no_grad():
            rec = metrics_record(evaluate(model, dataset, device, progress=False), dataset.classes.names)
        print(f"| {name} | {100 * rec['miou']:.2f} | {100 * rec['mean_acc']:.2f} | {100 * rec['pixel_acc']:.2f} |",
              flush=True)
    mean = {k: sum(v) / len(v) for k, v in stats.items()}
    print(f"\npairwise scores on the split: mean |P| {mean['pair_abs']:.3f}, mean spread of a K x K table "
          f"{mean['pair_spread']:.3f}; unary logits' mean spread over classes {mean['unary_spread']:.2f}")


if __name__ == "__main__":
    main()

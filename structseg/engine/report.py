"""``structseg eval``: metrics of a checkpoint on a split, printed and saved with pictures."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ..data.dataset import SegmentationDataset
from ..data.io import atomic_path, check_output_dir, partial_dir, prepare_output_dir
from ..data.layout import ClassInfo
from ..data.transforms import EvalTransform
from ..errors import CheckpointError
from .checkpoint import checkpoint_classes, checkpoint_normalization, load_checkpoint, model_from_checkpoint
from ..structured.dense_crf import CRFParams
from ..structured.crf_postprocess import check_crf_for, crf_refiner
from .evaluate import Refiner, evaluate, predict_logits
from .metrics import ConfusionMatrix, class_map
from .runtime import amp_dtype, pick_device


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def metrics_record(cm: ConfusionMatrix, names: list[str]) -> dict:
    """The ``metrics.json`` content: summary fractions, per-class dicts and the confusion matrix."""
    m = cm.compute()
    return {
        "miou": _clean(m["miou"]), "mean_acc": _clean(m["mean_acc"]), "pixel_acc": _clean(m["pixel_acc"]),
        "per_class_iou": {n: _clean(v) for n, v in zip(names, m["iou"])},
        "per_class_acc": {n: _clean(v) for n, v in zip(names, m["acc"])},
        "confusion": cm.matrix.tolist(),
    }


def format_table(record: dict) -> str:
    lines = [f"{'class':<16} {'IoU':>7} {'acc':>7}"]
    for name, iou in record["per_class_iou"].items():
        acc = record["per_class_acc"][name]
        fmt = lambda v: f"{100 * v:6.2f}" if v is not None else "   n/a"  # noqa: E731
        lines.append(f"{name:<16} {fmt(iou):>7} {fmt(acc):>7}")
    lines.append("-" * 32)
    for key, label in (("miou", "mIoU"), ("mean_acc", "mean class acc"), ("pixel_acc", "pixel acc")):
        v = record[key]
        lines.append(f"{label:<16} {100 * v:7.2f}" if v is not None else f"{label:<16}     n/a")
    return "\n".join(lines)


def load_for_dataset(checkpoint: str | Path, dataset_classes: ClassInfo) -> tuple[dict, torch.nn.Module]:
    """Load a checkpoint and check it predicts the dataset's classes."""
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, checkpoint, num_classes=dataset_classes.num_classes)
    names = checkpoint_classes(ckpt).names
    if names != dataset_classes.names:
        raise CheckpointError(f"{checkpoint}: trained on classes {list(names)}, but the dataset has "
                              f"{list(dataset_classes.names)}")
    return ckpt, model


def evaluate_checkpoint(checkpoint: str | Path, root: str | Path, split: str, out: str | Path | None = None,
                        panels: int = 4, progress: bool = True, crf: CRFParams | None = None,
                        amp: str = "auto") -> dict:
    """Evaluate ``checkpoint`` on ``ROOT/SPLIT``; print the table; write metrics and pictures to ``out``.

    ``crf`` refines every prediction with a dense CRF (post-processing) before scoring.
    """
    if out is not None:  # before scoring the whole split, not after
        check_output_dir(out, "eval output folder")
    dataset = SegmentationDataset(root, split, cache=False)
    ckpt, model = load_for_dataset(checkpoint, dataset.classes)
    if crf is not None:
        check_crf_for(crf, dataset.classes.num_classes)
    dataset.transform = EvalTransform(*checkpoint_normalization(ckpt, checkpoint))
    device = pick_device()
    dtype = amp_dtype(amp, device)
    model.to(device).eval()
    refine = crf_refiner(crf) if crf is not None else None
    cm = evaluate(model, dataset, device, dtype, progress=progress, desc=f"eval {split}", refine=refine)
    names = list(dataset.classes.names)
    record = {"checkpoint": str(checkpoint), "data": str(root), "split": split, "num_images": len(dataset),
              "crf": dataclasses.asdict(crf) if crf is not None else None, **metrics_record(cm, names)}
    print(format_table(record))
    if out is not None:
        write_eval_outputs(record, dataset, model, device, dtype, Path(out), panels, refine)
        print(f"wrote {Path(out) / 'metrics.json'}, confusion.png, per_class_iou.png, panels/")
    return record


def write_eval_outputs(record: dict, dataset: SegmentationDataset, model, device, dtype, out: Path,
                       panels: int, refine: Refiner | None = None) -> None:
    """Build every output in a hidden partial folder, then move them into ``out`` (``metrics.json`` last),
    so a killed evaluation never leaves pictures of one run beside the metrics of another."""
    prepare_output_dir(out, "eval output folder")
    final = out
    out = partial_dir(final)
    try:
        _write_eval_files(record, dataset, model, device, dtype, out, panels, refine)
        if (out / "panels").is_dir():
            shutil.rmtree(final / "panels", ignore_errors=True)
        for name in ("confusion.png", "per_class_iou.png", "panels", "metrics.json"):
            if (out / name).exists():
                os.replace(out / name, final / name)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _write_eval_files(record: dict, dataset: SegmentationDataset, model, device, dtype, out: Path,
                      panels: int, refine: Refiner | None) -> None:
    from ..viz.overlay import panel
    from ..viz.plots import class_bars, confusion_heatmap
    names = list(dataset.classes.names)
    confusion_heatmap(np.array(record["confusion"]), names, out / "confusion.png")
    class_bars(names, [v if v is not None else float("nan") for v in record["per_class_iou"].values()],
               out / "per_class_iou.png", title=f"per-class IoU (mIoU {100 * (record['miou'] or 0):.1f})")
    if panels > 0:
        (out / "panels").mkdir(exist_ok=True)
        for i in np.linspace(0, len(dataset) - 1, min(panels, len(dataset))).round().astype(int):
            image, label = dataset.load(int(i))
            x, _ = dataset[int(i)]
            scores = predict_logits(model, x[None], device, dtype)
            pred = class_map(refine(scores, image) if refine else scores)[0].cpu().numpy()
            panel(image, label, pred, dataset.classes.palette, dataset.classes.ignore_index,
                  out / "panels" / f"{dataset.pairs[i][0].stem}.png")
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")

"""``structseg eval``: metrics of a checkpoint on a split, printed and saved with pictures."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from .._io import atomic_path, check_output_dir, display_rgb, partial_dir, prepare_output_dir
from ..data.dataset import SegmentationDataset
from ..structured.crf_postprocess import check_crf_for, crf_refiner
from ..structured.dense_crf import CRFParams
from .evaluate import Refiner, evaluate, open_for_evaluation
from .inference import InferenceSettings, infer_logits
from .metrics import BoundaryF, ConfusionMatrix, class_map
from .runtime import amp_dtype, pick_device


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def metrics_record(cm: ConfusionMatrix, names: list[str]) -> dict:
    """The ``metrics.json`` content: summary fractions, per-class dicts and the confusion matrix."""
    m = cm.compute()
    return {
        "miou": _clean(m["miou"]), "mean_acc": _clean(m["mean_acc"]), "pixel_acc": _clean(m["pixel_acc"]),
        "mean_dice": _clean(m["mean_dice"]), "fwiou": _clean(m["fwiou"]),
        "per_class_iou": {n: _clean(v) for n, v in zip(names, m["iou"])},
        "per_class_acc": {n: _clean(v) for n, v in zip(names, m["acc"])},
        "per_class_precision": {n: _clean(v) for n, v in zip(names, m["precision"])},
        "per_class_dice": {n: _clean(v) for n, v in zip(names, m["dice"])},
        "confusion": cm.matrix.tolist(),
    }


BOUNDARY_TOLERANCE = 2  # pixels: the band of the boundary F-score in eval's metrics.json

SUMMARY_METRICS = (("miou", "mIoU"), ("mean_acc", "mean class acc"), ("pixel_acc", "pixel acc"))


def _percent(v: float | None, width: int = 0) -> str:
    return f"{100 * v:{width}.2f}" if v is not None else f"{'n/a':>{width}}"


def summary_table(rows: list[tuple[str, dict]], label: str = "method", extra: tuple[tuple[str, str], ...] = ()) -> str:
    """The one summary table (Markdown): per row a label, mIoU, mean class acc and pixel acc in percent, then
    ``extra`` columns ``(key, heading)`` taken from the row's dict as they are."""
    heads = [label] + [h for _, h in SUMMARY_METRICS] + [h for _, h in extra]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name, m in rows:
        cells = [name] + [_percent(m.get(k)) for k, _ in SUMMARY_METRICS]
        cells += [f"{m[k]:.3f}" if isinstance(m.get(k), float) else str(m.get(k, "")) for k, _ in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(record: dict) -> str:
    """Per-class IoU and accuracy of one ``metrics.json`` record, then its three summary metrics."""
    columns = [("per_class_iou", "IoU"), ("per_class_acc", "acc"), ("per_class_precision", "prec"),
               ("per_class_dice", "Dice")]
    columns = [(k, h) for k, h in columns if k in record]
    lines = [f"{'class':<16} " + " ".join(f"{h:>7}" for _, h in columns)]
    for name in record["per_class_iou"]:
        lines.append(f"{name:<16} " + " ".join(_percent(record[k][name], 7) for k, _ in columns))
    lines.append("-" * (17 + 8 * len(columns)))
    for key, label in SUMMARY_METRICS + (("mean_dice", "mean Dice (F1)"), ("fwiou", "fw IoU"),
                                         ("boundary_f", "boundary F")):
        if key in record:
            lines.append(f"{label:<16} {_percent(record[key], 7)}")
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint: str | Path, root: str | Path, split: str, out: str | Path | None = None,
                        panels: int = 4, progress: bool = True, crf: CRFParams | None = None,
                        amp: str = "auto", inference: InferenceSettings | None = None) -> dict:
    """Evaluate ``checkpoint`` on ``ROOT/SPLIT``; print the table; write metrics and pictures to ``out``.

    ``crf`` refines every prediction with a dense CRF (post-processing) before scoring.
    """
    if out is not None:  # before scoring the whole split, not after
        check_output_dir(out, "eval output folder")
    ckpt, model, dataset = open_for_evaluation(checkpoint, root, split)
    if crf is not None:
        check_crf_for(crf, dataset.classes.num_classes, dataset.channels)
    device = pick_device()
    dtype = amp_dtype(amp, device)
    model.to(device).eval()
    refine = crf_refiner(crf) if crf is not None else None
    boundary = BoundaryF(dataset.classes.ignore_index, BOUNDARY_TOLERANCE)
    cm = evaluate(model, dataset, device, dtype, progress=progress, desc=f"eval {split}", refine=refine,
                  inference=inference, boundary=boundary)
    names = list(dataset.classes.names)
    record = {"checkpoint": str(checkpoint), "data": str(root), "split": split, "num_images": len(dataset),
              "crf": dataclasses.asdict(crf) if crf is not None else None,
              "inference": dataclasses.asdict(inference) if inference is not None else None,
              **metrics_record(cm, names), **{k: _clean(v) for k, v in boundary.compute().items()}}
    print(format_table(record))
    if out is not None:
        write_eval_outputs(record, dataset, model, device, dtype, Path(out), panels, refine, inference)
        print(f"wrote {Path(out) / 'metrics.json'}, confusion.png, per_class_iou.png, panels/")
    return record


def write_eval_outputs(record: dict, dataset: SegmentationDataset, model, device, dtype, out: Path,
                       panels: int, refine: Refiner | None = None, inference: InferenceSettings | None = None) -> None:
    """Build every output in a hidden partial folder, then move them into ``out`` (``metrics.json`` last),
    so a killed evaluation never leaves pictures of one run beside the metrics of another."""
    prepare_output_dir(out, "eval output folder")
    final = out
    out = partial_dir(final)
    try:
        _write_eval_files(record, dataset, model, device, dtype, out, panels, refine, inference)
        if (out / "panels").is_dir():
            shutil.rmtree(final / "panels", ignore_errors=True)
        for name in ("confusion.png", "per_class_iou.png", "panels", "metrics.json"):
            if (out / name).exists():
                os.replace(out / name, final / name)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _write_eval_files(record: dict, dataset: SegmentationDataset, model, device, dtype, out: Path,
                      panels: int, refine: Refiner | None, inference: InferenceSettings | None) -> None:
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
            scores = infer_logits(model, x[None], device, dtype, inference)
            pred = class_map(refine(scores, image) if refine else scores)[0].cpu().numpy()
            panel(display_rgb(image), label, pred, dataset.classes.palette, dataset.classes.ignore_index,
                  out / "panels" / f"{dataset.pairs[i][0].stem}.png")
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")

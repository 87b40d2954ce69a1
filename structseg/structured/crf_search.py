"""``structseg crf search``: grid search of the dense-CRF kernel weights and widths on a split.

The network runs once per image (its logits are kept in half precision); then every setting of
the grid is scored by one confusion matrix over the split, as DeepLab tuned its CRF on val.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

from tqdm import tqdm

from ..data.dataset import SegmentationDataset
from ..data.io import atomic_path
from ..data.transforms import EvalTransform
from ..engine.evaluate import predict_logits
from ..engine.metrics import ConfusionMatrix, class_map
from ..engine.report import load_for_dataset
from ..engine.runtime import amp_dtype, pick_device
from ..errors import ConfigError
from .dense_crf import CRFParams
from .crf_postprocess import crf_refiner, save_crf_params

DEFAULT_GRID = {"appearance_weight": [3.0, 5.0, 10.0], "appearance_xy": [30.0, 50.0, 80.0],
                "appearance_rgb": [3.0, 5.0, 13.0]}


def parse_grid(items: list[str] | None) -> dict[str, list]:
    """``["appearance_xy=30,50", ...]`` -> ``{"appearance_xy": [30.0, 50.0]}``; defaults fill the rest."""
    grid = dict(DEFAULT_GRID)
    fields = {f.name: f.type for f in dataclasses.fields(CRFParams)}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,...")
        key, values = item.split("=", 1)
        if key not in fields:
            raise ConfigError(f"--grid: unknown CRF setting {key!r}; known: {', '.join(fields)}")
        cast = int if key == "iterations" else float
        try:
            grid[key] = [cast(v) for v in values.split(",") if v]
        except ValueError:
            raise ConfigError(f"--grid {item!r}: values must be numbers") from None
    return grid


def search_crf(checkpoint: str | Path, root: str | Path, split: str, grid: dict[str, list],
               base: CRFParams | None = None, limit: int | None = None, progress: bool = True) -> dict:
    """Score every combination of ``grid`` (on top of ``base``); ``results`` sorted by mIoU, best first.

    The report's ``baseline`` holds the network's own metrics (no CRF) on the same images.
    """
    dataset = SegmentationDataset(root, split, cache=False)
    ckpt, model = load_for_dataset(checkpoint, dataset.classes)
    norm = ckpt["normalization"]
    dataset.transform = EvalTransform(tuple(norm["mean"]), tuple(norm["std"]))
    device = pick_device()
    dtype = amp_dtype("auto", device)
    model.to(device).eval()
    indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    cached = []
    base_cm = ConfusionMatrix(dataset.classes.num_classes, dataset.classes.ignore_index)
    for i in tqdm(indices, desc="network", unit="img", disable=not progress, leave=False):
        x, label = dataset[i]
        logits = predict_logits(model, x[None], device, dtype)
        base_cm.update(class_map(logits)[0].cpu(), label)
        cached.append((logits.half().cpu(), dataset.load(i)[0], label))
    base = base or CRFParams()
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys)))
    results = []
    bar = tqdm(total=len(combos) * len(cached), desc="crf grid", unit="img", disable=not progress)
    for values in combos:
        params = dataclasses.replace(base, **dict(zip(keys, values)))
        params.validate()
        refine = crf_refiner(params)
        cm = ConfusionMatrix(dataset.classes.num_classes, dataset.classes.ignore_index)
        for logits, image, label in cached:
            cm.update(class_map(refine(logits.float().to(device), image))[0].cpu(), label)
            bar.update(1)
        m = cm.compute()
        results.append({"params": dataclasses.asdict(params),
                        **{k: m[k] for k in ("miou", "mean_acc", "pixel_acc")}})
        bar.set_postfix(best=f"{max(r['miou'] for r in results):.4f}")
    bar.close()
    results.sort(key=lambda r: -r["miou"])
    b = base_cm.compute()
    baseline = {k: b[k] for k in ("miou", "mean_acc", "pixel_acc")}
    return {"baseline": baseline, "num_images": len(cached), "grid": grid, "results": results}


def run_search(checkpoint, root, split, out: str | Path, grid_items: list[str] | None = None,
               base: CRFParams | None = None, limit: int | None = None, progress: bool = True) -> dict:
    """Search, print the table, write the best setting to ``out`` (YAML) and all results beside it (JSON)."""
    report = search_crf(checkpoint, root, split, parse_grid(grid_items), base, limit, progress)
    keys = list(report["grid"])
    print(f"{'mIoU':>7} {'acc':>7} {'pix':>7}  " + "  ".join(keys))
    b = report["baseline"]
    print(f"{100 * b['miou']:7.2f} {100 * b['mean_acc']:7.2f} {100 * b['pixel_acc']:7.2f}  (no CRF)")
    for r in report["results"][:10]:
        print(f"{100 * r['miou']:7.2f} {100 * r['mean_acc']:7.2f} {100 * r['pixel_acc']:7.2f}  " +
              "  ".join(f"{r['params'][k]:g}" for k in keys))
    out = Path(out)
    best = CRFParams(**report["results"][0]["params"])
    save_crf_params(best, out)
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"checkpoint": str(checkpoint), "data": str(root), "split": split, **report},
                                  indent=1) + "\n")
    print(f"best setting written to {out} (all results: {out.with_suffix('.json')}); "
          f"use it with: structseg eval CHECKPOINT ... --crf {out}")
    return report

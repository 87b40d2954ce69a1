"""``structseg crf search``: grid search of the dense-CRF kernel weights and widths on a split.

The network runs once per image (its logits are kept in half precision); then every setting of
the grid is scored by one confusion matrix over the split, as DeepLab tuned its CRF on val.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import torch
from tqdm import tqdm

from .._io import atomic_path, prepare_output_file
from ..engine.evaluate import open_for_evaluation
from ..engine.inference import forward_logits
from ..engine.metrics import ConfusionMatrix, class_map
from ..engine.report import summary_table
from ..engine.runtime import amp_dtype, pick_device
from ..errors import ConfigError
from ..structured.crf_postprocess import image_tensor, save_crf_params
from ..structured.dense_crf import (
    LATTICE_SETTINGS,
    CRFParams,
    mean_field,
    message_operator,
)

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
            grid[key] = [cast(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--grid {item!r}: values must be numbers") from None
        if not grid[key]:
            raise ConfigError(f"--grid {item!r}: no values given; expected KEY=V1,V2,...")
    return grid


def search_crf(checkpoint: str | Path, root: str | Path, split: str, grid: dict[str, list],
               base: CRFParams | None = None, limit: int | None = None, progress: bool = True) -> dict:
    """Score every combination of ``grid`` (on top of ``base``); ``results`` sorted by mIoU, best first.

    The report's ``baseline`` holds the network's own metrics (no CRF) on the same images.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: expected a positive number of images")
    _, model, dataset = open_for_evaluation(checkpoint, root, split)
    base = base or CRFParams()
    keys = list(grid)
    combos = [dataclasses.replace(base, **dict(zip(keys, values))) for values in itertools.product(*grid.values())]
    for params in combos:  # every setting checked before the network runs
        try:
            params.validate(dataset.classes.num_classes)
        except ValueError as e:
            raise ConfigError(f"crf search: {e}") from None
    device = pick_device()
    dtype = amp_dtype("auto", device)
    model.to(device).eval()
    indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    cached = []
    base_cm = ConfusionMatrix(dataset.classes.num_classes, dataset.classes.ignore_index)
    for i in tqdm(indices, desc="network", unit="img", disable=not progress, leave=False):
        x, label = dataset[i]
        logits = forward_logits(model, x[None], device, dtype)
        base_cm.update(class_map(logits)[0].cpu(), label)
        cached.append((logits.half().cpu(), dataset.load(i)[0], label))
    if base_cm.matrix.sum() == 0:
        raise ConfigError(f"{root}/{split}: every label pixel of the {len(cached)} image(s) searched is the ignore "
                          "index; there is nothing to score the CRF on")
    # combos that differ only in weights or iterations share one pair of lattices per image
    groups: dict[tuple, list[int]] = {}
    for k, params in enumerate(combos):
        groups.setdefault(tuple(getattr(params, name) for name in LATTICE_SETTINGS), []).append(k)
    cms = [ConfusionMatrix(dataset.classes.num_classes, dataset.classes.ignore_index) for _ in combos]
    bar = tqdm(total=len(combos) * len(cached), desc="crf grid", unit="img", disable=not progress)
    for logits, image, label in cached:
        unary = -torch.log_softmax(logits.float().to(device), 1)
        img = image_tensor(image, device)
        for members in groups.values():
            op = message_operator(img, combos[members[0]])
            for k in members:
                q = mean_field(unary, img, combos[k], combos[k].compatibility_tensor(), operator=op)
                cms[k].update(class_map(q)[0].cpu(), label)
                bar.update(1)
    bar.close()
    results = []
    for params, cm in zip(combos, cms):
        m = cm.compute()
        results.append({"params": dataclasses.asdict(params), **{k: m[k] for k in ("miou", "mean_acc", "pixel_acc")}})
    results.sort(key=lambda r: -r["miou"])
    b = base_cm.compute()
    baseline = {k: b[k] for k in ("miou", "mean_acc", "pixel_acc")}
    return {"baseline": baseline, "num_images": len(cached), "grid": grid, "results": results}


def run_search(checkpoint, root, split, out: str | Path, grid_items: list[str] | None = None,
               base: CRFParams | None = None, limit: int | None = None, progress: bool = True) -> dict:
    """Search, print the table, write the best setting to ``out`` (YAML) and all results beside it (JSON)."""
    out = prepare_output_file(out, "CRF settings file")  # before the network runs, not after
    report = search_crf(checkpoint, root, split, parse_grid(grid_items), base, limit, progress)
    keys = list(report["grid"])
    b = report["baseline"]
    rows = [("no CRF", b)] + [(", ".join(f"{k} {r['params'][k]:g}" for k in keys), r) for r in report["results"][:10]]
    print(summary_table(rows, "setting"))
    best = CRFParams(**report["results"][0]["params"])
    report["best_beats_baseline"] = report["results"][0]["miou"] > b["miou"]
    save_crf_params(best, out)
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"checkpoint": str(checkpoint), "data": str(root), "split": split, **report},
                                  indent=1) + "\n")
    print(f"best setting written to {out} (all results: {out.with_suffix('.json')}); "
          f"use it with: structseg eval CHECKPOINT ... --crf {out}")
    if not report["best_beats_baseline"]:
        print(f"note: no setting beats the network alone (best mIoU {100 * report['results'][0]['miou']:.2f} vs "
              f"{100 * b['miou']:.2f} without CRF); the CRF is not recommended for this model on {split}")
    return report

"""``structseg dae validate | test | compare``: iterative inference with a trained DAE, scored on a split.

``validate`` scores every step size for up to N iterations and chooses the best (step, iterations >= 1);
``test`` applies a chosen pair and writes ``metrics.json`` as ``structseg eval`` does; ``compare`` puts the
base network, one DAE pass, iterative inference and the dense CRF side by side.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from tqdm import tqdm

from ..._io import atomic_path, check_output_dir, prepare_output_dir
from ...config import read_yaml
from ...data.dataset import equal_size_batches
from ...engine.evaluate import checkpoint_dataset
from ...engine.metrics import ConfusionMatrix, class_map
from ...engine.report import (
    format_table,
    metrics_record,
    summary_table,
    write_eval_outputs,
)
from ...engine.runtime import amp_dtype, autocast, pick_device
from ...errors import ConfigError
from ...structured.crf_postprocess import crf_refiner
from ...structured.dae import iterative_inference
from ...viz.plots import line_chart
from .loading import load_dae

STEPS = (0.01, 0.02, 0.05, 0.08, 0.1, 0.5, 1.0)  # the released validation grid


def _open(dae_path, segmenter, root, split):
    """``(cfg, segmenter, dae, dataset, device, dtype)`` for scoring a DAE on ``ROOT/SPLIT``."""
    device = pick_device()
    cfg, seg_ckpt, seg, dae = load_dae(dae_path, segmenter, device)
    ds = checkpoint_dataset(seg_ckpt, segmenter or dae_path, root, split, cache=True)
    return cfg, seg, dae, ds, device, amp_dtype(cfg.train_dict.amp, device)


def choose(table: dict[float, list[float]]) -> tuple[float, int]:
    """The (step, iterations >= 1) with the highest mIoU; ties go to fewer iterations, then the smaller step."""
    best = max(((miou, -it, -step) for step, row in table.items() for it, miou in enumerate(row) if it >= 1),
               default=None)
    if best is None:
        raise ValueError("no iteration to choose from")
    return -best[2], -best[1]


def validate_dae(dae_path: str | Path, root: str | Path, split: str, out: str | Path,
                 steps: tuple[float, ...] = STEPS, max_iterations: int = 50, segmenter: str | None = None,
                 progress: bool = True) -> dict:
    out = prepare_output_dir(out, "validation output folder")  # before any scoring
    cfg, seg, dae, ds, device, dtype = _open(dae_path, segmenter, root, split)
    classes, ignore = ds.classes.num_classes, ds.classes.ignore_index
    # each finished step is saved at once, so an interrupted validation resumes where it stopped
    progress_file = out / "validate_steps.json"
    run_key = {"dae": str(dae_path), "data": str(root), "split": split, "max_iterations": max_iterations,
               "segmenter": None if segmenter is None else str(segmenter)}
    table: dict[float, list[float]] = {}
    try:
        saved = json.loads(progress_file.read_text()) if progress_file.exists() else {}
        if saved.get("run") == run_key:
            table = {float(k): v for k, v in saved["table"].items() if float(k) in steps}
    except (ValueError, KeyError, AttributeError, TypeError):  # damaged by hand: score every step again
        table = {}
    if table and progress:
        print(f"resuming: steps {', '.join(map(str, table))} already scored ({progress_file})", flush=True)
    for step in steps:
        if step in table:
            continue
        cms = [ConfusionMatrix(classes, ignore) for _ in range(max_iterations + 1)]
        for x, label, _ in tqdm(list(equal_size_batches(ds, range(len(ds)), cfg.train_dict.batch_size[1])),
                                desc=f"step {step}", unit="batch", disable=not progress, leave=False):
            with autocast(device, dtype):
                y0, h = seg(x.to(device))
                cms[0].update(class_map(y0).cpu(), label)
                iterative_inference(dae, y0, h, step, max_iterations,
                                    on_iteration=lambda i, y, lab=label: cms[i].update(class_map(y).cpu(), lab))
        table[step] = [cm.compute()["miou"] for cm in cms]
        with atomic_path(progress_file) as tmp:
            tmp.write_text(json.dumps({"run": run_key, "table": {str(k): v for k, v in table.items()}}))
        if progress:
            it = int(np.argmax(table[step][1:])) + 1
            print(f"step {step}: base {table[step][0]:.4f}, best {table[step][it]:.4f} after {it} iterations", flush=True)
    table = {step: table[step] for step in steps}
    step, iterations = choose(table)
    result = {"dae": str(dae_path), "data": str(root), "split": split, "base_miou": table[steps[0]][0],
              "table": {str(k): v for k, v in table.items()}, "step": step, "iterations": iterations,
              "miou": table[step][iterations]}
    with atomic_path(out / "validate.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    with atomic_path(out / "chosen.yaml") as tmp:
        tmp.write_text(yaml.safe_dump({"step": step, "iterations": iterations}))
    its = list(range(max_iterations + 1))
    line_chart({f"step {s}": (its, table[s]) for s in steps}, out / "miou_per_iteration.png",
               f"{split}: mIoU per iteration (iteration 0 = base network)")
    return result


def read_chosen(path: str | Path) -> tuple[float, int]:
    data = read_yaml(path, "chosen step/iterations file")
    try:
        step, iterations = float(data["step"]), int(data["iterations"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: expected 'step: <number>' and 'iterations: <integer>'") from None
    if step <= 0 or iterations < 1:
        raise ConfigError(f"{path}: step must be > 0 and iterations >= 1")
    return step, iterations


def _score(dae_path, root, split, segmenter, methods: dict[str, Callable], progress: bool, batch_index: int = 2):
    """Confusion matrices of several refinements of the base probabilities, in one pass over the split."""
    cfg, seg, dae, ds, device, dtype = _open(dae_path, segmenter, root, split)
    cms = {k: ConfusionMatrix(ds.classes.num_classes, ds.classes.ignore_index) for k in methods}
    t0 = {k: 0.0 for k in methods}
    for x, label, idx in tqdm(list(equal_size_batches(ds, range(len(ds)), cfg.train_dict.batch_size[batch_index])),
                              desc="scoring", unit="batch", disable=not progress, leave=False):
        with autocast(device, dtype):
            y0, h = seg(x.to(device))
        for name, fn in methods.items():
            start = time.perf_counter()
            with autocast(device, dtype):
                y = fn(dae, y0, h, ds, idx)
            t0[name] += time.perf_counter() - start
            cms[name].update(class_map(y).cpu(), label)
    return ds, cms, t0


def apply_dae(dae_path: str | Path, root: str | Path, split: str, step: float, iterations: int,
             out: str | Path | None = None, segmenter: str | None = None, progress: bool = True) -> dict:
    if out is not None:
        check_output_dir(out, "test output folder")  # before scoring the whole split, not after
    ds, cms, _ = _score(dae_path, root, split, segmenter,
                        {"it": lambda dae, y0, h, ds, idx: iterative_inference(dae, y0, h, step, iterations)}, progress)
    record = {"dae": str(dae_path), "data": str(root), "split": split, "num_images": len(ds), "step": step,
              "iterations": iterations, **metrics_record(cms["it"], list(ds.classes.names))}
    print(format_table(record))
    if out is not None:
        write_eval_outputs(record, ds, None, None, None, Path(out), panels=0)
    return record


def compare_dae(dae_path: str | Path, root: str | Path, split: str, step: float, iterations: int,
            crf=None, out: str | Path | None = None, segmenter: str | None = None, progress: bool = True) -> list[dict]:
    """One table: base, + one DAE pass (step 1, one iteration), + iterative inference, + dense CRF."""
    if out is not None:
        check_output_dir(out, "comparison output folder")  # before scoring, not after
    methods: dict[str, Callable] = {
        "base network": lambda dae, y0, h, ds, idx: y0,
        "+ DAE, one pass": lambda dae, y0, h, ds, idx: iterative_inference(dae, y0, h, 1.0, 1),
        f"+ iterative inference (step {step}, {iterations} it.)":
            lambda dae, y0, h, ds, idx: iterative_inference(dae, y0, h, step, iterations),
    }
    if crf is not None:
        refine = crf_refiner(crf)

        def dense_crf(dae, y0, h, ds, idx):
            with torch.autocast(y0.device.type, enabled=False):  # the CRF runs in float32, as in eval
                return torch.cat([refine(torch.log(y0[k:k + 1].clamp(min=1e-8)), ds.load(i)[0])
                                  for k, i in enumerate(idx)])
        methods[f"+ dense CRF ({crf.iterations} it.)"] = dense_crf
    ds, cms, seconds = _score(dae_path, root, split, segmenter, methods, progress)
    rows = []
    for name, cm in cms.items():
        m = cm.compute()
        rows.append({"method": name, "miou": m["miou"], "mean_acc": m["mean_acc"], "pixel_acc": m["pixel_acc"],
                     "seconds_per_image": seconds[name] / len(ds)})
    table = summary_table([(r["method"], r) for r in rows], extra=(("seconds_per_image", "s / image"),))
    lines = [f"{split} ({len(ds)} images)", table]
    print("\n".join(lines))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "compare.json") as tmp:
            tmp.write_text(json.dumps(rows, indent=1))
        with atomic_path(out / "compare.md") as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    return rows

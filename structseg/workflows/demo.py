"""``structseg demo``: the whole pipeline on built-in synthetic data in about two minutes.

Writes a synthetic dataset, trains a small U-Net for a time budget (epochs estimated from a
short timing of training steps), evaluates it on the validation split, segments a few images
and prints the mIoU and where the pictures are.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import config_from_dict
from ..data.synth import write_synthetic
from ..engine.predict import predict_paths
from ..engine.report import evaluate_checkpoint
from ..engine.trainer import train
from ..models import create_model

DEMO_CONFIG = {
    "model": {"name": "unet", "args": {"base_channels": 16, "depth": 3}},
    "data": {"workers": 0},
    "augment": {"scale": [0.75, 1.25], "crop_size": [96, 96]},
    "optimizer": {"name": "adamw", "lr": 0.004, "weight_decay": 0.01},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "train": {"batch_size": 8, "val_every": 5, "seed": 0},
}


def _seconds_per_epoch(cfg, n_train: int) -> float:
    """Time a few training steps of the configured model to size the epoch count."""
    model = create_model(cfg.model.name, 5, **cfg.model.args).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters())
    h, w = cfg.augment.crop_size
    x = torch.randn(cfg.train.batch_size, 3, h, w).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (cfg.train.batch_size, h, w))
    times = []
    for _ in range(4):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return min(times[1:]) * (n_train // cfg.train.batch_size) * 1.15  # +15 % for data and logging


def train_within(cfg, run: Path, deadline: float) -> dict:
    """Train in chunks of ``val_every`` epochs (each chunk ends validated, each call resumes the run) and stop
    after the chunk that passes ``deadline``: the epoch estimate was made on a machine that may get busy."""
    done = 0
    while True:
        summary = train(cfg, run, stop_after_epochs=cfg.train.val_every)
        done = min(done + cfg.train.val_every, cfg.train.epochs)
        if done >= cfg.train.epochs:
            return summary
        if time.time() > deadline and summary["best_checkpoint"]:
            print(f"time budget reached after {done} of {cfg.train.epochs} epochs; evaluating the best so far")
            return summary


def run_demo(out: Path, minutes: float = 2.0, n_images: int = 240) -> dict:
    out = Path(out)
    data = out / "data"
    if not (data / "classes.json").exists():
        print(f"[1/4] writing {n_images} synthetic images to {data}")
        write_synthetic(data, n=n_images, seed=0, progress=True)
    else:
        print(f"[1/4] using the synthetic dataset in {data}")
    cfg = config_from_dict({**DEMO_CONFIG, "data": {**DEMO_CONFIG["data"], "root": str(data)}})
    n_train = len((data / "train.txt").read_text().splitlines())
    epochs = max(5, int(minutes * 60 / _seconds_per_epoch(cfg, n_train)))
    cfg.train.epochs = epochs
    run = out / "run"
    print(f"[2/4] training a U-Net ({epochs} epochs, about {minutes:g} min) in {run}")
    deadline = time.time() + minutes * 60 * 1.25
    summary = train_within(cfg, run, deadline)
    print(f"[3/4] evaluating {summary['best_checkpoint']} on the validation split")
    record = evaluate_checkpoint(summary["best_checkpoint"], data, "val.txt", out / "eval", panels=4)
    val_images = [data / ln.split()[0] for ln in (data / "val.txt").read_text().splitlines()[:4]]
    print("[4/4] segmenting 4 validation images")
    predict_paths(summary["best_checkpoint"], val_images, out / "predictions")
    print(f"\nval mIoU {record['miou']:.3f}, mean class accuracy {record['mean_acc']:.3f}, "
          f"pixel accuracy {record['pixel_acc']:.3f}  (chance is about {1 / 5:.2f} mIoU)")
    print("pictures:")
    print(f"  training curves   {run / 'curves.png'}")
    print(f"  confusion matrix  {out / 'eval' / 'confusion.png'}")
    print(f"  per-class IoU     {out / 'eval' / 'per_class_iou.png'}")
    print(f"  panels            {out / 'eval' / 'panels'}/ (image | truth | prediction)")
    print(f"  overlays          {out / 'predictions' / 'overlays'}/")
    return record

"""``structseg dae train``: the conditional DAE learns to denoise the frozen segmenter's probabilities.

One epoch: shuffled crops of the training split, the segmenter's softmax (or the one-hot truth with
``from_gt``) corrupted with Gaussian noise, CE + lmb * squared error against the truth. Validation loss
on whole images decides ``best.pt`` and early stopping; ``last.pt`` resumes an interrupted run.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..._io import remove_stale_temporaries
from ...data.dataset import equal_size_batches
from ...data.transforms import TrainTransform
from ...engine.checkpoint import (
    checkpoint_normalization,
    load_checkpoint,
    save_checkpoint,
)
from ...engine.evaluate import checkpoint_dataset
from ...engine.metrics import ConfusionMatrix, class_map
from ...engine.run_log import RunLog
from ...engine.runtime import amp_dtype, autocast, pick_device, set_threads
from ...errors import ConfigError
from ...structured.dae import ConditionalDAE, corrupt, dae_loss
from .config import DAERunConfig, TrainDict
from .loading import load_segmenter, segmenter_ref


def _optimizer(params, t: TrainDict) -> torch.optim.Optimizer:
    wd = t.weight_decay if t.use_weight_decay else 0.0
    if t.optimizer == "rmsprop":  # Lasagne's rho and epsilon, not PyTorch's defaults
        return torch.optim.RMSprop(params, lr=t.learning_rate, alpha=0.9, eps=1e-6, weight_decay=wd)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.learning_rate, weight_decay=wd)
    return torch.optim.SGD(params, lr=t.learning_rate, momentum=0.9, weight_decay=wd)


def _onehot(label: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(label.clamp(max=classes - 1), classes).permute(0, 3, 1, 2).float() * (label < classes)[:, None]


def _dae_inputs(seg, x, label, cfg: DAERunConfig, classes: int, g: torch.Generator | None):
    probs, h = seg(x)
    y = _onehot(label, classes) if cfg.dae_dict.from_gt else probs
    return (corrupt(y, cfg.dae_dict.noise, g) if g is not None else y), h


def _same_run(a: dict | None, b: dict) -> bool:
    """Whether two run configs are the same run (the thread count may change between sessions)."""
    strip = lambda c: {k: v for k, v in (c or {}).items() if k != "threads"}  # noqa: E731
    return strip(a) == strip(b)


def train_dae(cfg: DAERunConfig, segmenter: str | Path, out: str | Path, progress: bool = True,
              stop_after_epochs: int | None = None) -> dict:
    """Train; returns the last epoch's record. Resumes from ``out/last.pt`` when it exists."""
    set_threads(cfg.threads)
    device = pick_device()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # a checkpoint half-written when the last run was killed
    cfg_dict = dataclasses.asdict(cfg)
    seg_ckpt, seg = load_segmenter(segmenter, cfg.dae_dict.concat_h, cfg.segmenter_layers,
                                   cfg.dae_dict.temperature, device)
    a, t = cfg.data_augmentation, cfg.train_dict
    crop = None if (t.full_im_ft or a.crop_size is None) else tuple(a.crop_size)
    val_ds = checkpoint_dataset(seg_ckpt, segmenter, cfg.data.root, cfg.data.val_split, cache=True)
    mean, std = checkpoint_normalization(seg_ckpt, segmenter)
    train_tf = TrainTransform(mean, std, val_ds.classes.ignore_index, (1.0, 1.0),
                              crop, a.horizontal_flip > 0, 0.0, 0.0, 0.0, 0.0)
    train_ds = checkpoint_dataset(seg_ckpt, segmenter, cfg.data.root, cfg.data.train_split, train_tf, cache=True)
    classes, ignore = train_ds.classes.num_classes, train_ds.classes.ignore_index
    torch.manual_seed(cfg.seed)
    dae = ConditionalDAE(classes, seg.channels, cfg.dae_dict).to(device)
    opt = _optimizer(dae.parameters(), t)
    dtype = amp_dtype(t.amp, device)
    lmb = t.lmb if "squared_error" in t.training_loss else 0.0
    state = {"epoch": 0, "best": math.inf, "patience": 0}
    last = out / "last.pt"
    if last.exists():
        ck = load_checkpoint(last, "dae")
        if not _same_run(ck.get("config"), cfg_dict):
            raise ConfigError(f"{last}: belongs to a run with another config; use a new --out folder")
        dae.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["train_state"]
    payload = {"config": cfg_dict, "segmenter": segmenter_ref(segmenter), "taps": seg.taps,
               "h_channels": seg.channels, "num_classes": classes, "classes": train_ds.classes.to_dict()}
    log = RunLog(out / "metrics.jsonl", state["epoch"])
    record: dict[str, Any] = {}
    stop_at = t.num_epochs if stop_after_epochs is None else min(t.num_epochs, state["epoch"] + stop_after_epochs)
    while state["epoch"] < stop_at and state["patience"] < t.max_patience:
        epoch = state["epoch"]
        for group in opt.param_groups:
            group["lr"] = t.learning_rate * t.lr_anneal ** epoch
        train_ds.set_epoch(epoch)
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(train_ds), generator=g).tolist()
        dae.train()
        losses, t0 = [], time.time()
        bar = tqdm(list(equal_size_batches(train_ds, order, t.batch_size[0])), desc=f"dae epoch {epoch + 1}",
                   unit="batch", disable=not progress, leave=False)
        for x, label, _ in bar:
            x, label = x.to(device), label.to(device)
            with autocast(device, dtype):
                y, h = _dae_inputs(seg, x, label, cfg, classes, g)
                logits = dae(y, h)
            loss = dae_loss(logits.float(), label, ignore, lmb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        val_loss, cm = _validation(dae, seg, val_ds, cfg, classes, ignore, lmb, device, dtype)
        m = cm.compute()
        state["epoch"] = epoch + 1
        improved = val_loss < state["best"]
        state["best"], state["patience"] = (val_loss, 0) if improved else (state["best"], state["patience"] + 1)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                  "val": {"miou": m["miou"], "mean_acc": m["mean_acc"], "pixel_acc": m["pixel_acc"]},
                  "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0}
        if improved:
            save_checkpoint(out / "best.pt", {**payload, "state_dict": dae.state_dict(), "epoch": epoch + 1,
                                              "val_loss": val_loss}, "dae")
        save_checkpoint(last, {**payload, "state_dict": dae.state_dict(), "optimizer": opt.state_dict(),
                               "train_state": state}, "dae")
        log.append(record)
        if progress:
            print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, val loss {val_loss:.4f}, "
                  f"val mIoU (one DAE pass) {m['miou']:.4f}{' *' if improved else ''}", flush=True)
    return record


@torch.no_grad()
def _validation(dae, seg, ds, cfg, classes, ignore, lmb, device, dtype) -> tuple[float, ConfusionMatrix]:
    dae.eval()
    cm = ConfusionMatrix(classes, ignore)
    total, n = 0.0, 0
    for x, label, _ in equal_size_batches(ds, range(len(ds)), cfg.train_dict.batch_size[1]):
        x, label = x.to(device), label.to(device)
        with autocast(device, dtype):
            y, h = _dae_inputs(seg, x, label, cfg, classes, None)
            logits = dae(y, h).float()
        total += dae_loss(logits, label, ignore, lmb).item() * x.shape[0]
        n += x.shape[0]
        cm.update(class_map(logits).cpu(), label.cpu())
    return total / max(n, 1), cm

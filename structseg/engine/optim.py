"""Optimisers and per-iteration learning-rate schedules."""
from __future__ import annotations

import math

import torch

from ..config import OptimizerConfig, ScheduleConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum), AdamW or RMSprop; weight decay is not applied to norms and biases.

    Parameters under a ``backbone`` module get ``lr * backbone_lr_scale`` (a pretrained encoder is usually
    fine-tuned more gently than a new head); each group's ``lr_scale`` is kept for the schedule.
    """
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            in_backbone = "backbone." in f".{name}" or name.startswith("backbone.")
            groups.setdefault((in_backbone, p.ndim <= 1), []).append(p)
    groups = [{"params": ps, "weight_decay": 0.0 if no_decay else cfg.weight_decay,
               "lr_scale": cfg.backbone_lr_scale if in_backbone else 1.0}
              for (in_backbone, no_decay), ps in sorted(groups.items())]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.alpha, momentum=cfg.momentum)


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, total_steps: int, base_lr: float) -> float:
    """The multiplier of the base learning rate at iteration ``step`` (0-based)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
    t = (step - warmup) / max(1, total_steps - warmup)
    if cfg.name == "poly":
        f = (1 - min(t, 1.0)) ** cfg.power
    elif cfg.name == "cosine":
        f = 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    elif cfg.name == "exp":
        f = cfg.gamma ** (step // steps_per_epoch)
    else:
        f = 1.0
    return floor + (1 - floor) * f

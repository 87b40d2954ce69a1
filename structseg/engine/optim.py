"""Optimisers and per-iteration learning-rate schedules."""
from __future__ import annotations

import math

import torch

from ..config import OptimizerConfig, ScheduleConfig


def build_optimizer(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum), AdamW or RMSprop; weight decay is not applied to norms and biases."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
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

"""Model size and cost: parameters, multiply-accumulates (conv/linear layers) and latency."""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, height: int = 360, width: int = 480) -> int:
    """Multiply-accumulates of one forward pass on a ``1 x 3 x H x W`` input (convolutions and linear
    layers, which dominate; norms, activations and pooling are not counted). Runs on the meta device,
    so it costs no compute."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.ConvTranspose2d):
            total += inp[0].numel() * (m.out_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width, device=next(model.parameters()).device))
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    return total


def latency_ms(model: nn.Module, height: int = 360, width: int = 480, dtype: torch.dtype | None = None,
               repeats: int = 5) -> float:
    """Median wall time of one forward pass (batch 1) on CPU, channels-last, optional autocast dtype."""
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, height, width).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)

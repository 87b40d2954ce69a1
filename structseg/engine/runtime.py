"""Device, threads and mixed precision."""
from __future__ import annotations

import contextlib
import os

import torch


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local)
    return torch.device("cpu")


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (0: ``OMP_NUM_THREADS`` when set, else all cores divided among
    local processes), so a job started with ``OMP_NUM_THREADS=1`` beside another does not take both cores."""
    if threads <= 0:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) > 0:
            torch.set_num_threads(int(env))
            return
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        threads = max(1, (os.cpu_count() or 1) // local)
    torch.set_num_threads(threads)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` (auto, bf16, fp16, off) on ``device``, or None for fp32.

    ``auto`` picks bf16 on a CPU with native bf16 support and on CUDA devices that have it,
    fp16 on older CUDA devices, fp32 elsewhere.
    """
    if mode == "off":
        return None
    if device.type == "cpu":
        if mode == "fp16":
            return torch.float16
        supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return torch.bfloat16 if (mode == "bf16" or supported) else None
    if mode == "fp16":
        return torch.float16
    return torch.bfloat16 if (mode == "bf16" or torch.cuda.is_bf16_supported()) else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)

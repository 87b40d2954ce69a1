"""Multi-process training under ``torchrun``: process group, rank helpers, data sharding."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (``torchrun``'s RANK before the process group is joined)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def is_main() -> bool:
    return rank() == 0


def init_distributed() -> bool:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); returns whether it did."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return True


def rank_slice(n: int) -> range:
    """This process's share of ``n`` items (every ``world_size``-th item)."""
    return range(rank(), n, world_size())


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_mean(value: float) -> float:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size()

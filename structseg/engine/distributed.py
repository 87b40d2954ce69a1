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


def collective_device() -> torch.device:
    """Where tensors of a collective must live: this process's GPU under NCCL (which has no CPU tensors),
    the CPU under gloo."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over all processes, on ``t``'s device (``t`` itself when not distributed)."""
    if world_size() == 1:
        return t
    x = t.to(collective_device())
    dist.all_reduce(x)
    return x.to(t.device)


def all_reduce_mean(value: float) -> float:
    """The mean of a number over all processes."""
    return float(all_reduce_sum(torch.tensor([value], dtype=torch.float64)).item()) / world_size()

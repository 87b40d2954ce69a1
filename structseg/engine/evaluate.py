"""Whole-split evaluation: one confusion matrix at the labels' full resolution."""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..data.dataset import SegmentationDataset
from ..errors import StructsegError
from .distributed import is_main, rank_slice
from .metrics import ConfusionMatrix, class_map
from .runtime import autocast

Refiner = Callable[[torch.Tensor, np.ndarray], torch.Tensor]

_OOM = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


@contextlib.contextmanager
def memory_guard(what: str, size: tuple[int, ...]):
    """Turn an allocation failure while processing ``what`` into one clear error naming it and its size."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not any(m in str(e).lower() for m in _OOM):
            raise
        h, w = size[-2:]
        raise StructsegError(f"{what}: a {w}x{h} image does not fit in memory for this model ({type(e).__name__}); "
                             "downscale it or process it in tiles") from None


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                   dtype: torch.dtype | None = None, channels_last: bool = False) -> torch.Tensor:
    """Float32 logits ``(N, C, H, W)`` for normalised images ``(N, 3, H, W)``."""
    x = images.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, dtype):
        return model(x).float()


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: SegmentationDataset, device: torch.device,
             dtype: torch.dtype | None = None, channels_last: bool = False, progress: bool = True,
             desc: str = "eval", refine: Refiner | None = None) -> ConfusionMatrix:
    """Predict every image of ``dataset`` (with an eval transform) and accumulate the confusion matrix.

    ``refine(logits, image)`` (e.g. a dense CRF) maps the network's ``(1, C, H, W)`` logits and the
    raw ``uint8 (H, W, 3)`` image to refined scores before the argmax. Under ``torchrun`` each
    process takes a slice of the split and the matrices are summed.
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(dataset.classes.num_classes, dataset.classes.ignore_index)
    indices = rank_slice(len(dataset))
    for i in tqdm(indices, desc=desc, unit="img", disable=not (progress and is_main()), leave=False):
        image, label = dataset[i]
        with memory_guard(str(dataset.pairs[i][0]), tuple(image.shape)):
            logits = predict_logits(model, image[None], device, dtype, channels_last)
            if refine is not None:
                logits = refine(logits, dataset.load(i)[0])
        cm.update(class_map(logits)[0].cpu(), label)
    cm.all_reduce()
    model.train(was_training)
    return cm

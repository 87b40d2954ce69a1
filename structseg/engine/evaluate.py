"""Whole-split evaluation: one confusion matrix at the labels' full resolution."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..data.dataset import SegmentationDataset
from ..data.transforms import EvalTransform
from ..errors import CheckpointError, StructsegError
from .checkpoint import (
    checkpoint_channels,
    checkpoint_classes,
    checkpoint_normalization,
    load_checkpoint,
    model_from_checkpoint,
)
from .distributed import all_reduce_sum, is_main, rank_slice
from .inference import InferenceSettings, infer_logits
from .metrics import BoundaryF, ConfusionMatrix, class_map

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
def evaluate(model: torch.nn.Module, dataset: SegmentationDataset, device: torch.device,
             dtype: torch.dtype | None = None, channels_last: bool = False, progress: bool = True,
             desc: str = "eval", refine: Refiner | None = None,
             inference: InferenceSettings | None = None, boundary: BoundaryF | None = None) -> ConfusionMatrix:
    """Predict every image of ``dataset`` (with an eval transform) and accumulate the confusion matrix.

    ``refine(logits, image)`` (e.g. a dense CRF) maps the network's ``(1, C, H, W)`` logits and the
    raw ``uint8 (H, W, 3)`` image to refined scores before the argmax; ``inference`` says how the network is
    applied (whole image by default, or sliding tiles, with test-time augmentation); ``boundary``, when given,
    accumulates the boundary F-score of the same predictions. Under ``torchrun`` each
    process takes a slice of the split and the matrices are summed.
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(dataset.classes.num_classes, dataset.classes.ignore_index)
    indices = rank_slice(len(dataset))
    for i in tqdm(indices, desc=desc, unit="img", disable=not (progress and is_main()), leave=False):
        image, label = dataset[i]
        with memory_guard(str(dataset.pairs[i][0]), tuple(image.shape)):
            logits = infer_logits(model, image[None], device, dtype, inference, channels_last)
            if refine is not None:
                logits = refine(logits, dataset.load(i)[0])
        pred = class_map(logits)[0].cpu()
        cm.update(pred, label)
        if boundary is not None:
            boundary.update(pred, label)
    cm.all_reduce()
    if boundary is not None:
        boundary.counts = all_reduce_sum(boundary.counts)
    model.train(was_training)
    return cm


def checkpoint_dataset(ckpt: dict, checkpoint: str | Path, root: str | Path, split: str,
                       transform: Callable | None = None, cache: bool = False) -> SegmentationDataset:
    """``ROOT/SPLIT`` checked to hold the classes the checkpoint predicts, its images normalised as the
    checkpoint expects (an :class:`EvalTransform` unless ``transform`` is given)."""
    dataset = SegmentationDataset(root, split, cache=cache, channels=checkpoint_channels(ckpt))
    names = checkpoint_classes(ckpt).names
    if len(names) != dataset.classes.num_classes:
        raise CheckpointError(f"{checkpoint}: model has {len(names)} classes but the dataset has "
                              f"{dataset.classes.num_classes}")
    if names != dataset.classes.names:
        raise CheckpointError(f"{checkpoint}: trained on classes {list(names)}, but {root} has "
                              f"{list(dataset.classes.names)}")
    dataset.transform = transform or EvalTransform(*checkpoint_normalization(ckpt, checkpoint))
    return dataset


def open_for_evaluation(checkpoint: str | Path, root: str | Path,
                        split: str) -> tuple[dict, torch.nn.Module, SegmentationDataset]:
    """The one way to open a checkpoint (a file or shipped name) and a split to score it on:
    ``(checkpoint dict, model, dataset)``, the model's classes checked against the dataset's. An ``.onnx`` file
    from ``structseg export`` is run by ONNX Runtime; its metadata stands in for the checkpoint dict."""
    if str(checkpoint).endswith(".onnx"):
        from .onnx_model import OnnxModel, onnx_metadata
        meta = onnx_metadata(checkpoint)
        ckpt = {"model": meta["model"], "classes": meta["classes"], "normalization": meta["normalization"]}
        dataset = checkpoint_dataset(ckpt, checkpoint, root, split)
        return ckpt, OnnxModel(checkpoint), dataset
    ckpt = load_checkpoint(checkpoint)
    dataset = checkpoint_dataset(ckpt, checkpoint, root, split)
    model = model_from_checkpoint(ckpt, checkpoint, num_classes=dataset.classes.num_classes)
    return ckpt, model, dataset

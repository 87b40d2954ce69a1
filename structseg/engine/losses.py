"""Training losses on logits ``(N, C, H, W)`` and labels ``(N, H, W)``, the ignore index left out everywhere.

- ``cross_entropy``: with the run's class weights and optional label smoothing (PyTorch's definition);
- ``dice``: 1 - soft Dice per class, averaged over the classes present in the batch's labels (as smp's
  multiclass ``DiceLoss``), on the softmax probabilities;
- ``focal``: ``-(1 - p_t)^gamma log p_t`` per pixel (Lin et al. 2017), class-weighted like cross-entropy,
  averaged over the labelled pixels;
- ``lovasz``: the Lovász-softmax surrogate of the Jaccard loss (Berman et al. 2018), per class over the
  batch's labelled pixels, averaged over the classes present; on hard one-hot predictions it equals
  ``1 - IoU`` of each class.

``train.loss`` lists terms with weights, e.g. ``[{name: cross_entropy}, {name: lovasz, weight: 0.5}]``; the sum
is the loss (auxiliary heads get the same sum times ``train.aux_weight``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..config import LossTerm


def _valid(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities ``(P, C)`` and labels ``(P,)`` of the labelled pixels."""
    c = logits.shape[1]
    probs = torch.softmax(logits.float(), 1).permute(0, 2, 3, 1).reshape(-1, c)
    flat = labels.reshape(-1)
    keep = flat != ignore_index
    return probs[keep], flat[keep]


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, eps: float = 1.0) -> torch.Tensor:
    probs, y = _valid(logits, labels, ignore_index)
    if y.numel() == 0:
        return logits.sum() * 0.0
    onehot = F.one_hot(y, probs.shape[1]).to(probs.dtype)
    inter, sizes = (probs * onehot).sum(0), probs.sum(0) + onehot.sum(0)
    present = onehot.sum(0) > 0
    return (1 - (2 * inter + eps) / (sizes + eps))[present].mean()


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0, weight: torch.Tensor | None = None,
               ignore_index: int = 255) -> torch.Tensor:
    log_p = F.log_softmax(logits.float(), 1)
    keep = labels != ignore_index
    y = labels.clamp(0, logits.shape[1] - 1)
    log_pt = log_p.gather(1, y[:, None])[:, 0]
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    w = keep.to(loss.dtype) if weight is None else weight.to(loss.dtype)[y] * keep
    return (loss * w).sum() / w.sum().clamp(min=1e-12)


def lovasz_grad(sorted_truth: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss for errors sorted in decreasing order
    (``sorted_truth``: the ground-truth indicator in that order)."""
    gts = sorted_truth.sum()
    intersection = gts - sorted_truth.cumsum(0)
    union = gts + (1 - sorted_truth).cumsum(0)
    jaccard = 1.0 - intersection / union
    if len(jaccard) > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    probs, y = _valid(logits, labels, ignore_index)
    if y.numel() == 0:
        return logits.sum() * 0.0
    losses = []
    for c in range(probs.shape[1]):
        truth = (y == c).to(probs.dtype)
        if truth.sum() == 0:
            continue  # classes='present'
        errors = (truth - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(truth[order])))
    return torch.stack(losses).mean()


def build_loss(terms: list[LossTerm], class_weights: torch.Tensor | None,
               ignore_index: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The weighted sum of ``terms`` as one function ``loss(logits, labels)``."""
    def one(term: LossTerm, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if term.name == "cross_entropy":
            return F.cross_entropy(logits.float(), labels, weight=class_weights, ignore_index=ignore_index,
                                   label_smoothing=term.label_smoothing)
        if term.name == "dice":
            return dice_loss(logits, labels, ignore_index)
        if term.name == "focal":
            return focal_loss(logits, labels, term.gamma, class_weights, ignore_index)
        return lovasz_softmax(logits, labels, ignore_index)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(term.weight * one(term, logits, labels) for term in terms)
    return loss

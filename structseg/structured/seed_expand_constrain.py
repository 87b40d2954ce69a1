"""The image-level-label baseline practitioners use (SEC: Kolesnikov & Lampert, ECCV 2016; losses as in
github:kolesman/SEC ``pylayers.py``), without background and saliency (MSRC-21's tags are exhaustive):

- **expand**: global weighted rank pooling of each class's pixel probabilities,
  ``G_c = sum_j d^(j-1) f_(j),c / sum_j d^(j-1)`` (pixels sorted by ``f_c``, descending), then
  ``-mean_{c in T} log G_c - mean_{c not in T} log(1 - max_j f_jc)``: a present class must cover the top of
  its ranking, an absent one nowhere; ``d`` is given for SEC's 41 x 41 outputs (0.996) and rescaled to
  ``d^(1681 / N)`` so that ``d^N`` stays the same on other grids;
- **constrain**: ``mean_j KL(Q_j || f_j)`` with ``Q`` the dense CRF's mean field on the network's scores
  restricted to the tags (no gradient through ``Q``): the prediction is pulled towards its own CRF-refined,
  boundary-respecting version; optionally (``weak.colour``) with each image's per-class colour models added to
  the unary first (:mod:`structseg.structured.colour_model`), a cue for where an object ends.
"""
from __future__ import annotations

import torch

from .colour_model import ColourModel
from .dense_crf import CRFParams, mean_field

SEC_PIXELS = 41 * 41


def gwrp(probs: torch.Tensor, decay: float | torch.Tensor) -> torch.Tensor:
    """Global weighted rank pooling ``(B, K)`` of ``probs`` ``(B, K, H, W)`` with the per-rank ``decay``
    (one number, or ``(K,)``: one per class, as SEC's separate decay for the background)."""
    flat = probs.flatten(2).sort(2, descending=True).values
    n = flat.shape[-1]
    decay = torch.as_tensor(decay, dtype=flat.dtype, device=flat.device).reshape(-1, 1)  # (1 or K, 1)
    weights = decay ** torch.arange(n, dtype=flat.dtype, device=flat.device)  # (1 or K, n)
    return (flat * weights).sum(2) / weights.sum(1)


def expand_loss(probs: torch.Tensor, tags: torch.Tensor, decay: float | torch.Tensor = 0.996,
                eps: float = 1e-5) -> torch.Tensor:
    """SEC's expand loss per image ``(B,)``; ``decay`` (a number or one per class) for a 41 x 41 grid,
    rescaled to this one."""
    n = probs.shape[-2] * probs.shape[-1]
    pooled = gwrp(probs, torch.as_tensor(decay, dtype=torch.float64) ** (SEC_PIXELS / n)).clamp(eps, 1 - eps)
    peak = probs.flatten(2).max(2).values.clamp(max=1 - eps)
    present = (-torch.log(pooled) * tags).sum(1) / tags.sum(1).clamp(min=1)
    absent = (-torch.log1p(-peak) * (1 - tags)).sum(1) / (1 - tags).sum(1).clamp(min=1)
    return present + absent


@torch.no_grad()
def tag_restricted_marginals(logits: torch.Tensor, image: torch.Tensor, tags: torch.Tensor,
                             params: CRFParams, colour: ColourModel | None = None) -> torch.Tensor:
    """The dense CRF's mean field ``Q`` ``(B, K, H, W)`` on the scores with the classes an image is not tagged with
    excluded (``tags`` multi-hot ``(B, K)``; ``image`` RGB 0-255 ``(B, 3, H, W)``); no gradient. With ``colour``,
    the unary first gets the image's per-class colour models (:mod:`structseg.structured.colour_model`)."""
    masked = logits.detach().float().masked_fill(tags[:, :, None, None] == 0, -1e4)
    log_probs = torch.log_softmax(masked, 1)
    if colour is not None:
        log_probs = colour(log_probs, image.float())
    return mean_field(-log_probs, image.float(), params)


def constrain_loss(logits: torch.Tensor, image: torch.Tensor, tags: torch.Tensor, params: CRFParams,
                   eps: float = 1e-8, colour: ColourModel | None = None) -> torch.Tensor:
    """SEC's constrain loss per image ``(B,)``: ``mean_j KL(Q_j || f_j)``, ``Q`` the
    :func:`tag_restricted_marginals` (with ``colour``: after the per-image colour models), a constant target."""
    q = tag_restricted_marginals(logits, image, tags, params, colour)
    log_f = torch.log_softmax(logits.float(), 1)
    return (q * (torch.log(q.clamp(min=eps)) - log_f)).sum(1).flatten(1).mean(1)

"""CRF-as-RNN (Zheng et al., ICCV 2015): mean-field iterations appended to any segmentation network.

The network's logits are the unaries; ``iterations`` mean-field steps with the permutohedral
Gaussian filter follow, with learnable kernel weights and a learnable ``C x C`` label
compatibility (initialised to Potts). The output is ``log Q``, so cross-entropy on it trains the
whole stack end to end. Kernel widths stay fixed (the lattice is built from them). The CRF runs in
float32 even under autocast, on any batch size.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..data.transforms import rgb255
from .dense_crf import CRFParams, mean_field


class CRFasRNN(nn.Module):
    """``CRFasRNN(net, num_classes, params, mean, std)``; ``forward(x)`` takes the normalised image."""

    def __init__(self, net: nn.Module, num_classes: int, params: CRFParams | None = None,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.net = net
        self.params = params or CRFParams()
        self.params.validate()
        self.smoothness_weight = nn.Parameter(torch.tensor(float(self.params.smoothness_weight)))
        self.appearance_weight = nn.Parameter(torch.tensor(float(self.params.appearance_weight)))
        self.compatibility = nn.Parameter(1.0 - torch.eye(num_classes))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        logits, aux = self.net(x, return_aux=True)  # auxiliary heads pass through
        with torch.autocast(x.device.type, enabled=False):
            image = rgb255(x, self.mean, self.std)
            unary = -F.log_softmax(logits.float(), dim=1)
            q = mean_field(unary, image, self.params, self.compatibility,
                           (self.smoothness_weight, self.appearance_weight))
            log_q = torch.log(q.clamp(min=1e-8))
        return (log_q, aux) if return_aux else log_q

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.params).items())

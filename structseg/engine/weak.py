"""The weakly supervised objective (seed 001): the negative evidence bound of the latent CRF, per pixel.

``loss = (-E_q[log p(y | z)] + kl_weight * KL(q || p_CRF)) / N`` for each image of ``N`` pixels, averaged over
the batch, where ``q`` is the network's softmax, ``y`` the image's tags, ``p(y | z)`` the noisy-OR likelihood
with learned rates ``r_k = r_max * sigmoid(rho_k)``, ``r_max = 1 / (min_share * N)`` (a tagged class is explained
only once it covers about ``min_share`` of the image or more), and ``p_CRF`` the dense CRF's pairwise prior on
the input image (:mod:`structseg.structured.latent_crf`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import WeakConfig
from ..errors import ConfigError
from ..structured.dense_crf import CRFParams
from ..structured.latent_crf import kl_to_crf_prior, tag_log_likelihood_bound


class TagObjective(nn.Module):
    def __init__(self, num_classes: int, cfg: WeakConfig, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        try:
            self.prior = CRFParams(**{"iterations": 1, **cfg.prior})
            self.prior.validate()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config key 'weak.prior': {e}") from None
        self.cfg = cfg
        self.rho = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def rates(self, pixels: int) -> torch.Tensor:
        return torch.sigmoid(self.rho) / (self.cfg.min_share * pixels)

    def forward(self, logits: torch.Tensor, images: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, K, H, W)``, normalised ``images`` ``(B, 3, H, W)``, multi-hot ``tags`` ``(B, K)``."""
        with torch.autocast(logits.device.type, enabled=False):
            q = torch.softmax(logits.float(), 1)
            rgb = ((images.float() * self.std + self.mean) * 255.0).clamp(0, 255)
            pixels = q.shape[-2] * q.shape[-1]
            bound = tag_log_likelihood_bound(q, tags, self.rates(pixels), self.cfg.leak)
            kl = kl_to_crf_prior(q, rgb, self.prior)
            return ((-bound + self.cfg.kl_weight * kl) / pixels).mean().float()

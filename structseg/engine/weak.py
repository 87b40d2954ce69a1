"""The weakly supervised objectives: seed 001's negative evidence bound of the latent CRF, per pixel, and the
expand / constrain baseline (:class:`ExpandConstrainObjective`).

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
from ..data.transforms import rgb255
from ..errors import ConfigError
from ..structured.colour_model import ColourModel
from ..structured.dense_crf import CRFParams
from ..structured.latent_crf import kl_to_crf_prior, tag_log_likelihood_bound
from ..structured.seed_expand_constrain import constrain_loss, expand_loss


def crf_params(settings: dict, **defaults) -> CRFParams:
    """``weak.prior`` as :class:`CRFParams` (``defaults`` under it); a bad key or value is a config error."""
    try:
        params = CRFParams(**{**defaults, **settings})
        params.validate()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key 'weak.prior': {e}") from None
    return params


def colour_model(settings: dict) -> ColourModel | None:
    """``weak.colour`` as a :class:`ColourModel` (None when off); an unknown key or bad value is a config error."""
    try:
        model = ColourModel(**settings)
        model.validate()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key 'weak.colour': {e}; keys: weight, rounds, bins, prior") from None
    return model if model.weight > 0 else None


def build_objective(num_classes: int, cfg: WeakConfig, mean: tuple[float, ...], std: tuple[float, ...],
                    class_names: list[str] | None = None) -> nn.Module:
    """The objective ``weak.method`` names: the seed's bound or the expand / constrain baseline."""
    if cfg.teacher:
        raise ConfigError(f"config key 'weak.teacher' is read by weak.method retrain only (method is {cfg.method})")
    if cfg.method == "latent_crf":
        return TagObjective(num_classes, cfg, mean, std)
    return ExpandConstrainObjective(num_classes, cfg, mean, std, class_names)


def class_decays(cfg: WeakConfig, num_classes: int, class_names: list[str] | None) -> torch.Tensor:
    """``(K,)`` rank-pooling decays: ``gwrp_decay``, replaced for the classes ``gwrp_decay_classes`` names."""
    decays = torch.full((num_classes,), float(cfg.gwrp_decay), dtype=torch.float64)
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    for name, value in cfg.gwrp_decay_classes.items():
        if name not in names:
            raise ConfigError(f"config key 'weak.gwrp_decay_classes.{name}': no class of that name; the classes "
                              f"are {', '.join(names)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ConfigError(f"config key 'weak.gwrp_decay_classes.{name}': expected a number in (0, 1], "
                              f"got {value!r}")
        decays[names.index(name)] = float(value)
    return decays


class _ImageObjective(nn.Module):
    """What both objectives share: the config and the input normalisation, to give the CRF its RGB image."""

    def __init__(self, cfg: WeakConfig, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def rgb(self, images: torch.Tensor) -> torch.Tensor:
        return rgb255(images, self.mean, self.std)


class TagObjective(_ImageObjective):
    def __init__(self, num_classes: int, cfg: WeakConfig, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__(cfg, mean, std)
        self.prior = crf_params(cfg.prior, iterations=1)  # the KL needs the kernels, not iterations
        self.rho = nn.Parameter(torch.zeros(num_classes))

    def rates(self, pixels: int) -> torch.Tensor:
        return torch.sigmoid(self.rho) / (self.cfg.min_share * pixels)

    def forward(self, logits: torch.Tensor, images: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, K, H, W)``, normalised ``images`` ``(B, 3, H, W)``, multi-hot ``tags`` ``(B, K)``."""
        with torch.autocast(logits.device.type, enabled=False):
            q = torch.softmax(logits.float(), 1)
            rgb = self.rgb(images)
            pixels = q.shape[-2] * q.shape[-1]
            bound = tag_log_likelihood_bound(q, tags, self.rates(pixels), self.cfg.leak)
            kl = kl_to_crf_prior(q, rgb, self.prior)
            return ((-bound + self.cfg.kl_weight * kl) / pixels).mean().float()


class ExpandConstrainObjective(_ImageObjective):
    """The baseline: SEC's expand + constrain losses per image, averaged over the batch (no learned parameter)."""

    def __init__(self, num_classes: int, cfg: WeakConfig, mean: tuple[float, ...], std: tuple[float, ...],
                 class_names: list[str] | None = None):
        super().__init__(cfg, mean, std)
        self.params = crf_params(cfg.prior)
        self.decays = class_decays(cfg, num_classes, class_names)
        self.colour = colour_model(cfg.colour)

    def forward(self, logits: torch.Tensor, images: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            probs = torch.softmax(logits.float(), 1)
            expand = expand_loss(probs, tags, self.decays)
            constrain = constrain_loss(logits, self.rgb(images), tags, self.params, colour=self.colour)
            return (expand + constrain).mean()

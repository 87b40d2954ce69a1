"""Paired image/label augmentation in PyTorch: scale, crop with padding, flip, colour, normalise.

Every geometric operation is applied to the image and its label with the same parameters;
labels are resized with nearest neighbour and padded with the ignore index. Parameters are drawn
from a ``torch.Generator`` so that a sample's augmentation is reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import IMAGENET_MEAN, IMAGENET_STD


def image_tensor01(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An ``(H, W, C)`` image (array or tensor) -> float ``(C, H, W)``: ``uint8`` divided by 255, ``uint16`` by
    65535 (both then in [0, 1]), float bands as they are."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:  # torch has few kernels for uint16: convert on the NumPy side
            image = image.astype(np.float32) / np.float32(65535.0)
        img = torch.from_numpy(np.ascontiguousarray(image))
    else:
        img = image.float().div_(65535.0) if image.dtype == torch.uint16 else image
    img = img.permute(2, 0, 1)
    return img.float().div_(255.0) if img.dtype == torch.uint8 else img.float()


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H,W,C)``, ``(H,W)`` arrays -> float ``(C,H,W)`` (see :func:`image_tensor01`) and int64 ``(H,W)``."""
    return image_tensor01(image), torch.from_numpy(label.astype(np.int64))


def resize(image: torch.Tensor, label: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize to ``size`` (H, W): bilinear (antialiased when shrinking) for the image, nearest for the label."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, label
    shrink = size[0] < image.shape[-2]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bilinear kernels round differently per thread split: one thread, as in a worker
    try:
        img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]
    finally:
        torch.set_num_threads(threads)
    lab = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return img, lab


def pad_to(image: torch.Tensor, label: torch.Tensor, height: int, width: int,
           ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom/right to at least ``height x width``: image with 0, label with ``ignore_index``."""
    ph, pw = max(height - image.shape[-2], 0), max(width - image.shape[-1], 0)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0.0)
        label = F.pad(label, (0, pw, 0, ph), value=ignore_index)
    return image, label


def crop(image: torch.Tensor, label: torch.Tensor, top: int, left: int, height: int,
         width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (image[..., top:top + height, left:left + width],
            label[..., top:top + height, left:left + width])


def hflip(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return image.flip(-1), label.flip(-1)


def adjust_colour(image: torch.Tensor, brightness: float = 1.0, contrast: float = 1.0,
                  saturation: float = 1.0, hue: float = 0.0) -> torch.Tensor:
    """Photometric distortion of a float RGB image in [0, 1].

    ``brightness``/``contrast``/``saturation`` are factors (1 = unchanged); ``hue`` is a rotation
    in turns (0.5 = 180 degrees) of the chroma plane in YIQ space. Only elementwise arithmetic and a
    float64 mean, so the result is the same bit for bit whatever the number of threads (a DataLoader
    worker runs one, the main process several).
    """
    img = image * brightness
    grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])
    mean = float(grey.double().mean())  # float32 reductions round differently per thread split
    img = (img - mean) * contrast + mean
    grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    img = (img - grey) * saturation + grey
    if hue:
        to_yiq = image.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        c, s = math.cos(2 * math.pi * hue), math.sin(2 * math.pi * hue)
        rot = image.new_tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
        m = (torch.linalg.inv(to_yiq.double()) @ rot.double() @ to_yiq.double()).tolist()
        img = torch.stack([m[i][0] * img[0] + m[i][1] * img[1] + m[i][2] * img[2] for i in range(3)])
    return img.clamp_(0.0, 1.0)


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = image.new_tensor(mean)[:, None, None]
    s = image.new_tensor(std)[:, None, None]
    return (image - m) / s


def network_input(image: np.ndarray | torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """An ``(H, W, C)`` image -> the normalised float ``(C, H, W)`` a network takes (one mean/std per channel)."""
    return normalize(image_tensor01(image), mean, std)


def rgb255(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised network inputs ``(B, 3, H, W)`` back to RGB in 0-255 (``mean``/``std`` broadcastable
    ``(1, 3, 1, 1)``), float32: what the CRF kernels' colour features read."""
    return ((x.float() * std + mean) * 255.0).clamp(0, 255)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


@dataclass
class TrainTransform:
    """The training pipeline: random scale -> pad + random crop -> flip -> colour -> normalise.

    The colour distortion is RGB's (brightness, contrast, saturation, hue): it applies to 3-channel images only;
    images of other band counts (e.g. RGB + near-infrared, 16-bit single-band) get the geometric steps alone.
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    ignore_index: int = 255
    scale: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] | None = None
    hflip: bool = True
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.03

    def __call__(self, image: np.ndarray, label: np.ndarray, g: torch.Generator):
        img, lab = to_tensors(image, label)
        s = _uniform(g, *self.scale)
        if s != 1.0:
            h, w = img.shape[-2:]
            img, lab = resize(img, lab, (max(1, round(h * s)), max(1, round(w * s))))
        if self.crop_size is not None:
            ch, cw = self.crop_size
            img, lab = pad_to(img, lab, ch, cw, self.ignore_index)
            top = int(torch.randint(0, img.shape[-2] - ch + 1, (), generator=g))
            left = int(torch.randint(0, img.shape[-1] - cw + 1, (), generator=g))
            img, lab = crop(img, lab, top, left, ch, cw)
        if self.hflip and torch.rand((), generator=g).item() < 0.5:
            img, lab = hflip(img, lab)
        if img.shape[0] == 3 and (self.brightness or self.contrast or self.saturation or self.hue):
            img = adjust_colour(img, _uniform(g, 1 - self.brightness, 1 + self.brightness),
                                _uniform(g, 1 - self.contrast, 1 + self.contrast),
                                _uniform(g, 1 - self.saturation, 1 + self.saturation),
                                _uniform(g, -self.hue, self.hue))
        return normalize(img, self.mean, self.std).contiguous(), lab.contiguous()


@dataclass
class EvalTransform:
    """Evaluation: the full image, only normalised."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, image: np.ndarray, label: np.ndarray, g: torch.Generator | None = None):
        img, lab = to_tensors(image, label)
        return normalize(img, self.mean, self.std), lab

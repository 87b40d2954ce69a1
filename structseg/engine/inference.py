"""How a network is applied to one image: whole, or by sliding tiles, with optional test-time augmentation.

- ``whole``: one forward pass of the normalised image (the default).
- ``slide``: tiles of ``tile = (h, w)`` at a stride of ``tile * (1 - overlap)`` (the last row and column of
  tiles aligned with the image's far edges), ``batch`` tiles per forward pass; each tile's logits are
  weighted by a smooth window (a Gaussian of sigma = tile / 4 per axis, floored at 1e-3, so a pixel
  near a tile's edge counts little where another tile sees it from its centre) and the weighted sum is
  divided by the summed weights. One tile covering the image gives the whole-image logits.
- test-time augmentation: ``scales`` (the image resized, the logits resized back) and ``flip`` (the
  mirrored image, the logits mirrored back); the softmax probabilities are averaged and the result is
  returned as their log, so argmax and any CRF downstream read it as logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ..data.transforms import network_input
from ..errors import StructsegError
from .runtime import autocast


@dataclass
class InferenceSettings:
    mode: Literal["whole", "slide"] = "whole"
    tile: tuple[int, int] | None = None
    overlap: float = 0.25
    batch: int = 4
    scales: tuple[float, ...] = field(default_factory=lambda: (1.0,))
    flip: bool = False

    def validate(self) -> None:
        if self.mode == "slide" and (self.tile is None or len(self.tile) != 2 or min(self.tile) < 1):
            raise ValueError(f"slide inference needs --tile H,W (two positive integers), got {self.tile}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"--overlap must be in [0, 1), got {self.overlap}")
        if self.batch < 1:
            raise ValueError(f"--tile-batch must be >= 1, got {self.batch}")
        if not self.scales or not all(math.isfinite(s) and s > 0 for s in self.scales):
            raise ValueError(f"TTA scales must be positive numbers, got {list(self.scales)}")

    @property
    def augmented(self) -> bool:
        return self.flip or tuple(self.scales) != (1.0,)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Offsets of the tiles along one axis: every ``stride``, plus one flush with the far edge."""
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def window(h: int, w: int, device=None) -> torch.Tensor:
    """The blending weight of a tile's pixels, ``(h, w)``: a Gaussian bump, 1 at the centre, >= 1e-3."""
    def axis(n):
        t = torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2
        return torch.exp(-0.5 * (t / (n / 4)) ** 2)
    return (axis(h)[:, None] * axis(w)[None, :]).clamp(min=1e-3)


@torch.no_grad()
def forward_logits(model: torch.nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype | None,
                   channels_last: bool = False) -> torch.Tensor:
    """Float32 logits ``(N, C, H, W)`` of one forward pass on normalised images ``(N, 3, H, W)``."""
    x = x.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, dtype):
        return model(x).float()


def _check_tile(h: int, w: int, tile: tuple[int, int]) -> None:
    if tile[0] > h or tile[1] > w:
        raise StructsegError(f"a {tile[1]}x{tile[0]} tile (WxH) is larger than the {w}x{h} image; use a smaller "
                             "--tile or whole-image inference")


@torch.no_grad()
def slide_bands(model: torch.nn.Module, tile_at, h: int, w: int, device: torch.device, dtype: torch.dtype | None,
                tile: tuple[int, int], overlap: float = 0.25, batch: int = 4):
    """Blended logits of an ``h x w`` image by sliding tiles, yielded top to bottom as finished bands
    ``(row, logits (C, rows, w))``. ``tile_at(y, x)`` returns the normalised tile ``(3, th, tw)`` at ``(y, x)``.
    A band is finished once no later tile row covers it, so at most one tile row's band (C x th x w) and one
    batch of tiles are held: memory is bounded by the tile, not by the image's height."""
    _check_tile(h, w, tile)
    th, tw = tile
    rows = tile_starts(h, th, max(1, int(th * (1 - overlap))))
    cols = tile_starts(w, tw, max(1, int(tw * (1 - overlap))))
    weight = window(th, tw)
    top, acc, norm = 0, None, torch.zeros(1, th, w)
    for y in rows:
        if acc is not None and y > top:  # rows [top, y) are final: no later tile reaches them
            yield top, acc[:, :y - top] / norm[:, :y - top]
            keep = top + th - y
            acc = torch.cat([acc[:, y - top:], acc.new_zeros(acc.shape[0], th - keep, w)], 1)
            norm = torch.cat([norm[:, y - top:], norm.new_zeros(1, th - keep, w)], 1)
            top = y
        for k in range(0, len(cols), batch):
            xs = cols[k:k + batch]
            out = forward_logits(model, torch.stack([tile_at(y, x0) for x0 in xs]), device, dtype).cpu()
            if acc is None:
                acc = torch.zeros(out.shape[1], th, w)
            for x0, logits in zip(xs, out):
                acc[:, y - top:y - top + th, x0:x0 + tw] += logits * weight
                norm[:, y - top:y - top + th, x0:x0 + tw] += weight
    yield top, acc[:, :h - top] / norm[:, :h - top]


def slide_logits(model: torch.nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype | None,
                 tile: tuple[int, int], overlap: float = 0.25, batch: int = 4) -> torch.Tensor:
    """Logits ``(1, C, H, W)`` of one normalised image ``(1, 3, H, W)`` assembled from overlapping tiles."""
    h, w = x.shape[-2:]
    th, tw = tile
    bands = slide_bands(model, lambda y, x0: x[0, :, y:y + th, x0:x0 + tw], h, w, device, dtype, tile, overlap, batch)
    return torch.cat([band for _, band in bands], 1)[None]


def slide_image_bands(model: torch.nn.Module, image: torch.Tensor, mean, std, device: torch.device,
                      dtype: torch.dtype | None, tile: tuple[int, int], overlap: float = 0.25, batch: int = 4):
    """:func:`slide_bands` of a raw ``(H, W, bands)`` image, normalised tile by tile (never as a whole)."""
    th, tw = tile

    def tile_at(y, x0):
        return network_input(image[y:y + th, x0:x0 + tw], mean, std)

    return slide_bands(model, tile_at, image.shape[0], image.shape[1], device, dtype, tile, overlap, batch)


def slide_labels(model: torch.nn.Module, image: torch.Tensor, mean, std, device: torch.device,
                 dtype: torch.dtype | None, tile: tuple[int, int], overlap: float = 0.25,
                 batch: int = 4) -> torch.Tensor:
    """Class indices ``(H, W)`` uint8 of a ``uint8 (H, W, 3)`` image by sliding tiles, normalised tile by tile:
    for images too large to hold as float logits (an 8000 x 8000 frame), memory stays that of one tile row."""
    labels = torch.empty(image.shape[0], image.shape[1], dtype=torch.uint8)
    for top, band in slide_image_bands(model, image, mean, std, device, dtype, tile, overlap, batch):
        labels[top:top + band.shape[1]] = band.max(0).indices.to(torch.uint8)
    return labels


def crf_tile_labels(bands, image, refine, h: int, w: int, tile: int = 1024, margin: int = 64) -> torch.Tensor:
    """Class indices ``(H, W)`` uint8 of the dense CRF applied tile by tile to streamed logits.

    ``bands`` yields ``(row, logits (C, rows, w))`` top to bottom (as :func:`slide_bands` does); ``refine(logits
    (1, C, h', w'), image (h', w', 3))`` returns the CRF's marginals. The image is cut into ``tile x tile`` cores;
    each is refined with ``margin`` pixels of context on every side (clipped at the image's edges) and only its
    core is kept, so pixels near a seam still see their neighbours across it. Logits are held for one row of
    CRF tiles (``tile + 2 * margin`` rows), the CRF for one tile: memory is bounded by ``tile``, not the image.
    One tile covering the image is the whole-image CRF."""
    labels = torch.empty(h, w, dtype=torch.uint8)
    buf, buf_top, core = None, 0, 0
    for top, band in bands:
        buf = band if buf is None else torch.cat([buf, band], 1)
        while core < h and buf_top + buf.shape[1] >= min(h, core + tile + margin):
            y0, y1 = max(0, core - margin), min(h, core + tile + margin)
            for x in range(0, w, tile):
                x0, x1 = max(0, x - margin), min(w, x + tile + margin)
                probs = refine(buf[None, :, y0 - buf_top:y1 - buf_top, x0:x1], image[y0:y1, x0:x1])
                cy, cx = core - y0, x - x0
                labels[core:core + tile, x:x + tile] = probs[0, :, cy:cy + tile, cx:cx + tile].argmax(0).to(torch.uint8)
            core += tile
            drop = max(0, core - margin - buf_top)
            buf, buf_top = buf[:, drop:], buf_top + drop
    return labels


def infer_logits(model: torch.nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype | None,
                 settings: InferenceSettings | None = None, channels_last: bool = False) -> torch.Tensor:
    """Logits ``(1, C, H, W)`` of one normalised image as ``settings`` say (on the CPU for slide and TTA)."""
    settings = settings or InferenceSettings()

    def once(image: torch.Tensor) -> torch.Tensor:
        if settings.mode == "slide":
            return slide_logits(model, image, device, dtype, settings.tile, settings.overlap, settings.batch)
        return forward_logits(model, image, device, dtype, channels_last)

    if not settings.augmented:
        return once(x)
    h, w = x.shape[-2:]
    probs = None
    for scale in settings.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if settings.flip else (False,)):
            image = scaled.flip(-1) if flipped else scaled
            logits = once(image).cpu()
            logits = logits.flip(-1) if flipped else logits
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            p = torch.softmax(logits, 1)
            probs = p if probs is None else probs + p
    n = len(settings.scales) * (2 if settings.flip else 1)
    return torch.log((probs / n).clamp(min=1e-12))

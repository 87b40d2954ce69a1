"""``structseg predict``: label PNGs and colour overlays for new images, from a checkpoint alone."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .._io import (
    IMAGE_EXTENSIONS,
    atomic_path,
    display_rgb,
    is_within,
    load_image,
    prepare_output_dir,
    remove_stale_temporaries,
    save_png,
)
from ..data.transforms import network_input
from ..errors import DataError
from ..structured.crf_postprocess import check_crf_for, crf_refiner
from ..structured.dense_crf import CRFParams
from .checkpoint import load_pretrained
from .evaluate import memory_guard
from .inference import (
    InferenceSettings,
    crf_tile_labels,
    forward_logits,
    infer_logits,
    slide_image_bands,
    slide_labels,
)
from .metrics import class_map
from .runtime import amp_dtype, pick_device


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Expand files and folders (images by extension, sorted; hidden files skipped) into a list; stems
    must be unique, since each becomes an output name."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
            if not found:
                raise DataError(f"{item}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise DataError(f"{f} and {stems[f.stem]} would both be written as {f.stem}.png; predict them separately")
        stems[f.stem] = f
    return files


def check_output_folder(out: Path, inputs: list[str | Path], files: list[Path]) -> None:
    """Refuse an output folder that is, or holds, any input: outputs never overwrite what they read."""
    for item in map(Path, inputs):
        if item.is_dir() and (is_within(out, item) or is_within(item, out)):
            raise DataError(f"{out}: the output folder is, or is inside, or contains the input folder {item}; "
                            "write the predictions somewhere else")
    for f in files:
        if is_within(f, out):
            raise DataError(f"{out}: the output folder holds the input {f}; write the predictions somewhere else")


class Predictor:
    """Segments images with a trained checkpoint (normalisation, band count and classes come from it)."""

    def __init__(self, checkpoint: str | Path, device: torch.device | None = None, crf: CRFParams | None = None,
                 amp: str = "auto", inference: InferenceSettings | None = None, crf_tile: int = 1024,
                 crf_margin: int = 64):
        self.device = device or pick_device()
        self.model = load_pretrained(checkpoint, self.device)
        self.classes = self.model.classes
        self.mean, self.std = self.model.normalization
        self.channels = getattr(self.model, "in_channels", 3)
        self.dtype = amp_dtype(amp, self.device)
        self._configure(inference, crf)
        if crf_tile < 1 or crf_margin < 0:
            raise DataError(f"CRF tiles: tile {crf_tile} must be >= 1 and margin {crf_margin} >= 0")
        self.crf_tile, self.crf_margin = crf_tile, crf_margin

    def variant(self, inference: InferenceSettings | None = None, crf: CRFParams | None = None) -> "Predictor":
        """The same loaded network with other inference settings and CRF (e.g. per request of a server)."""
        other = copy.copy(self)
        other._configure(inference, crf)
        return other

    def _configure(self, inference: InferenceSettings | None, crf: CRFParams | None) -> None:
        if crf is not None:
            check_crf_for(crf, self.classes.num_classes, self.channels)
        self.inference, self.refine = inference, crf_refiner(crf) if crf is not None else None

    def scores(self, image: np.ndarray) -> torch.Tensor:
        """``(C, H, W)`` class scores for an ``(H, W, bands)`` image: logits, or CRF marginals."""
        out = infer_logits(self.model, network_input(image, self.mean, self.std)[None], self.device, self.dtype,
                           self.inference)
        if self.refine is not None:
            out = self.refine(out, image)
        return out[0].cpu()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """``uint8 (H, W)`` class indices. Sliding tiles without TTA stream the image band by band, so memory is
        that of one tile row whatever the image's size; with a CRF, the CRF runs on tiles of ``crf_tile``
        pixels (with ``crf_margin`` of context) of the streamed logits."""
        s = self.inference
        if s is not None and s.mode == "slide" and not s.augmented:
            pixels = torch.from_numpy(np.ascontiguousarray(image))
            if self.refine is None:
                return slide_labels(self.model, pixels, self.mean, self.std, self.device, self.dtype, s.tile,
                                    s.overlap, s.batch).numpy()
            bands = slide_image_bands(self.model, pixels, self.mean, self.std, self.device, self.dtype, s.tile,
                                      s.overlap, s.batch)
            return crf_tile_labels(bands, image, self.refine, *image.shape[:2], self.crf_tile, self.crf_margin).numpy()
        return class_map(self.scores(image), 0).numpy().astype(np.uint8)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """``float32 (C, H, W)`` class probabilities: the softmax of the (blended, augmented) logits, or the CRF's
        marginals when a CRF refines them."""
        scores = self.scores(image)
        return (scores if self.refine is not None else torch.softmax(scores, 0)).numpy().astype(np.float32)

    def predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Class maps of several images; images of one size go through the network in one forward pass when
        the whole image is used without a CRF or TTA (otherwise one at a time, as :meth:`predict`)."""
        s = self.inference
        simple = self.refine is None and (s is None or (s.mode == "whole" and not s.augmented))
        if not simple or len(images) < 2 or len({im.shape for im in images}) > 1:
            return [self.predict(im) for im in images]
        x = torch.stack([network_input(im, self.mean, self.std) for im in images])
        labels = class_map(forward_logits(self.model, x, self.device, self.dtype), 1).cpu().numpy()
        return [lab.astype(np.uint8) for lab in labels]


def predict_paths(checkpoint: str | Path, inputs: list[str | Path], out: str | Path, progress: bool = True,
                  crf: CRFParams | None = None, amp: str = "auto", skip_bad: bool = False,
                  inference: InferenceSettings | None = None, batch: int = 1, save_probs: bool = False,
                  crf_tile: int = 1024) -> dict:
    """Write ``OUT/labels/<stem>.png`` (class indices, palette PNG) and ``OUT/overlays/<stem>.png`` per image,
    and with ``save_probs`` ``OUT/probs/<stem>.npy`` (float16 ``(C, H, W)`` class probabilities, for a CRF or
    DAE downstream). ``batch`` images of one size share a forward pass; with a CRF and sliding tiles, the CRF
    runs on ``crf_tile``-pixel tiles of the streamed logits (see :func:`crf_tile_labels`).

    Each file is written under a temporary name and renamed, so a killed run leaves no partial output
    (and the next run removes the temporaries it left). With ``skip_bad``, an unreadable image is reported
    and skipped instead of stopping the run. Returns ``{"written": n, "skipped": [(path, reason), ...]}``.
    """
    from PIL import Image

    from ..viz.overlay import overlay
    out = Path(out)
    files = collect_images(inputs)
    check_output_folder(out, inputs, files)
    predictor = Predictor(checkpoint, crf=crf, amp=amp, inference=inference, crf_tile=crf_tile)
    if batch < 1:
        raise DataError(f"--batch must be >= 1, got {batch}")
    labels_dir = prepare_output_dir(out / "labels", "output folder")
    overlays_dir = prepare_output_dir(out / "overlays", "output folder")
    probs_dir = prepare_output_dir(out / "probs", "output folder") if save_probs else None
    for d in (labels_dir, overlays_dir, probs_dir):
        if d is not None:
            remove_stale_temporaries(d)
    skipped: list[tuple[Path, str]] = []
    written = 0
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, leave=False)

    def flush(group: list[tuple[Path, np.ndarray]]) -> None:
        nonlocal written
        with memory_guard(str(group[0][0]), group[0][1].shape[:2]):
            if probs_dir is None:
                labels, probs = predictor.predict_batch([im for _, im in group]), [None] * len(group)
            else:  # one pass per image gives both: the label map is the probabilities' argmax
                probs = [predictor.probabilities(im) for _, im in group]
                labels = [p.argmax(0).astype(np.uint8) for p in probs]
        for (f, image), label, prob in zip(group, labels, probs):
            save_png(label, labels_dir / f"{f.stem}.png", palette=predictor.classes.palette)
            with atomic_path(overlays_dir / f"{f.stem}.png") as tmp:
                Image.fromarray(overlay(display_rgb(image), label, predictor.classes.palette)).save(tmp, format="PNG")
            if prob is not None:
                with atomic_path(probs_dir / f"{f.stem}.npy") as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, prob.astype(np.float16))
            written += 1
            bar.update(1)

    try:  # the bar is cleared before any error is printed
        group: list[tuple[Path, np.ndarray]] = []
        for f in files:
            try:
                image = load_image(f, predictor.channels)
            except DataError as e:
                if not skip_bad:
                    raise DataError(f"{e} (pass --skip-bad to report and skip unreadable files)") from None
                skipped.append((f, str(e)))
                tqdm.write(f"skipped: {e}")
                bar.update(1)
                continue
            if group and (len(group) == batch or group[0][1].shape != image.shape):
                flush(group)
                group = []
            group.append((f, image))
        if group:
            flush(group)
    finally:
        bar.close()
    return {"written": written, "skipped": skipped}

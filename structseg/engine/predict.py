"""``structseg predict``: label PNGs and colour overlays for new images, from a checkpoint alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..structured.dense_crf import CRFParams
from ..structured.crf_postprocess import crf_refiner
from ..data.io import IMAGE_EXTENSIONS, atomic_path, load_image, save_png
from ..data.transforms import normalize
from ..errors import DataError
from .checkpoint import checkpoint_classes, load_checkpoint, model_from_checkpoint
from .evaluate import predict_logits
from .metrics import class_map
from .runtime import amp_dtype, pick_device


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Expand files and folders (images by extension, sorted) into a list; stems must be unique."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
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


class Predictor:
    """Segments RGB images with a trained checkpoint (normalisation and classes come from it)."""

    def __init__(self, checkpoint: str | Path, device: torch.device | None = None, crf: CRFParams | None = None,
                 amp: str = "auto"):
        ckpt = load_checkpoint(checkpoint)
        self.classes = checkpoint_classes(ckpt)
        self.mean = tuple(ckpt["normalization"]["mean"])
        self.std = tuple(ckpt["normalization"]["std"])
        self.device = device or pick_device()
        self.dtype = amp_dtype(amp, self.device)
        self.model = model_from_checkpoint(ckpt, checkpoint).to(self.device).eval()
        self.refine = crf_refiner(crf) if crf is not None else None

    def scores(self, image: np.ndarray) -> torch.Tensor:
        """``(C, H, W)`` class scores for a ``uint8 (H, W, 3)`` image: logits, or CRF marginals."""
        x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        out = predict_logits(self.model, normalize(x, self.mean, self.std)[None], self.device, self.dtype)
        if self.refine is not None:
            out = self.refine(out, image)
        return out[0].cpu()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """``uint8 (H, W)`` class indices."""
        return class_map(self.scores(image), 0).numpy().astype(np.uint8)


def predict_paths(checkpoint: str | Path, inputs: list[str | Path], out: str | Path, progress: bool = True,
                  crf: CRFParams | None = None, amp: str = "auto") -> int:
    """Write ``OUT/<stem>.png`` (class indices, palette PNG) and ``OUT/<stem>_overlay.png`` per image."""
    from PIL import Image

    from ..viz.overlay import overlay
    files = collect_images(inputs)
    predictor = Predictor(checkpoint, crf=crf, amp=amp)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in tqdm(files, desc="predict", unit="img", disable=not progress, leave=False):
        image = load_image(f)
        label = predictor.predict(image)
        save_png(label, out / f"{f.stem}.png", palette=predictor.classes.palette)
        with atomic_path(out / f"{f.stem}_overlay.png") as tmp:
            Image.fromarray(overlay(image, label, predictor.classes.palette)).save(tmp, format="PNG")
    return len(files)

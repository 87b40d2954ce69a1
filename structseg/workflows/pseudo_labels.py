"""``structseg data pseudo-labels``: the retraining round of the image-label baseline.

A network trained from tags predicts each tagged training image; the dense CRF refines its scores with the
classes the image is not tagged with excluded, and the argmax over the tags becomes that image's label map.
The result is a new dataset folder in the unified layout (``classes.json``, ``train.txt``, ``labels/``; the
split points at the original images by relative path, nothing is copied), on which an ordinary,
fully supervised run is trained.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from .._io import load_image, partial_dir, prepare_output_dir, save_png
from ..data.tags import read_tags
from ..data.transforms import normalize
from ..engine.checkpoint import load_pretrained
from ..engine.inference import forward_logits
from ..engine.runtime import amp_dtype, pick_device
from ..errors import DataError
from ..structured.crf_postprocess import image_tensor
from ..structured.dense_crf import CRFParams, mean_field


def write_pseudo_labels(checkpoint: str | Path, root: str | Path, tags: str | Path, out: str | Path,
                        crf: CRFParams | None = None, progress: bool = True) -> Path:
    """Label every image of the tags file with the CRF-refined, tag-restricted prediction; returns ``out``."""
    out = Path(out)
    if out.exists():
        raise DataError(f"{out}: already exists; choose a new folder for the pseudo-labelled dataset")
    prepare_output_dir(out.parent, "folder of the pseudo-labelled dataset")
    root = Path(root)
    device = pick_device()
    model = load_pretrained(checkpoint, device)
    entries = read_tags(root, tags, model.classes)
    params = crf or CRFParams()
    dtype = amp_dtype("auto", device)
    tmp = partial_dir(out)
    try:
        (tmp / "labels").mkdir()
        lines = []
        for e in tqdm(entries, desc="pseudo labels", unit="img", disable=not progress):
            image = load_image(e.image)
            x = normalize(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0, *model.normalization)
            logits = forward_logits(model, x[None], device, dtype)
            absent = torch.ones(logits.shape[1], dtype=torch.bool)
            absent[list(e.tags)] = False
            masked = logits.masked_fill(absent.to(logits.device)[None, :, None, None], -1e4)
            q = mean_field(-torch.log_softmax(masked, 1), image_tensor(image, logits.device), params)
            label = q.max(1).indices[0].to(torch.uint8).cpu().numpy()
            name = f"labels/{e.image.stem}.png"
            save_png(label, tmp / name, palette=model.classes.palette)
            lines.append(f"{Path(os.path.relpath(e.image, out)).as_posix()} {name}\n")
        (tmp / "train.txt").write_text("".join(lines))
        (tmp / "classes.json").write_text(json.dumps(model.classes.to_dict(), indent=1) + "\n")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

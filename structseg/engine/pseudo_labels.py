"""Pseudo labels: the retraining round of the image-label baseline (``structseg data pseudo-labels``, and
``weak.method: retrain``, which writes them into its run folder before it trains on them).

A network trained from tags (or several: their softmax outputs averaged) predicts each tagged training image;
the dense CRF refines its scores with the classes the image is not tagged with excluded, and the argmax over
the tags becomes that image's label map. The result is a new dataset folder in the unified layout
(``classes.json``, ``train.txt``, ``labels/``; the split points at the original images by relative path,
nothing is copied), on which an ordinary, fully supervised run is trained. ``colour`` adds each image's
per-class colour models to the unary before the CRF (:mod:`structseg.structured.colour_model`);
``min_confidence`` writes the ignore index where the refined marginal of the chosen class is below it
(uncertain pixels are left out of the loss rather than taught wrong); ``val_split`` adds the original dataset's
validation split (paths to its images and label maps) so the run on the pseudo labels is scored on real
labels as it trains.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from .._io import load_image, partial_dir, prepare_output_dir, save_png
from ..config import WeakConfig
from ..data.layout import read_split
from ..data.tags import read_tags
from ..data.transforms import network_input
from ..errors import CheckpointError, ConfigError, DataError
from ..structured.colour_model import ColourModel
from ..structured.crf_postprocess import image_tensor
from ..structured.dense_crf import CRFParams
from ..structured.seed_expand_constrain import tag_restricted_marginals
from .checkpoint import load_pretrained
from .distributed import barrier, is_main
from .inference import forward_logits
from .runtime import amp_dtype, pick_device
from .weak import colour_model, crf_params

def _relative(path: Path, out: Path) -> str:
    """``path`` as a split entry of the dataset at ``out`` (relative, so the folder can move with its source)."""
    return Path(os.path.relpath(path, out)).as_posix()


def load_teachers(checkpoints: list[str | Path], device: torch.device) -> list[torch.nn.Module]:
    """The teacher networks; several must share their classes (their softmax outputs are averaged)."""
    models = [load_pretrained(c, device) for c in checkpoints]
    for c, m in zip(checkpoints[1:], models[1:]):
        if m.classes.names != models[0].classes.names:
            raise DataError(f"teacher {c}: classes {m.classes.names} differ from {checkpoints[0]}'s "
                            f"{models[0].classes.names}; an ensemble of teachers needs one class list")
    return models


def teacher_scores(models: list[torch.nn.Module], image, device: torch.device, dtype) -> torch.Tensor:
    """Scores ``(1, K, H, W)`` for :func:`tag_restricted_marginals`: one teacher's logits, or the ``log`` of
    several teachers' mean softmax."""
    logits = [forward_logits(m, network_input(image, *m.normalization)[None], device, dtype) for m in models]
    if len(logits) == 1:
        return logits[0]
    probs = sum(torch.softmax(x.float(), 1) for x in logits) / len(logits)
    return torch.log(probs.clamp(min=1e-30))


def write_pseudo_labels(checkpoint: str | Path | list[str | Path], root: str | Path, tags: str | Path,
                        out: str | Path,
                        crf: CRFParams | None = None, progress: bool = True, min_confidence: float = 0.0,
                        val_split: str | None = None, colour: ColourModel | None = None,
                        device: torch.device | None = None) -> Path:
    """Label every image of the tags file with the CRF-refined, tag-restricted prediction; returns ``out``.
    ``checkpoint`` may be a list: the teachers' softmax outputs are averaged (an ensemble) before the rest."""
    if not 0.0 <= min_confidence < 1.0:
        raise DataError(f"min_confidence must be in [0, 1), got {min_confidence}")
    if colour is not None:
        try:
            colour.validate()
        except ValueError as e:
            raise DataError(str(e)) from None
    out = Path(out)
    if out.exists():
        raise DataError(f"{out}: already exists; choose a new folder for the pseudo-labelled dataset")
    prepare_output_dir(out.parent, "folder of the pseudo-labelled dataset")
    root = Path(root)
    device = device or pick_device()
    models = load_teachers(list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint], device)
    model = models[0]
    entries = read_tags(root, tags, model.classes)
    val_pairs = read_split(root, val_split) if val_split else []
    params = crf or CRFParams()
    dtype = amp_dtype("auto", device)
    tmp = partial_dir(out)
    try:
        (tmp / "labels").mkdir()
        lines = []
        for e in tqdm(entries, desc="pseudo labels", unit="img", disable=not progress):
            image = load_image(e.image)
            logits = teacher_scores(models, image, device, dtype)
            tags_hot = torch.zeros(1, logits.shape[1], device=logits.device)
            tags_hot[0, list(e.tags)] = 1.0
            q = tag_restricted_marginals(logits, image_tensor(image, logits.device), tags_hot, params, colour)
            best = q.max(1)
            label = best.indices[0].to(torch.uint8)
            label[best.values[0] < min_confidence] = model.classes.ignore_index
            label = label.cpu().numpy()
            name = f"labels/{e.image.stem}.png"
            save_png(label, tmp / name, palette=model.classes.palette)
            lines.append(f"{_relative(e.image, out)} {name}\n")
        (tmp / "train.txt").write_text("".join(lines))
        if val_pairs:
            (tmp / "val.txt").write_text("".join(f"{_relative(i, out)} {_relative(lab, out)}\n" for i, lab in val_pairs))
        (tmp / "classes.json").write_text(json.dumps(model.classes.to_dict(), indent=1) + "\n")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def retrain_labels(cfg: WeakConfig, root: str | Path, out_dir: Path, device: torch.device,
                   progress: bool = True) -> Path:
    """``weak.method: retrain``: the teacher's pseudo labels of the tagged images, in ``out_dir/pseudo_labels``
    (written once, by the main process; a resumed run reuses them)."""
    folder = out_dir / "pseudo_labels"
    if not cfg.teacher:
        raise ConfigError("config key 'weak.teacher' is empty: weak.method retrain trains on the pseudo labels of a "
                          "network trained from tags; give a shipped model's name or a run's best.pt")
    if is_main() and not folder.exists():
        try:
            write_pseudo_labels(cfg.teacher, root, cfg.tags, folder, crf_params(cfg.prior), progress,
                                colour=colour_model(cfg.colour), device=device)
        except CheckpointError as e:  # only the teachers are checkpoints here
            raise ConfigError(f"config key 'weak.teacher': {e} (a shipped model's name or a run's best.pt, relative "
                              "to where you run; train the teachers first, see the config)") from None
    barrier()
    return folder

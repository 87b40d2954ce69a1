"""Shared fixtures: tiny synthetic datasets and helpers to build broken ones."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from structseg.data.synth import write_synthetic

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """24 synthetic 48x64 images (18 train / 6 val), read-only by convention."""
    return write_synthetic(tmp_path_factory.mktemp("synth") / "ds", n=24, seed=1, size=(48, 64))


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic dataset that a test may break."""
    dst = tmp_path / "ds"
    shutil.copytree(synth_root, dst)
    return dst


def make_dataset(root: Path, labels: list[np.ndarray], classes: list[str], ignore: int = 255,
                 images: list[np.ndarray] | None = None) -> Path:
    """Write a dataset in the unified layout from label arrays (images are random unless given)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    lines = []
    for i, lab in enumerate(labels):
        img = images[i] if images is not None else rng.integers(0, 255, (*lab.shape, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "img" / f"{i}.png")
        Image.fromarray(lab.astype(np.uint8)).save(root / "lab" / f"{i}.png")
        lines.append(f"img/{i}.png lab/{i}.png\n")
    (root / "train.txt").write_text("".join(lines))
    (root / "classes.json").write_text(json.dumps({"classes": classes, "ignore_index": ignore}))
    return root

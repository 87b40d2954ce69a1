"""Generative fault injection: random config values and malformed files thrown at train, eval, predict and
data check, in-process. Each run either succeeds or raises the project's one error type (StructsegError,
printed as one ``error:`` line), never anything else, and never writes outside its output folder.
Bounded (a fixed, derandomised set of examples) so the default test run stays short."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from structseg.config import config_from_dict  # noqa: E402
from structseg.errors import StructsegError  # noqa: E402

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)

# values of every kind a hand-edited YAML file can hold
NUMBERS = st.one_of(st.integers(-3, 5), st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.sampled_from([0, -1, 1e-3, 1e9, float("nan"), float("inf")]))
VALUES = st.one_of(NUMBERS, st.none(), st.booleans(), st.text(max_size=6),
                   st.lists(NUMBERS, max_size=4), st.dictionaries(st.text(max_size=4), NUMBERS, max_size=2))
KEYS = ["model.name", "model.args", "model.pretrained", "data.workers", "data.mean", "data.std", "data.cache",
        "augment.scale", "augment.crop_size", "augment.hflip", "augment.brightness", "augment.hue",
        "optimizer.name", "optimizer.lr", "optimizer.momentum", "optimizer.betas", "optimizer.backbone_lr_scale",
        "schedule.name", "schedule.power", "schedule.warmup_epochs", "train.epochs", "train.batch_size",
        "train.class_weights", "train.aux_weight", "train.amp", "train.val_every", "train.patience",
        "train.seed", "train.threads", "no_such.section", "train.no_such_key"]


def _nest(flat: dict) -> dict:
    out: dict = {}
    for key, v in flat.items():
        section, name = key.split(".")
        out.setdefault(section, {})[name] = v
    return out


def _listing(folder: Path, skip: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")
            if p.is_file() and skip not in (p, *p.parents)}


@settings(max_examples=300, **SETTINGS)
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5))
def test_random_config_values_load_or_raise_one_config_error(flat):
    try:
        cfg = config_from_dict(_nest(flat))
    except StructsegError:
        return
    # what loads is in range
    assert cfg.train.epochs >= 1 and cfg.train.batch_size >= 1 and math.isfinite(cfg.optimizer.lr)
    assert cfg.optimizer.lr > 0 and cfg.augment.scale[0] > 0


TRAIN_KEYS = st.fixed_dictionaries({}, optional={
    "train.epochs": st.sampled_from([0, 1, -1, 2.5, "x"]),
    "train.batch_size": st.sampled_from([0, 2, -2, 100, 4]),
    "augment.crop_size": st.sampled_from([[24, 24], [48], [0, 0], None, [200, 30], "big"]),
    "augment.scale": st.sampled_from([[0.5, 1.5], [1, 0.5], [0, 1], [float("nan"), 1]]),
    "optimizer.lr": st.sampled_from([0.05, -1, float("nan"), 1e-3, 1e6]),
    "optimizer.name": st.sampled_from(["sgd", "adamw", "adam"]),
    "data.std": st.sampled_from([[0.2, 0.2, 0.2], [0, 0, 0], [1, 2]]),
    "train.class_weights": st.sampled_from(["median_frequency", [1, 1, 1, 1, 1], [1, 2], "enet", [-1] * 5]),
    "train.val_every": st.sampled_from([1, 0, 3]),
    "model.args": st.sampled_from([{"base_channels": 4, "depth": 2}, {"depth": -1}, {"base_channels": 0},
                                   {"backbone": "resnt18"}, {"nope": 1}, {"base_channels": 4, "depth": 9}]),
    "model.name": st.sampled_from(["unet", "unet", "segformer"]),
})


@settings(max_examples=14, **SETTINGS)
@given(TRAIN_KEYS)
def test_train_with_random_settings_succeeds_or_raises_one_error(synth_root, tmp_path_factory, flat):
    work = tmp_path_factory.mktemp("gen_train")
    raw = {"model": {"name": "unet", "args": {"base_channels": 4, "depth": 2}},
           "data": {"root": str(synth_root), "workers": 0},
           "augment": {"scale": [0.8, 1.2], "crop_size": [32, 32]},
           "optimizer": {"name": "sgd", "lr": 0.05},
           "train": {"epochs": 1, "batch_size": 4, "val_every": 1, "tensorboard": False, "threads": 1}}
    for key, v in flat.items():
        section, name = key.split(".")
        raw[section][name] = v
    before = _listing(synth_root.parent, work)
    out = work / "run"
    try:
        from structseg.engine.trainer import train
        cfg = config_from_dict(raw)
        train(cfg, out, progress=False)
    except StructsegError:
        assert not out.exists() or (out / "last.pt").exists()  # a failed start leaves nothing behind
    else:
        assert (out / "last.pt").is_file() and (out / "config.yaml").is_file()
    assert _listing(synth_root.parent, work) == before  # nothing written beside the run folder
    shutil.rmtree(work, ignore_errors=True)


def _corrupt(kind: str, rng: np.random.Generator, path: Path, shape: tuple[int, int], label: bool) -> None:
    h, w = shape
    if kind == "garbage":
        path.write_bytes(rng.bytes(int(rng.integers(0, 300))))
    elif kind == "truncated":
        arr = rng.integers(0, 5 if label else 255, (h, w) if label else (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: max(8, len(data) // 2)])
    elif kind == "wrong_size":
        arr = rng.integers(0, 5, (h + 3, w - 2), dtype=np.uint8) if label else rng.integers(0, 255, (h + 3, w - 2, 3),
                                                                                            dtype=np.uint8)
        Image.fromarray(arr).save(path)
    elif kind == "out_of_range":
        Image.fromarray(np.full((h, w), 77 if label else 3, np.uint8)).save(path)
    elif kind == "colour_label":
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    elif kind == "sixteen_bit":
        Image.fromarray((rng.integers(0, 5, (h, w)) * (300 if label else 1000)).astype(np.uint16)).save(path)
    elif kind == "missing":
        path.unlink()
    elif kind == "folder":
        path.unlink()
        path.mkdir()


KINDS = st.sampled_from(["garbage", "truncated", "wrong_size", "out_of_range", "colour_label", "sixteen_bit",
                         "missing", "folder", "fine"])


@pytest.fixture(scope="module")
def tiny_checkpoint(synth_root, tmp_path_factory):
    from structseg.engine.trainer import train
    cfg = config_from_dict({"model": {"name": "unet", "args": {"base_channels": 4, "depth": 2}},
                            "data": {"root": str(synth_root), "workers": 0},
                            "augment": {"crop_size": [32, 32]}, "optimizer": {"lr": 0.05},
                            "train": {"epochs": 1, "batch_size": 4, "tensorboard": False, "threads": 1}})
    run = tmp_path_factory.mktemp("gen_ckpt") / "run"
    train(cfg, run, progress=False)
    return run / "best.pt"


@settings(max_examples=20, **SETTINGS)
@given(image_kind=KINDS, label_kind=KINDS, seed=st.integers(0, 2 ** 16), command=st.sampled_from(
    ["check", "eval", "predict"]))
def test_malformed_images_and_labels_give_one_error(synth_root, tiny_checkpoint, tmp_path_factory, image_kind,
                                                    label_kind, seed, command):
    from structseg.data.check import check_split
    from structseg.engine.predict import predict_paths
    from structseg.engine.report import evaluate_checkpoint
    work = tmp_path_factory.mktemp("gen_files")
    root = work / "ds"
    shutil.copytree(synth_root, root)
    rng = np.random.default_rng(seed)
    img_rel, lab_rel = (root / "val.txt").read_text().split("\n")[0].split()
    shape = np.array(Image.open(root / lab_rel)).shape
    if image_kind != "fine":
        _corrupt(image_kind, rng, root / img_rel, shape, label=False)
    if label_kind != "fine":
        _corrupt(label_kind, rng, root / lab_rel, shape, label=True)
    out = work / "out"
    before = _listing(work, out)
    try:
        if command == "check":
            check_split(root, "val.txt", progress=False)
        elif command == "eval":
            evaluate_checkpoint(tiny_checkpoint, root, "val.txt", out, panels=1, progress=False)
        else:
            predict_paths(tiny_checkpoint, [root / img_rel], out, progress=False)
    except StructsegError as e:
        assert str(e) and "\n" not in str(e)
    assert _listing(work, out) == before  # the inputs are untouched, nothing written beside the output
    shutil.rmtree(work, ignore_errors=True)


@settings(max_examples=15, **SETTINGS)
@given(content=st.one_of(
    st.binary(max_size=200),
    st.sampled_from(["dict_no_format", "wrong_format", "bad_state", "no_model", "list", "tensor"])))
def test_malformed_checkpoints_give_one_error(synth_root, tiny_checkpoint, tmp_path_factory, content):
    from structseg.engine.checkpoint import load_checkpoint
    from structseg.engine.predict import Predictor
    work = tmp_path_factory.mktemp("gen_ckpt_files")
    path = work / "x.pt"
    good = load_checkpoint(tiny_checkpoint)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        payload = {"dict_no_format": {"state_dict": {}}, "wrong_format": {**good, "format": "v0"},
                   "bad_state": {**good, "state_dict": {"encoder.0.0.weight": torch.zeros(1)}},
                   "no_model": {k: v for k, v in good.items() if k != "model"},
                   "list": [1, 2, 3], "tensor": torch.zeros(3)}[content]
        torch.save(payload, path)
    try:
        Predictor(path)
    except StructsegError as e:
        assert "\n" not in str(e)
    shutil.rmtree(work, ignore_errors=True)

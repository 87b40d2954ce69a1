"""Images of any band count: .npy / TIFF / 16-bit loaders, jitter only on RGB, training, eval and predict."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from structseg._io import display_rgb, load_image
from structseg.cli import main
from structseg.config import config_from_dict
from structseg.data.dataset import SegmentationDataset
from structseg.data.transforms import TrainTransform, image_tensor01
from structseg.engine.checkpoint import load_checkpoint
from structseg.engine.predict import Predictor
from structseg.engine.trainer import train
from structseg.errors import ConfigError, DataError
from structseg.structured.dense_crf import CRFParams


def test_npy_bands_load_as_stored_and_the_band_count_is_checked(tmp_path):
    arr = np.arange(5 * 7 * 4, dtype=np.uint16).reshape(5, 7, 4) * 300
    np.save(tmp_path / "a.npy", arr)
    got = load_image(tmp_path / "a.npy", channels=4)
    assert got.dtype == np.uint16 and np.array_equal(got, arr)
    with pytest.raises(DataError, match=r"a\.npy: 4 band\(s\) of 7x5; the model takes 2"):
        load_image(tmp_path / "a.npy", channels=2)
    with pytest.raises(DataError, match=r"a\.npy: array of shape \(5, 7, 4\).*\(H, W, 3\) uint8"):
        load_image(tmp_path / "a.npy")  # an RGB model
    np.save(tmp_path / "grey.npy", arr[..., 0])
    assert load_image(tmp_path / "grey.npy", channels=1).shape == (5, 7, 1)
    f = np.zeros((4, 4, 2), np.float32)
    f[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", f)
    with pytest.raises(DataError, match="nan.npy: holds NaN"):
        load_image(tmp_path / "nan.npy", channels=2)
    np.save(tmp_path / "i64.npy", np.zeros((4, 4, 2), np.int64))
    with pytest.raises(DataError, match="i64.npy: bands of type int64; expected uint8, uint16 or float32"):
        load_image(tmp_path / "i64.npy", channels=2)


def test_a_pickled_npy_is_refused_not_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))
    with open(tmp_path / "evil.npy", "wb") as fh:
        np.save(fh, np.array([Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="evil.npy: not a readable .npy array"):
        load_image(tmp_path / "evil.npy", channels=4)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="junk.npy: not a readable .npy array"):
        load_image(tmp_path / "junk.npy", channels=4)


def test_tiff_bands_interleaved_and_planar(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    arr = np.random.default_rng(0).integers(0, 65535, (6, 9, 5), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "hwc.tif", arr, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "chw.tif", np.moveaxis(arr, -1, 0), photometric="minisblack", planarconfig="separate")
    assert np.array_equal(load_image(tmp_path / "hwc.tif", channels=5), arr)
    assert np.array_equal(load_image(tmp_path / "chw.tif", channels=5), arr)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match="bad.tif: corrupt or unreadable TIFF"):
        load_image(tmp_path / "bad.tif", channels=5)


def test_16_bit_png_keeps_its_values_as_one_band(tmp_path):
    arr = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    got = load_image(tmp_path / "d.png", channels=1)
    assert got.shape == (2, 2, 1) and got.dtype == np.uint16 and np.array_equal(got[..., 0], arr)
    # and as an RGB model sees it: scaled by the full range to 8 bits, as before
    assert np.array_equal(load_image(tmp_path / "d.png")[..., 0], np.round(arr / 257).astype(np.uint8))


def test_band_scaling_by_type():
    u16 = np.array([[[0, 65535, 13107]]], dtype=np.uint16)  # (1, 1, 3)
    assert torch.allclose(image_tensor01(u16)[:, 0, 0], torch.tensor([0.0, 1.0, 0.2]))
    assert torch.allclose(image_tensor01(torch.from_numpy(u16))[:, 0, 0], torch.tensor([0.0, 1.0, 0.2]))
    u8 = np.array([[[0, 255, 51, 102]]], dtype=np.uint8)
    assert torch.allclose(image_tensor01(u8)[:, 0, 0], torch.tensor([0.0, 1.0, 0.2, 0.4]))
    f = np.array([[[-3.5, 7.25]]], dtype=np.float32)  # floats are taken as they are
    assert image_tensor01(f)[:, 0, 0].tolist() == [-3.5, 7.25]


def test_colour_jitter_only_on_rgb():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, (20, 24)).astype(np.uint8)
    jitter = TrainTransform(mean=(0.0,) * 4, std=(1.0,) * 4, scale=(1.0, 1.0), crop_size=(16, 16))
    plain = TrainTransform(mean=(0.0,) * 4, std=(1.0,) * 4, scale=(1.0, 1.0), crop_size=(16, 16),
                           brightness=0, contrast=0, saturation=0, hue=0)
    four = rng.integers(0, 255, (20, 24, 4), dtype=np.uint8)
    a, la = jitter(four, label, torch.Generator().manual_seed(3))
    b, lb = plain(four, label, torch.Generator().manual_seed(3))
    assert a.shape == (4, 16, 16) and torch.equal(a, b) and torch.equal(la, lb)  # same crop, no colour change
    rgb = four[..., :3]
    jitter.mean, jitter.std, plain.mean, plain.std = (0.0,) * 3, (1.0,) * 3, (0.0,) * 3, (1.0,) * 3
    c, _ = jitter(rgb, label, torch.Generator().manual_seed(3))
    d, _ = plain(rgb, label, torch.Generator().manual_seed(3))
    assert not torch.equal(c, d)  # RGB is still jittered


def test_display_rgb():
    grey = np.array([[[0], [65535]]], dtype=np.uint16)
    assert display_rgb(grey).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    five = np.zeros((1, 2, 5), np.uint8)
    five[0, 1] = [10, 20, 30, 40, 50]
    assert display_rgb(five).tolist() == [[[0, 0, 0], [10, 20, 30]]]
    f = np.array([[[-1.0], [1.0]]], dtype=np.float32)
    assert display_rgb(f).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def _nir_dataset(root, n=16, size=(32, 40)):
    """4-band .npy images whose classes show only in band 4 (RGB is noise): only a network that sees the
    fourth band can segment them."""
    rng = np.random.default_rng(1)
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    lines = []
    for i in range(n):
        lab = np.zeros(size, np.uint8)
        y, x = rng.integers(4, 16), rng.integers(4, 20)
        lab[y:y + 12, x:x + 16] = 1
        img = rng.integers(0, 65535, (*size, 4), dtype=np.uint16)
        img[..., 3] = np.where(lab == 1, 60000, 5000) + rng.integers(0, 2000, size)
        np.save(root / "img" / f"{i}.npy", img)
        Image.fromarray(lab).save(root / "lab" / f"{i}.png")
        lines.append(f"img/{i}.npy lab/{i}.png\n")
    (root / "train.txt").write_text("".join(lines[:12]))
    (root / "val.txt").write_text("".join(lines[12:]))
    (root / "classes.json").write_text(json.dumps({"classes": ["ground", "crop"], "ignore_index": 255}))
    return root


def _config(root, **data):
    return config_from_dict({
        "model": {"name": "unet", "args": {"base_channels": 8, "depth": 2}},
        "data": {"root": str(root), "workers": 0, "channels": 4, **data},
        "augment": {"scale": [1.0, 1.0], "crop_size": [32, 32]},
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": 25, "batch_size": 4, "val_every": 25, "tensorboard": False, "amp": "off"},
    })


def test_four_band_training_learns_from_the_fourth_band_and_predicts_npy(tmp_path, capsys):
    root = _nir_dataset(tmp_path / "nir")
    summary = train(_config(root), tmp_path / "run", progress=False)
    assert summary["best_miou"] > 0.9  # the classes are visible in band 4 only
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["model"]["args"]["in_channels"] == 4
    assert len(ckpt["normalization"]["mean"]) == 4
    ds = SegmentationDataset(root, "val.txt", channels=4)
    image, label = ds.load(0)
    pred = Predictor(tmp_path / "run" / "best.pt", amp="off").predict(image)
    assert (pred == label).mean() > 0.95
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "run" / "best.pt"), str(root / "img" / "13.npy"), "--out", str(out),
                 "--quiet"]) == 0
    assert np.array(Image.open(out / "labels" / "13.png")).shape == (32, 40)
    assert np.array(Image.open(out / "overlays" / "13.png")).shape == (32, 40, 3)
    assert main(["eval", str(tmp_path / "run" / "best.pt"), "--data", str(root), "--split", "val.txt",
                 "--out", str(tmp_path / "ev"), "--quiet", "--panels", "1"]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["miou"] > 0.9
    with pytest.raises(ConfigError, match="appearance kernel reads RGB colour; this model takes 4-band"):
        Predictor(tmp_path / "run" / "best.pt", crf=CRFParams())
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(rgb)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run" / "best.pt"), str(rgb), "--out", str(tmp_path / "p2"),
                 "--quiet"]) == 2
    assert "rgb.png: 3 band(s) of 40x32; the model takes 4" in capsys.readouterr().err


def test_band_settings_that_disagree_are_config_errors(tmp_path):
    root = _nir_dataset(tmp_path / "nir", n=14)
    cfg = _config(root)
    cfg.model.args["in_channels"] = 3
    with pytest.raises(ConfigError, match="'model.args.in_channels' is 3 but 'data.channels' is 4"):
        train(cfg, tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="'data.mean': 3 values for 4 channel"):
        train(_config(root, mean=[0.5, 0.5, 0.5]), tmp_path / "b", progress=False)
    cfg = _config(root)
    cfg.model.crf = {"kind": "mean_field"}
    with pytest.raises(ConfigError, match="model.crf mean_field needs the dense CRF's colour kernel"):
        train(cfg, tmp_path / "c", progress=False)
    with pytest.raises(DataError, match=r"0\.npy: array of shape \(32, 40, 4\).*set data.channels"):
        train(_config(root, channels=3), tmp_path / "d", progress=False)

"""End to end through the command line: train -> eval -> predict, and bad input at the CLI."""
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from structseg.cli import main


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """A U-Net trained for a few seconds on the synthetic set, via ``structseg train``."""
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "unet", "args": {"base_channels": 8, "depth": 3}},
        "data": {"root": str(synth_root), "workers": 0},
        "augment": {"scale": [0.8, 1.25], "crop_size": [48, 48]},
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "train": {"epochs": 30, "batch_size": 6, "val_every": 10, "tensorboard": False},
    }))
    assert main(["train", str(cfg), "--out", str(tmp / "run"), "--quiet", "--set", "train.seed=1"]) == 0
    return tmp, tmp / "run" / "best.pt"


def test_train_eval_predict_end_to_end(trained, synth_root, capsys):
    tmp, ckpt = trained
    assert (tmp / "run" / "curves.png").exists() and (tmp / "run" / "last.pt").exists()
    saved = yaml.safe_load((tmp / "run" / "config.yaml").read_text())
    assert saved["train"]["seed"] == 1  # the override is in the resolved config
    out = tmp / "eval"
    assert main(["eval", str(ckpt), "--data", str(synth_root), "--split", "val.txt", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert {"miou", "mean_acc", "pixel_acc", "per_class_iou", "confusion"} <= set(m)
    assert set(m["per_class_iou"]) == {"sky", "grass", "road", "disc", "box"}
    assert 0 <= m["miou"] <= 1 and 0 <= m["pixel_acc"] <= 1
    # chance level: predicting the most frequent class everywhere scores below 0.15 mIoU here
    assert m["miou"] > 0.45, m["miou"]
    conf = np.array(m["confusion"])
    assert conf.shape == (5, 5)
    assert m["pixel_acc"] == pytest.approx(np.trace(conf) / conf.sum())
    for name in ("confusion.png", "per_class_iou.png"):
        assert Image.open(out / name).size[0] > 100
    assert len(list((out / "panels").glob("*.png"))) == 4
    assert "mIoU" in capsys.readouterr().out

    pred = tmp / "pred"
    img = synth_root / "images" / "0023.png"
    assert main(["predict", str(ckpt), str(img), "--out", str(pred), "--quiet"]) == 0
    label = np.array(Image.open(pred / "labels" / "0023.png"))
    assert label.shape == (48, 64) and label.max() < 5
    assert Image.open(pred / "overlays" / "0023.png").size == (64, 48)
    assert main(["predict", str(ckpt), str(synth_root / "images"), "--out", str(tmp / "pred_dir"), "--quiet"]) == 0
    assert len(list((tmp / "pred_dir" / "overlays").glob("*.png"))) == 24


def run_error(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    last = err.strip().splitlines()[-1].split("\r")[-1]
    assert last.startswith("error: ") and "Traceback" not in err
    return last


def test_bad_input_gives_one_clear_error(trained, synth_root, tmp_path, capsys):
    _, ckpt = trained
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {epoch: 3}\n")
    assert "unknown config key 'train.epoch'" in run_error(["train", str(cfg), "--out", str(tmp_path / "r")], capsys)
    assert not (tmp_path / "r").exists()
    cfg.write_text("model: {name: unet3}\n")
    assert "unknown model 'unet3'" in run_error(["train", str(cfg), "--set", f"data.root={synth_root}",
                                                   "--out", str(tmp_path / "r")], capsys)
    # a dataset with another class count than the checkpoint
    other = tmp_path / "other"
    other.mkdir()
    for sub in ("images", "labels"):
        (other / sub).mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(other / "labels" / "a.png")
    (other / "val.txt").write_text("images/a.png labels/a.png\n")
    (other / "classes.json").write_text(json.dumps({"classes": ["x", "y", "z"], "ignore_index": 255}))
    err = run_error(["eval", str(ckpt), "--data", str(other), "--split", "val.txt", "--out", str(tmp_path / "e")],
                    capsys)
    assert "model has 5 classes but the dataset has 3" in err
    assert not (tmp_path / "e").exists()
    # corrupt checkpoint, non-image input, missing input
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert "bad.pt: not a readable checkpoint" in run_error(["predict", str(bad), str(other / "images" / "a.png"),
                                                             "--out", str(tmp_path / "p")], capsys)
    txt = tmp_path / "notes.png"
    txt.write_text("hello")
    assert "notes.png: not an image" in run_error(["predict", str(ckpt), str(txt), "--out", str(tmp_path / "p")],
                                                  capsys)
    assert not list((tmp_path / "p").glob("notes*"))
    assert "nothing.png: no such file" in run_error(["predict", str(ckpt), str(tmp_path / "nothing.png"),
                                                     "--out", str(tmp_path / "p")], capsys)


def test_data_commands(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "s"), "--n", "6", "--seed", "3", "--height", "32",
                 "--width", "40"]) == 0
    assert main(["data", "check", str(tmp_path / "s"), "--split", "train.txt"]) == 0
    out = capsys.readouterr().out
    assert "0 problem(s)" in out and "sky" in out
    lab = tmp_path / "s" / "labels" / "0000.png"
    arr = np.array(Image.open(lab))
    arr[0, 0] = 42
    Image.fromarray(arr).save(lab)
    assert main(["data", "check", str(tmp_path / "s"), "--split", "train.txt"]) == 1
    assert "values [42]" in capsys.readouterr().out


def test_crf_search_then_eval_with_the_chosen_setting(trained, synth_root, tmp_path, capsys):
    _, ckpt = trained
    best = tmp_path / "crf.yaml"
    assert main(["crf", "search", str(ckpt), "--data", str(synth_root), "--split", "val.txt", "--out", str(best),
                 "--grid", "appearance_weight=2,8", "--grid", "appearance_xy=10,40", "--grid", "appearance_rgb=20",
                 "--crf-set", "iterations=3", "--quiet"]) == 0
    report = json.loads(best.with_suffix(".json").read_text())
    assert len(report["results"]) == 4
    top = max(report["results"], key=lambda r: r["miou"])
    chosen = yaml.safe_load(best.read_text())
    assert chosen == top["params"] and chosen["iterations"] == 3
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["eval", str(ckpt), "--data", str(synth_root), "--split", "val.txt", "--out", str(out),
                 "--crf", str(best), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["miou"] == pytest.approx(top["miou"], abs=1e-9)
    assert m["crf"] == chosen
    # the search's "no CRF" row is the plain evaluation
    assert main(["eval", str(ckpt), "--data", str(synth_root), "--split", "val.txt", "--out", str(tmp_path / "plain"),
                 "--panels", "0", "--quiet"]) == 0
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert report["baseline"]["miou"] == pytest.approx(plain["miou"], abs=1e-9)
    assert plain["crf"] is None


def test_crf_flags_errors(trained, synth_root, tmp_path, capsys):
    _, ckpt = trained
    img = str(synth_root / "images" / "0000.png")
    assert "crf.iteration" in run_error(["predict", str(ckpt), img, "--out", str(tmp_path / "p"), "--crf",
                                         "--crf-set", "iteration=3"], capsys)
    assert "--crf-set needs --crf" in run_error(["predict", str(ckpt), img, "--out", str(tmp_path / "p"),
                                                  "--crf-set", "iterations=3"], capsys)
    assert "must be a positive finite number" in run_error(["predict", str(ckpt), img, "--out", str(tmp_path / "p"), "--crf",
                                            "--crf-set", "appearance_xy=0"], capsys)
    assert "missing.yaml: CRF parameter file not found" in run_error(
        ["eval", str(ckpt), "--data", str(synth_root), "--split", "val.txt", "--crf", str(tmp_path / "missing.yaml")],
        capsys)
    assert main(["predict", str(ckpt), img, "--out", str(tmp_path / "p"), "--crf", "--quiet"]) == 0
    assert (tmp_path / "p" / "labels" / "0000.png").exists()

"""No command destroys a user's files or leaves a half-written result; config values are range-checked;
resuming refuses changed settings; a run folder belongs to one run (issue: fault-injection pass)."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from structseg.cli import main
from structseg.config import config_from_dict, yaml_load
from structseg.engine.run_folder import RunLock
from structseg.engine.trainer import train
from structseg.errors import ConfigError, StructsegError


def tiny(root, **train_keys):
    return config_from_dict({
        "model": {"name": "unet", "args": {"base_channels": 4, "depth": 2}},
        "data": {"root": str(root), "workers": 0},
        "augment": {"scale": [0.8, 1.2], "crop_size": [32, 32]},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 1, "batch_size": 4, "val_every": 1, "tensorboard": False, **train_keys},
    })


def error_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("safety") / "run"
    train(tiny(synth_root), run, progress=False)
    return run


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "'train.epochs': 0 is out of range; expected an integer >= 1"),
    ("train.epochs=-1", "'train.epochs': -1 is out of range"),
    ("train.batch_size=-2", "'train.batch_size': -2 is out of range"),
    ("train.batch_size=0", "'train.batch_size': 0 is out of range"),
    ("train.val_every=0", "'train.val_every': 0 is out of range"),
    ("augment.crop_size=[48]", "'augment.crop_size': [48] is out of range; expected null or [height, width]"),
    ("augment.crop_size=[0,0]", "'augment.crop_size': [0, 0] is out of range"),
    ("data.workers=-1", "'data.workers': -1 is out of range"),
    ("optimizer.lr=-1", "'optimizer.lr': -1.0 is out of range; expected a positive finite number"),
    ("optimizer.lr=.nan", "'optimizer.lr': nan is out of range"),
    ("data.std=[0,0,0]", "'data.std': [0.0, 0.0, 0.0] is out of range; expected null or positive numbers, one per channel"),
    ("augment.scale=[2,1]", "'augment.scale': [2.0, 1.0] is out of range"),
])
def test_every_config_value_is_range_checked_at_load(override, message):
    with pytest.raises(ConfigError, match=f"config key {message}".replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        config_from_dict({}, [override])


def test_yaml_floats_in_any_notation():
    assert yaml_load("lr: 1e-3\nb: 2E+5\nc: -4.5e-2\nd: 7\ne: .5") == {"lr": 0.001, "b": 2e5, "c": -0.045, "d": 7,
                                                                      "e": 0.5}
    assert config_from_dict(yaml_load("optimizer: {lr: 1e-3}")).optimizer.lr == 0.001
    assert config_from_dict({}, ["optimizer.lr=5e-4"]).optimizer.lr == 0.0005


@pytest.mark.parametrize("args, message", [
    ({"depth": -1}, "argument depth=-1 is out of range; expected a positive integer"),
    ({"base_channels": 0}, "argument base_channels=0 is out of range"),
])
def test_bad_model_arguments_are_one_config_error(synth_root, tmp_path, args, message):
    cfg = tiny(synth_root)
    cfg.model.args = args
    with pytest.raises(ConfigError, match=message):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # a run that failed before its first epoch leaves nothing


def test_a_run_folder_in_use_is_refused_with_its_holder(synth_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename,
                                               "started": "2026-12-01 10:00:00"}))
        with pytest.raises(StructsegError, match=f"run folder in use by process {sleeper.pid}"):
            train(tiny(synth_root), run, progress=False)
        assert not (run / "metrics.jsonl").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone: its lock is stale and taken over
    train(tiny(synth_root), run, progress=False)
    assert (run / "last.pt").is_file() and not (run / ".lock").exists()


def test_the_lock_is_exclusive_and_released():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        with RunLock(d):
            with pytest.raises(StructsegError, match="in use by process"):
                RunLock(d).__enter__()
        with RunLock(d):
            pass


def test_resuming_with_changed_settings_is_refused_naming_the_keys(synth_root, tmp_path):
    run = tmp_path / "run"
    train(tiny(synth_root, epochs=2), run, progress=False, stop_after_epochs=1)
    before = (run / "config.yaml").read_text()
    changed = tiny(synth_root, epochs=3)
    changed.optimizer.lr = 0.1
    with pytest.raises(ConfigError, match=r"optimizer.lr: 0.05 -> 0.1; train.epochs: 2 -> 3"):
        train(changed, run, progress=False)
    assert (run / "config.yaml").read_text() == before  # still describes the run
    # settings that only change speed or logging may differ
    same = tiny(synth_root, epochs=2, threads=1)
    same.data.workers = 1
    train(same, run, progress=False)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_run_of_all_ignored_labels_is_refused(synth_root, tmp_path):
    import shutil
    root = tmp_path / "ds"
    shutil.copytree(synth_root, root)
    ignore = json.loads((root / "classes.json").read_text())["ignore_index"]
    for line in (root / "train.txt").read_text().splitlines():
        lab = root / line.split()[1]
        Image.fromarray(np.full(np.array(Image.open(lab)).shape, ignore, np.uint8)).save(lab)
    with pytest.raises(ConfigError, match="every label pixel is the ignore index"):
        train(tiny(root), tmp_path / "run", progress=False)


def test_predict_never_overwrites_its_inputs_and_names_cannot_collide(trained, synth_root, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    img = np.array(Image.open(synth_root / "images" / "0000.png"))
    Image.fromarray(img).save(photos / "x.png")
    Image.fromarray(img[:, ::-1]).save(photos / "x_overlay.png")
    originals = {p.name: p.read_bytes() for p in photos.iterdir()}
    ckpt = str(trained / "best.pt")
    assert "is, or is inside, or contains the input folder" in error_line(
        ["predict", ckpt, str(photos), "--out", str(photos), "--quiet"], capsys)
    assert "holds the input" in error_line(
        ["predict", ckpt, str(photos / "x.png"), "--out", str(photos), "--quiet"], capsys)
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == originals
    out = tmp_path / "pred"
    assert main(["predict", ckpt, str(photos), "--out", str(out), "--quiet"]) == 0
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert names == ["labels/x.png", "labels/x_overlay.png", "overlays/x.png", "overlays/x_overlay.png"]
    assert not np.array_equal(np.array(Image.open(out / "overlays" / "x.png")),
                              np.array(Image.open(out / "overlays" / "x_overlay.png")))


def test_predict_skip_bad_reports_and_skips_unreadable_files(trained, synth_root, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(synth_root / "images" / "0000.png").save(photos / "a.png")
    (photos / "b.png").write_bytes(b"not a png")
    (photos / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS metadata")  # hidden: never an input
    ckpt = str(trained / "best.pt")
    assert "b.png: not an image file" in error_line(["predict", ckpt, str(photos), "--out", str(tmp_path / "o"),
                                                      "--quiet"], capsys)
    assert main(["predict", ckpt, str(photos), "--out", str(tmp_path / "o2"), "--skip-bad", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 label maps" in out and "skipped 1 unreadable file(s)" in out
    assert [p.name for p in (tmp_path / "o2" / "labels").iterdir()] == ["a.png"]


def test_export_never_replaces_its_source_or_a_resumable_checkpoint(trained, tmp_path, capsys):
    last = trained / "last.pt"
    before = last.read_bytes()
    assert "would replace its source checkpoint" in error_line(["export", str(last), str(last)], capsys)
    import shutil
    other = tmp_path / "other_last.pt"
    shutil.copyfile(last, other)
    assert "a resumable training checkpoint is there" in error_line(["export", str(trained / "best.pt"),
                                                                      str(other)], capsys)
    assert last.read_bytes() == before
    assert "is an existing folder" in error_line(["export", str(last), str(tmp_path)], capsys)
    assert main(["export", str(last), str(tmp_path / "deploy.pt")]) == 0


@pytest.mark.parametrize("command", ["train", "eval", "predict"])
def test_an_out_that_is_a_file_is_one_error_before_any_work(trained, synth_root, tmp_path, capsys, command):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(tiny(synth_root).to_dict()))
    argv = {"train": ["train", str(cfg), "--out", str(blocker / "run"), "--quiet"],
            "eval": ["eval", str(trained / "best.pt"), "--data", str(synth_root), "--split", "val.txt",
                     "--out", str(blocker / "eval"), "--quiet"],
            "predict": ["predict", str(trained / "best.pt"), str(synth_root / "images" / "0000.png"),
                        "--out", str(blocker), "--quiet"]}[command]
    t0 = time.time()
    line = error_line(argv, capsys)
    assert "existing file, not a folder" in line
    assert blocker.read_text() == "x"
    assert time.time() - t0 < 20


def test_wrong_shape_crf_compatibility_fails_before_the_network_runs(trained, synth_root, tmp_path, capsys):
    line = error_line(["eval", str(trained / "best.pt"), "--data", str(synth_root), "--split", "val.txt",
                       "--crf", "--crf-set", "compatibility=[1.0, 2.0]", "--quiet"], capsys)
    assert "compatibility of shape (2,): the model has 5 classes" in line
    assert "mIoU" not in capsys.readouterr().out


def test_a_checkpoint_without_normalization_gets_its_backbone_default(trained, synth_root, tmp_path):
    from structseg.engine.checkpoint import load_checkpoint, save_checkpoint
    from structseg.engine.predict import Predictor
    ck = load_checkpoint(trained / "best.pt")
    del ck["normalization"]
    ck.pop("format")
    save_checkpoint(tmp_path / "bare.pt", ck)
    p = Predictor(tmp_path / "bare.pt")
    assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)
    assert p.predict(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30)
    ck["normalization"] = {"mean": [0.5], "std": [0.0, 1, 1]}
    save_checkpoint(tmp_path / "badnorm.pt", ck)
    with pytest.raises(StructsegError, match="'normalization' must hold 3 finite means and 3 positive stds"):
        Predictor(tmp_path / "badnorm.pt")


def test_an_image_too_large_for_memory_is_one_error_naming_it(trained, synth_root, tmp_path, monkeypatch, capsys):
    from structseg.engine import predict as predict_module

    def no_memory(self, image):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 54975581388 bytes")
    monkeypatch.setattr(predict_module.Predictor, "predict", no_memory)
    img = synth_root / "images" / "0000.png"
    line = error_line(["predict", str(trained / "best.pt"), str(img), "--out", str(tmp_path / "o"), "--quiet"],
                      capsys)
    assert "0000.png: a 64x48 image does not fit in memory for this model" in line


def test_16_bit_and_float_images_are_scaled_and_exif_orientation_applied(tmp_path):
    from structseg._io import load_image
    from structseg.errors import DataError
    ramp = (np.arange(12 * 20).reshape(12, 20) * 273).astype(np.uint16)  # 0 .. 65247
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    got = load_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(got[..., 0], np.round(ramp / 257.0).astype(np.uint8))  # full range -> 0..255
    assert got.max() == 254 and (got[..., 0] == got[..., 2]).all()
    f = np.linspace(0, 1, 12 * 20, dtype=np.float32).reshape(12, 20)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif")[..., 1], np.round(f * 255).astype(np.uint8))
    Image.fromarray(f * 1000, mode="F").save(tmp_path / "big.tif")
    with pytest.raises(DataError, match=r"big.tif: 'F' image with values in \[0, 1000\]"):
        load_image(tmp_path / "big.tif")
    # a portrait photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view)
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:, :5] = 255  # the stored left edge ...
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "phone.jpg")
    assert upright.shape == (30, 20, 3)
    assert upright[:5].mean() > 200 and upright[-5:].mean() < 50  # ... is the top once turned upright
    with pytest.raises(DataError, match="is a folder, expected an image file"):
        load_image(tmp_path)


def test_crf_search_refuses_empty_work_and_says_when_no_setting_helps(trained, synth_root, tmp_path, capsys):
    ckpt = str(trained / "best.pt")
    base = ["crf", "search", ckpt, "--data", str(synth_root), "--split", "val.txt", "--quiet"]
    assert "--limit 0: expected a positive number" in error_line(base + ["--out", str(tmp_path / "a.yaml"),
                                                                       "--limit", "0"], capsys)
    assert "no values given" in error_line(base + ["--out", str(tmp_path / "a.yaml"), "--grid", "appearance_xy="],
                                           capsys)
    assert "must be a non-negative finite number, got nan" in error_line(
        base + ["--out", str(tmp_path / "a.yaml"), "--crf-set", "appearance_weight=.nan"], capsys)
    assert not (tmp_path / "a.yaml").exists()
    # a CRF that only smooths everything away (huge weight) is worse than the network alone: said so
    assert main(base + ["--out", str(tmp_path / "b.yaml"), "--limit", "2", "--grid", "appearance_weight=500",
                        "--grid", "appearance_xy=80", "--grid", "appearance_rgb=200"]) == 0
    out = capsys.readouterr().out
    assert "note: no setting beats the network alone" in out
    assert json.loads((tmp_path / "b.json").read_text())["best_beats_baseline"] is False


@pytest.mark.parametrize("argv, message", [
    (["data", "synth", "{tmp}/s", "--height", "0"], "--height and --width must be at least 8 pixels"),
    (["models", "--size", "0", "0", "--no-latency"], "--size must be two positive integers"),
    (["data", "pack", "{root}", "--split", "val.txt", "--out", "{tmp}/p", "--shard-mb", "0"],
     "--shard-mb must be a positive number"),
])
def test_command_line_numbers_are_range_checked(argv, message, synth_root, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, root=synth_root) for a in argv]
    assert message in error_line(argv, capsys)


def test_convert_folder_refuses_bad_numbers_and_corrupt_images_and_fixes_names(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(src / "images" / "my photo.png")
    Image.fromarray(np.ones((8, 10), np.uint8)).save(src / "masks" / "my photo.png")
    def argv(dst, *extra):
        return ["convert", "folder", str(src), str(tmp_path / dst), "--classes", "a,b", "--quiet", *extra]
    assert "--ignore-index 300: expected a label value in 0-255" in error_line(argv("d1", "--ignore-index", "300"),
                                                                            capsys)
    assert "--val-fraction 2.0: expected a share in [0, 1)" in error_line(argv("d2", "--val-fraction", "2"), capsys)
    assert main(argv("d3")) == 0
    lines = (tmp_path / "d3" / "train.txt").read_text().split()
    assert lines == ["images/train/my_photo.png", "labels/train/my_photo.png"]  # one pair the reader can parse
    (src / "images" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(np.ones((8, 10), np.uint8)).save(src / "masks" / "bad.png")
    assert "bad.png: " in error_line(argv("d4"), capsys)
    assert not (tmp_path / "d4").exists() and not list(tmp_path.glob(".d4.partial-*"))


def test_results_do_not_depend_on_the_number_of_data_workers(synth_root, tmp_path):
    states = []
    for workers in (0, 1):
        cfg = tiny(synth_root, threads=2)
        cfg.data.workers = workers
        train(cfg, tmp_path / f"w{workers}", progress=False)
        states.append(torch.load(tmp_path / f"w{workers}" / "last.pt", weights_only=True)["state_dict"])
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_a_killed_eval_leaves_nothing_a_later_run_mistakes_for_a_result(trained, synth_root, tmp_path, capsys):
    out = tmp_path / "eval"
    stale = tmp_path / ".eval.partial-999999999"  # what a kill mid-eval leaves: a hidden partial folder
    stale.mkdir()
    (stale / "confusion.png").write_bytes(b"old")
    assert main(["eval", str(trained / "best.pt"), "--data", str(synth_root), "--split", "val.txt", "--out", str(out),
                 "--panels", "2", "--quiet"]) == 0
    assert not stale.exists() and not list(tmp_path.glob(".eval.partial-*"))
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "metrics.json", "panels", "per_class_iou.png"]
    assert len(list((out / "panels").iterdir())) == 2

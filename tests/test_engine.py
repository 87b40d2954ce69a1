import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from structseg.config import ScheduleConfig, config_from_dict
from structseg.engine.checkpoint import load_checkpoint, save_checkpoint
from structseg.engine.optim import lr_factor
from structseg.engine.trainer import train
from structseg.errors import CheckpointError, ConfigError


def tiny_config(root, **train):
    return config_from_dict({
        "model": {"name": "unet", "args": {"base_channels": 4, "depth": 2}},
        "data": {"root": str(root), "workers": 0},
        "augment": {"scale": [0.8, 1.2], "crop_size": [32, 32]},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "poly", "warmup_epochs": 1},
        "train": {"epochs": 3, "batch_size": 4, "val_every": 1, "tensorboard": False, **train},
    })


def test_schedules_by_hand():
    s = ScheduleConfig(name="poly", power=0.9, warmup_epochs=0)
    assert lr_factor(s, 0, 10, 100, 0.1) == 1.0
    assert lr_factor(s, 50, 10, 100, 0.1) == pytest.approx(0.5 ** 0.9)
    c = ScheduleConfig(name="cosine", min_lr=0.01)
    assert lr_factor(c, 50, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(c, 100, 10, 100, 0.1) == pytest.approx(0.1)
    e = ScheduleConfig(name="exp", gamma=0.5)
    assert lr_factor(e, 25, 10, 100, 0.1) == pytest.approx(0.25)  # epoch 2 -> 0.5 ** 2
    w = ScheduleConfig(name="constant", warmup_epochs=2)
    assert [lr_factor(w, i, 2, 10, 0.1) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_checkpoint_is_atomic_and_safe(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"state_dict": {"w": torch.ones(2)}})
    assert load_checkpoint(path)["state_dict"]["w"].sum() == 2

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"state_dict": Boom()})
    assert load_checkpoint(path)["state_dict"]["w"].sum() == 2  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="c.pt: not a readable checkpoint"):
        load_checkpoint(path)
    torch.save({"weights": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match="not a structseg checkpoint"):
        load_checkpoint(path)


def _records(run):
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k not in ("images_per_s", "epoch_time_s", "started")})
    return out


def test_resume_continues_exactly(synth_root, tmp_path):
    cfg = tiny_config(synth_root)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, stop_after_epochs=1)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["train_state"]["epoch"] == 1
    train(cfg, tmp_path / "b", progress=False)
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert _records(tmp_path / "a") == _records(tmp_path / "b")
    assert len(_records(tmp_path / "a")) == 3
    assert (tmp_path / "b" / "curves.png").exists() and (tmp_path / "b" / "config.yaml").exists()


def test_run_folder_with_other_model_is_refused(synth_root, tmp_path):
    train(tiny_config(synth_root, epochs=1), tmp_path / "r", progress=False)
    other = tiny_config(synth_root, epochs=1)
    other.model.args["base_channels"] = 8
    with pytest.raises(CheckpointError, match="run folder holds model"):
        train(other, tmp_path / "r", progress=False)


def test_early_stopping_with_patience(synth_root, tmp_path):
    cfg = tiny_config(synth_root, epochs=40, patience=2)
    cfg.optimizer.lr = 0.0  # weights stay put: val mIoU soon stops improving
    summary = train(cfg, tmp_path / "r", progress=False)
    records = _records(tmp_path / "r")
    assert summary["stopped_early"] and len(records) < 40
    # stops exactly `patience` epochs after the best one, and the best is the max of the log
    assert len(records) == summary["best_epoch"] + 2
    assert summary["best_miou"] == max(r["val"]["miou"] for r in records)


def _epochs_done(run) -> int:
    """Epochs in the run's last.pt (0 while there is none), read the way a resumed run reads it."""
    try:
        return load_checkpoint(run / "last.pt")["train_state"]["epoch"]
    except Exception:  # not there yet
        return 0


@pytest.mark.slow
def test_kill_9_mid_training_loses_at_most_one_epoch(synth_root, tmp_path):
    run = tmp_path / "run"
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text(json.dumps(tiny_config(synth_root, epochs=200, val_every=50).to_dict()))
    proc = subprocess.Popen([sys.executable, "-m", "structseg", "train", str(cfgfile), "--out", str(run), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # kill once a complete checkpoint is on disk (an observable event, however loaded the machine)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and not _epochs_done(run):
            time.sleep(0.05)
        assert proc.poll() is None, "the training exited before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = load_checkpoint(run / "last.pt")["train_state"]["epoch"]  # complete, whenever the kill came
    assert 1 <= done < 200
    lines = len((run / "metrics.jsonl").read_text().splitlines())
    assert lines in (done, done + 1)  # the log may hold the epoch whose checkpoint was being written
    (run / ".last.pt.killed.tmp").write_bytes(b"half a checkpoint")  # as a kill during the write leaves
    assert (run / ".lock").exists()  # the killed process could not release its lock: a stale one
    cfg = tiny_config(synth_root, epochs=done + 1, val_every=50)
    with pytest.raises(ConfigError, match=f"train.epochs: 200 -> {done + 1}"):
        train(cfg, run, progress=False)  # a changed schedule is refused unless asked for
    summary = train(cfg, run, progress=False, allow_changes=True)
    assert (run / f"config.before_epoch_{done}.yaml").is_file() and not (run / ".lock").exists()
    assert len(_records(run)) == done + 1
    assert math.isfinite(summary["best_miou"])
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # the resume cleaned them up


@pytest.mark.slow
def test_torchrun_two_processes(synth_root, tmp_path):
    """DDP on CPU (gloo): each rank trains on half the batches; val confusion matrices are summed."""
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text(json.dumps(tiny_config(synth_root, epochs=2, threads=1).to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "structseg",
                           "train", str(cfgfile), "--out", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("best val mIoU") == 1  # summary printed by rank 0 only
    records = _records(tmp_path / "run")
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["step"] == 2 * (18 // 2 // 4)  # 9 images per rank, batches of 4
    # the summed val confusion equals a single-process evaluation of the saved weights
    from structseg.engine.report import evaluate_checkpoint
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    again = evaluate_checkpoint(tmp_path / "run" / "best.pt", synth_root, "val.txt", progress=False)
    assert again["miou"] == pytest.approx(best["metrics"]["miou"], abs=2e-3)


def test_checkpoint_whose_weights_do_not_match_its_model(synth_root, tmp_path):
    from structseg.engine.checkpoint import model_from_checkpoint
    train(tiny_config(synth_root, epochs=1, val_every=5), tmp_path / "r", progress=False)
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    ckpt["model"]["args"]["base_channels"] = 8
    with pytest.raises(CheckpointError, match="has shape .* model expects"):
        model_from_checkpoint(ckpt, "x.pt")
    ckpt["model"]["args"] = {"base_channels": 4, "depth": 3}
    with pytest.raises(CheckpointError, match="weights do not match model 'unet'"):
        model_from_checkpoint(ckpt, "x.pt")
    ckpt["model"]["name"] = "segformer"
    with pytest.raises(CheckpointError, match="x.pt: unknown model 'segformer'"):
        model_from_checkpoint(ckpt, "x.pt")


def test_tensorboard_events_written(synth_root, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train(tiny_config(synth_root, epochs=2, tensorboard=True), tmp_path / "r", progress=False)
    acc = EventAccumulator(str(tmp_path / "r" / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/train_loss", "train/lr", "val/miou"} <= set(tags)
    logged = [e.value for e in acc.Scalars("val/miou")]
    expected = [r["val"]["miou"] for r in _records(tmp_path / "r")]
    assert logged == pytest.approx(expected)


def test_export_half_checkpoint_loads_and_predicts_the_same(synth_root, tmp_path):
    from structseg.engine.checkpoint import export_checkpoint, model_from_checkpoint
    run = tmp_path / "run"
    train(tiny_config(synth_root, epochs=1), run, progress=False)
    payload = export_checkpoint(run / "best.pt", tmp_path / "small.pt")
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    assert "train_state" not in payload
    full, half = load_checkpoint(run / "best.pt"), load_checkpoint(tmp_path / "small.pt")
    assert (tmp_path / "small.pt").stat().st_size < (run / "last.pt").stat().st_size
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        a = model_from_checkpoint(full).eval()(x)
        b = model_from_checkpoint(half).eval()(x)
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.99
    torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


def test_shipped_checkpoint_is_found_by_name_and_predicts():
    from structseg.engine.checkpoint import model_from_checkpoint, shipped_checkpoints
    shipped = shipped_checkpoints()
    assert "camvid-unet" in shipped and shipped["camvid-unet"].stat().st_size < 20 * 2 ** 20
    ckpt = load_checkpoint("camvid-unet")
    assert ckpt["model"]["num_classes"] == 11 and ckpt["metrics"]["miou"] >= 0.60
    with torch.no_grad():
        out = model_from_checkpoint(ckpt).eval()(torch.randn(1, 3, 45, 61))
    assert out.shape == (1, 11, 45, 61)
    with pytest.raises(CheckpointError, match="shipped"):
        load_checkpoint("camvid-unknown")


def test_shipped_dual_decomposition_model_carries_its_layer_and_predicts_any_size():
    from structseg.engine.checkpoint import model_from_checkpoint
    from structseg.structured.dual_decomposition_net import DualDecompositionNet
    ckpt = load_checkpoint("msrc21-lite2-deeplabv3-dd")
    assert ckpt["model"]["crf"]["kind"] == "dual_decomposition" and ckpt["metrics"]["miou"] >= 0.70
    model = model_from_checkpoint(ckpt).eval()
    assert isinstance(model, DualDecompositionNet)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 70, 90))  # a 5x6 grid at stride 16 after padding: the layer runs on it
    assert out.shape == (1, 21, 70, 90) and torch.isfinite(out).all()
    assert len(model.crf.last_duals) >= 1


def test_demo_training_stops_at_its_wall_time_budget_with_a_validated_checkpoint(synth_root, tmp_path):
    import time as _time

    from structseg.workflows.demo import train_within
    cfg = tiny_config(synth_root, epochs=6, val_every=2)
    summary = train_within(cfg, tmp_path / "late", deadline=_time.time() - 1)  # the budget is already spent
    assert len(_records(tmp_path / "late")) == 2 and summary["best_checkpoint"]
    summary = train_within(cfg, tmp_path / "ample", deadline=_time.time() + 3600)
    assert len(_records(tmp_path / "ample")) == 6 and summary["best_epoch"] >= 1


def test_set_threads_honours_omp_num_threads(monkeypatch):
    """threads 0 takes OMP_NUM_THREADS when set (a background job beside another), else all cores."""
    from structseg.engine.runtime import set_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        set_threads(0)
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        set_threads(0)
        assert torch.get_num_threads() == max(1, os.cpu_count() or 1)
        set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_init_from_starts_a_new_run_from_a_checkpoint_of_the_same_network(synth_root, tmp_path):
    """model.init_from loads the weights (a tiny learning rate then leaves them where they were); another
    network or class count is one clear error."""
    train(tiny_config(synth_root, epochs=1), tmp_path / "a", progress=False)
    cfg = tiny_config(synth_root, epochs=1)
    cfg.model.init_from = str(tmp_path / "a" / "last.pt")
    cfg.optimizer.lr = 1e-12
    train(cfg, tmp_path / "b", progress=False)
    a = load_checkpoint(tmp_path / "a" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["state_dict"]
    weights = [k for k in a if k.endswith("weight") and a[k].dim() == 4]
    assert weights and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in weights)
    other = tiny_config(synth_root, epochs=1)
    other.model.args = {"base_channels": 8, "depth": 2}
    other.model.init_from = str(tmp_path / "a" / "last.pt")
    with pytest.raises(CheckpointError, match="same network and class count"):
        train(other, tmp_path / "c", progress=False)

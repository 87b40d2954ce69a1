"""The conditional DAE of seed 000: toy reconstruction, the update rule, the early stop."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from structseg.errors import CheckpointError, ConfigError
from structseg.structured.dae import (
    ConditionalDAE,
    DAEConfig,
    corrupt,
    dae_loss,
    iterative_inference,
)


def toy_masks(n, g, size=16):
    """Label maps with one axis-aligned rectangle of class 1 or 2 on background 0."""
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        hh, ww = torch.randint(4, size // 2, (2,), generator=g).tolist()
        labels[i, y0:y0 + hh, x0:x0 + ww] = 1 + i % 2
    return labels


def test_dae_reconstructs_clean_inputs_on_a_toy_problem():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cfg = DAEConfig(n_filters=8, additional_pool=0, concat_h=[], noise=0.5)
    dae = ConditionalDAE(3, {}, cfg)
    opt = torch.optim.RMSprop(dae.parameters(), lr=2e-3, alpha=0.9, eps=1e-6)
    for _ in range(150):
        labels = toy_masks(16, g)
        clean = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
        loss = dae_loss(dae(corrupt(clean, cfg.noise, g)), labels, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    labels = toy_masks(32, torch.Generator().manual_seed(99))
    clean = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        noisy = corrupt(clean, 0.5, torch.Generator().manual_seed(1))
        denoised = dae(noisy).argmax(1)
    assert (noisy.argmax(1) == labels).float().mean() < 0.9  # the corruption flips over 10 % of pixels
    assert (denoised == labels).float().mean() > 0.97
    assert (dae(clean).argmax(1) == labels).float().mean() > 0.98


class FixedDAE(torch.nn.Module):
    """Returns the same logits whatever its input: makes the update rule checkable by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, y, h):
        return self.logits[: y.shape[0]] if y.shape[0] == self.logits.shape[0] else self.logits[1:2]


def test_update_rule_by_hand():
    y0 = torch.tensor([[[[0.6]], [[0.3]], [[0.1]]]])  # one pixel, three classes
    logits = torch.log(torch.tensor([[[[0.2]], [[0.7]], [[0.1]]]]))
    y1 = iterative_inference(FixedDAE(logits), y0, {}, step=0.5, iterations=1, tol=0)
    # y + 0.5 * (r - y) = [0.6 + 0.5 * -0.4, 0.3 + 0.5 * 0.4, 0.1 + 0] = [0.4, 0.5, 0.1]
    torch.testing.assert_close(y1.flatten(), torch.tensor([0.4, 0.5, 0.1]))
    y2 = iterative_inference(FixedDAE(logits), y0, {}, step=3.0, iterations=1, tol=0)
    # y + 3 (r - y) = [-0.6, 1.5, 0.1] -> clipped to [0, 1], not renormalised
    torch.testing.assert_close(y2.flatten(), torch.tensor([0.0, 1.0, 0.1]))
    seen = []
    y3 = iterative_inference(FixedDAE(logits), y0, {}, step=0.5, iterations=2, tol=0,
                             on_iteration=lambda i, y: seen.append((i, y.flatten().tolist())))
    # second step: [0.4 + 0.5 * (0.2 - 0.4), 0.5 + 0.5 * (0.7 - 0.5), 0.1] = [0.3, 0.6, 0.1]
    torch.testing.assert_close(y3.flatten(), torch.tensor([0.3, 0.6, 0.1]))
    assert [i for i, _ in seen] == [1, 2]


def test_early_stop_is_per_image():
    # image 0 starts at the DAE's fixed point (g = 0): it stops; image 1 keeps moving
    r = torch.tensor([0.2, 0.7, 0.1]).view(1, 3, 1, 1)
    y0 = torch.cat([r, torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1)])
    logits = torch.log(r).expand(2, 3, 1, 1)
    y = iterative_inference(FixedDAE(logits), y0, {}, step=0.5, iterations=3, tol=1e-3)
    torch.testing.assert_close(y[0].flatten(), r.flatten())
    # 0.6 -> 0.4 -> 0.3 -> 0.25 on class 0 for image 1
    assert y[1, 0].item() == pytest.approx(0.25)


def test_dae_config_errors():
    with pytest.raises(ConfigError, match="unpool_type"):
        DAEConfig(unpool_type="bilinear").validate()
    with pytest.raises(ValueError, match="concat_h entry 'pool9'"):
        DAEConfig(concat_h=["pool9"]).validate()
    with pytest.raises(ValueError, match="needs the channel count"):
        ConditionalDAE(3, {}, DAEConfig(concat_h=["pool4"]))


# ------------------------------------------------------------------ the train / validate / test protocol

def test_choose_picks_the_argmax_of_a_known_table():
    from structseg.workflows.dae import choose
    table = {0.1: [0.50, 0.52, 0.55, 0.54], 0.5: [0.50, 0.56, 0.53, 0.51], 1.0: [0.50, 0.40, 0.41, 0.42]}
    assert choose(table) == (0.5, 1)
    # iteration 0 (the base network) is never chosen, even when it is best; ties go to fewer iterations
    assert choose({0.1: [0.9, 0.5, 0.6, 0.6]}) == (0.1, 2)


def _dae_cfg(root, **train):
    from structseg.config import dataclass_from_dict, read_yaml
    from structseg.workflows.dae import DAERunConfig
    data = read_yaml(Path(__file__).resolve().parents[1] / "configs" / "synth" / "dae.yaml")
    data["data"]["root"] = str(root)
    data["train_dict"].update({"num_epochs": 2, "batch_size": [6, 6, 6], **train})
    data["data_augmentation"]["crop_size"] = [32, 32]
    cfg = dataclass_from_dict(DAERunConfig, data)
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def segmenter_run(synth_root, tmp_path_factory):
    from structseg.engine.trainer import train

    from .test_engine import tiny_config
    run = tmp_path_factory.mktemp("seg")
    train(tiny_config(synth_root, epochs=2), run, progress=False)
    return run / "best.pt"


def test_dae_train_validate_test_compare_end_to_end(synth_root, segmenter_run, tmp_path, monkeypatch):
    import json as _json

    from structseg.cli import main as cli
    from structseg.workflows.dae import train_dae
    out = tmp_path / "dae"
    rec = train_dae(_dae_cfg(synth_root), segmenter_run, out, progress=False, stop_after_epochs=1)
    assert rec["epoch"] == 1 and (out / "best.pt").exists()
    rec = train_dae(_dae_cfg(synth_root), segmenter_run, out, progress=False)  # resumes for the 2nd epoch
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert rec["epoch"] == 2 and [_json.loads(ln)["epoch"] for ln in lines] == [1, 2]
    with pytest.raises(Exception, match="another config"):
        train_dae(_dae_cfg(synth_root, lmb=0.5), segmenter_run, out, progress=False)

    assert cli(["dae", "validate", str(out / "best.pt"), "--data", str(synth_root), "--split", "val.txt",
                "--out", str(tmp_path / "v"), "--steps", "0.1,1", "--max-iterations", "3", "--quiet"]) == 0
    v = _json.loads((tmp_path / "v" / "validate.json").read_text())
    best = max((m, s, i) for s, row in v["table"].items() for i, m in enumerate(row) if i >= 1)
    assert v["miou"] == best[0] and (tmp_path / "v" / "miou_per_iteration.png").stat().st_size > 0
    assert all(len(row) == 4 for row in v["table"].values())
    # an interrupted validation resumes: steps already scored are read back, not recomputed
    from structseg.workflows.dae import protocols as dae_run
    calls = []
    real = dae_run.iterative_inference
    monkeypatch.setattr(dae_run, "iterative_inference", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    steps_file = tmp_path / "v" / "validate_steps.json"
    saved = _json.loads(steps_file.read_text())
    saved["table"] = {"0.1": saved["table"]["0.1"]}  # as if stopped after the first step
    steps_file.write_text(_json.dumps(saved))
    assert cli(["dae", "validate", str(out / "best.pt"), "--data", str(synth_root), "--split", "val.txt",
                "--out", str(tmp_path / "v"), "--steps", "0.1,1", "--max-iterations", "3", "--quiet"]) == 0
    assert set(calls) == {1.0}
    assert _json.loads((tmp_path / "v" / "validate.json").read_text()) == v

    assert cli(["dae", "test", str(out / "best.pt"), "--data", str(synth_root), "--split", "val.txt",
                "--chosen", str(tmp_path / "v" / "chosen.yaml"), "--out", str(tmp_path / "t"), "--quiet"]) == 0
    t = _json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert t["miou"] == pytest.approx(v["miou"], abs=1e-9)  # same split, same pair -> same number
    assert {"miou", "mean_acc", "pixel_acc", "per_class_iou", "confusion"} <= set(t)

    assert cli(["dae", "compare", str(out / "best.pt"), "--data", str(synth_root), "--split", "val.txt",
                "--step", "1", "--iterations", "1", "--crf", "--crf-set", "iterations=2",
                "--out", str(tmp_path / "c"), "--quiet"]) == 0
    rows = _json.loads((tmp_path / "c" / "compare.json").read_text())
    assert [r["method"].split(" (")[0] for r in rows] == ["base network", "+ DAE, one pass", "+ iterative inference",
                                                          "+ dense CRF"]
    assert rows[1]["miou"] == pytest.approx(rows[2]["miou"])  # step 1, one iteration is the one-pass DAE
    assert rows[0]["miou"] == pytest.approx(v["base_miou"])

    # export: fp16 weights, no optimiser state, the chosen pair recorded and used by 'dae test' by default
    assert cli(["export", str(out / "best.pt"), str(tmp_path / "d16.pt"), "--chosen",
                str(tmp_path / "v" / "chosen.yaml")]) == 0
    import torch
    ck = torch.load(tmp_path / "d16.pt", weights_only=True)
    assert "optimizer" not in ck and ck["chosen"] == {"step": v["step"], "iterations": v["iterations"]}
    assert all(t.dtype == torch.float16 for t in ck["state_dict"].values() if t.is_floating_point())
    assert cli(["dae", "test", str(tmp_path / "d16.pt"), "--data", str(synth_root), "--split", "val.txt",
                "--out", str(tmp_path / "t16"), "--quiet"]) == 0
    t16 = _json.loads((tmp_path / "t16" / "metrics.json").read_text())
    assert (t16["step"], t16["iterations"]) == (v["step"], v["iterations"])
    assert t16["miou"] == pytest.approx(t["miou"], abs=0.02)  # fp16 weights: the same result within rounding
    assert cli(["export", str(segmenter_run), str(tmp_path / "s.pt"), "--chosen", str(tmp_path / "v" / "chosen.yaml")]) == 2


def test_dae_config_file_errors(tmp_path, synth_root, segmenter_run):
    from structseg.cli import main as cli
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data: {root: x}\ntrain_dict: {optimiser: adam}\n")
    assert cli(["dae", "train", str(cfg), "--segmenter", str(segmenter_run), "--out", str(tmp_path / "o")]) == 2
    cfg.write_text(f"data: {{root: {synth_root}}}\ndae_dict: {{concat_h: [pool9]}}\n")
    assert cli(["dae", "train", str(cfg), "--segmenter", str(segmenter_run), "--out", str(tmp_path / "o")]) == 2
    assert cli(["dae", "test", str(tmp_path / "missing.pt"), "--data", str(synth_root), "--split", "val.txt",
                "--step", "0.1", "--iterations", "2"]) == 2


def test_feature_taps_by_stride_and_by_name():
    import torch.nn as nn

    from structseg.errors import ConfigError
    from structseg.structured.features import SegmenterWithFeatures

    class Net(nn.Module):  # stride 2: a.2 (8 ch), b.0/b.1 (16 ch); stride 4: b.2 (16 ch), c (4 ch)
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.b = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.c = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return F.interpolate(self.c(self.b(self.a(x))), size=x.shape[-2:])

    net = Net()
    seg = SegmenterWithFeatures(net, ["pool1", "pool2", "input"])
    # most channels at the stride, an activation/pooling output before a raw convolution
    assert seg.taps == {"pool1": "b.1", "pool2": "b.2"}
    assert seg.channels == {"pool1": 16, "pool2": 16, "input": 3}
    x = torch.randn(2, 3, 20, 28)
    probs, h = seg(x)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 20, 28))
    torch.testing.assert_close(h["pool2"], net.b(net.a(x)))
    torch.testing.assert_close(h["input"], x)
    assert SegmenterWithFeatures(net, ["pool2"], {"pool2": "c"}).taps == {"pool2": "c"}
    with pytest.raises(ConfigError, match="no module"):
        SegmenterWithFeatures(net, ["pool2"], {"pool2": "nope"})
    with pytest.raises(ConfigError, match="stride-8"):
        SegmenterWithFeatures(net, ["pool3"])


def test_shipped_camvid_dae_loads_by_name_with_its_chosen_pair():
    import torch

    from structseg.workflows.dae import load_dae, read_dae_checkpoint, shipped_daes
    assert "camvid-unet-dae" in shipped_daes()
    ck = read_dae_checkpoint("camvid-unet-dae")
    assert ck["segmenter"] == "camvid-unet" and ck["chosen"] == {"step": 0.05, "iterations": 17}
    with pytest.raises(CheckpointError, match="camvid-unet: that is a shipped segmentation model, not a DAE"):
        read_dae_checkpoint("camvid-unet")  # a segmenter's name where a DAE is expected
    cfg, _, seg, dae = load_dae("camvid-unet-dae", None, torch.device("cpu"))  # weights fit the architecture
    y = torch.softmax(torch.randn(1, 11, 64, 96), 1)
    _, h = seg(torch.zeros(1, 3, 64, 96))
    assert dae(y, h).shape == (1, 11, 64, 96)


def test_feature_taps_read_feature_info_of_described_models():
    import torch

    from structseg.models import create_model
    from structseg.structured.features import SegmenterWithFeatures
    model = create_model("fpn", 5, backbone="efficientnet_lite0")
    seg = SegmenterWithFeatures(model, ["pool3", "pool4", "pool5"])
    # the deepest encoder map at each stride, by the name feature_info gives (no probing)
    # Lite0 block groups of 1, 2, 2, 3, 3, 4, 1 blocks end at 0, 2, 4, 7, 10, 14, 15
    assert seg.taps == {"pool3": "backbone._blocks.4", "pool4": "backbone._blocks.10", "pool5": "backbone._blocks.15"}
    assert seg.channels == {"pool3": 40, "pool4": 112, "pool5": 320}
    x = torch.randn(1, 3, 64, 96)
    _, h = seg(x)
    with torch.no_grad():
        feats = model.backbone(x)
    torch.testing.assert_close(h["pool4"], feats[3])
    unet = SegmenterWithFeatures(create_model("unet", 3, base_channels=4, depth=3), ["pool3"])
    assert unet.taps == {"pool3": "encoder.3"} and unet.channels == {"pool3": 32}

"""The public API on one screen: every name ``structseg`` exports, each run on tiny data; the model
registry; charts whose plotted values are the run's logged values; collectives on the backend's device."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import structseg
from structseg.errors import CheckpointError, ConfigError


def test_every_public_name_is_importable_and_documented():
    assert set(structseg.__all__) == {"create_model", "list_models", "register_model", "load_pretrained",
                                      "Predictor", "DenseCRF", "CRFParams", "ConfusionMatrix",
                                      "SegmentationDataset", "__version__"}
    for name in structseg.__all__:
        obj = getattr(structseg, name)
        assert name == "__version__" or obj.__doc__, name
        assert name in structseg.__doc__ or name in ("CRFParams", "__version__"), name


def test_public_names_run_on_tiny_data(synth_root):
    ds = structseg.SegmentationDataset(synth_root, "val.txt")
    image, label = ds[0]
    assert image.dtype == torch.uint8 and image.shape[1:] == label.shape

    model = structseg.create_model("unet", num_classes=ds.classes.num_classes, base_channels=4, depth=2).eval()
    with torch.no_grad():
        logits = model(image[None].float() / 255)
    assert logits.shape == (1, ds.classes.num_classes, *label.shape)

    # the confusion matrix of a prediction against itself is diagonal: every metric is 1
    cm = structseg.ConfusionMatrix(ds.classes.num_classes, ds.classes.ignore_index)
    cm.update(label[None], label[None])
    m = cm.compute()
    assert m["pixel_acc"] == 1.0 and m["miou"] == 1.0

    # the dense CRF returns a distribution per pixel and, with zero pairwise weights, the softmax itself
    crf = structseg.DenseCRF(iterations=2, smoothness_weight=0.0, appearance_weight=0.0)
    probs = crf(image[None].float(), logits=logits)
    torch.testing.assert_close(probs, torch.softmax(logits, 1), atol=1e-5, rtol=1e-5)
    assert structseg.CRFParams().iterations >= 1


def test_load_pretrained_and_predictor_agree_on_a_shipped_model():
    model = structseg.load_pretrained("camvid-unet")
    assert not model.training and len(model.classes.names) == 11 and model.classes.names[0] == "sky"
    assert model.normalization == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert 0.6 < model.metrics["miou"] < 0.7
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - torch.tensor(model.normalization[0])[:, None, None])
    x = x / torch.tensor(model.normalization[1])[:, None, None]
    with torch.no_grad():
        by_hand = model(x[None]).argmax(1)[0].numpy()
    labels = structseg.Predictor("camvid-unet", amp="off").predict(rgb)
    assert labels.shape == (40, 56) and (labels == by_hand).mean() > 0.999
    with pytest.raises(CheckpointError, match="camvid-unet-dae: that is a shipped DAE"):
        structseg.load_pretrained("camvid-unet-dae")


def test_register_model_adds_a_name_to_create_model():
    from structseg.models import MODELS
    from structseg.models.base import SegmentationModel

    class Constant(SegmentationModel):
        def __init__(self, num_classes: int, in_channels: int = 3):
            super().__init__()
            self.head = torch.nn.Conv2d(in_channels, num_classes, 1)

        def forward(self, x, return_aux: bool = False):
            return self.head(x)

    @structseg.register_model
    def tiny_constant(num_classes: int, in_channels: int = 3) -> Constant:
        return Constant(num_classes, in_channels)

    try:
        assert "tiny_constant" in structseg.list_models()
        assert structseg.create_model("tiny_constant", 4)(torch.zeros(1, 3, 8, 8)).shape == (1, 4, 8, 8)
        with pytest.raises(ConfigError, match="no argument"):
            structseg.create_model("tiny_constant", 4, depth=3)
        with pytest.raises(ValueError, match="registered twice"):
            structseg.register_model(tiny_constant)
    finally:
        MODELS.pop("tiny_constant")


def test_training_curves_plot_exactly_the_logged_values(synth_root, tmp_path):
    from structseg.engine.run_log import read_run_log
    from structseg.engine.trainer import train
    from structseg.viz.plots import training_curves

    from .test_engine import tiny_config
    run = tmp_path / "run"
    train(tiny_config(synth_root, epochs=3, val_every=2), run, progress=False)
    records = read_run_log(run / "metrics.jsonl")
    assert (run / "curves.png").stat().st_size > 0
    fig = training_curves(records, tmp_path / "c.png")
    loss_ax, val_ax = fig.axes
    (loss,) = loss_ax.get_lines()
    assert list(loss.get_xdata()) == [1, 2, 3]
    assert list(loss.get_ydata()) == [r["train_loss"] for r in records]
    val = [r for r in records if "val" in r]
    assert [r["epoch"] for r in val] == [2, 3]  # every 2nd epoch and the last
    for line, key in zip(val_ax.get_lines(), ("miou", "mean_acc", "pixel_acc")):
        assert line.get_label() == key and list(line.get_ydata()) == [r["val"][key] for r in val]
    assert training_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_eval_charts_plot_the_values_of_metrics_json(synth_root, tmp_path, monkeypatch):
    from structseg.engine.report import evaluate_checkpoint
    from structseg.engine.trainer import train
    from structseg.viz import plots

    from .test_engine import tiny_config
    train(tiny_config(synth_root, epochs=1), tmp_path / "run", progress=False)
    drawn = {}
    for name in ("class_bars", "confusion_heatmap"):
        real = getattr(plots, name)
        monkeypatch.setattr(plots, name, lambda *a, _real=real, _name=name, **k: drawn.setdefault(_name, _real(*a, **k)))
    evaluate_checkpoint(tmp_path / "run" / "best.pt", synth_root, "val.txt", tmp_path / "eval", panels=0,
                        progress=False)
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    bars = drawn["class_bars"].axes[0].patches
    expected = [0.0 if v is None else v for v in record["per_class_iou"].values()]
    assert [b.get_width() for b in bars] == pytest.approx(expected)
    heat = drawn["confusion_heatmap"].axes[0].images[0].get_array()
    matrix = np.array(record["confusion"], dtype=float)
    rows = matrix.sum(1, keepdims=True)
    np.testing.assert_allclose(heat, np.divide(100 * matrix, rows, out=np.zeros_like(matrix), where=rows > 0))


def test_collectives_use_the_backends_device_and_sum(tmp_path):
    """One gloo process: the sum is the tensor itself, on its own device; NCCL would put it on the GPU."""
    import torch.distributed as dist

    from structseg.engine import distributed
    from structseg.engine.metrics import ConfusionMatrix
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        assert distributed.collective_device() == torch.device("cpu")
        cm = ConfusionMatrix(3, 255)
        cm.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
        before = cm.matrix.clone()
        cm.all_reduce()
        assert torch.equal(cm.matrix, before) and cm.matrix.device.type == "cpu"
        assert distributed.all_reduce_mean(2.5) == 2.5
    finally:
        dist.destroy_process_group()

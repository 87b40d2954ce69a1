"""Sliding-window inference and test-time augmentation against whole-image inference."""
from __future__ import annotations

import json

import pytest
import torch

from structseg.engine.inference import (
    crf_tile_labels,
    InferenceSettings,
    infer_logits,
    slide_logits,
    tile_starts,
    window,
)
from structseg.errors import StructsegError
from structseg.models import create_model

CPU = torch.device("cpu")


class Pointwise(torch.nn.Module):
    """A 1x1 conv: its logits at a pixel depend on that pixel alone, so tiling and flipping cannot change them."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_tile_starts_cover_the_axis_and_end_flush():
    assert tile_starts(10, 4, 3) == [0, 3, 6]
    assert tile_starts(11, 4, 3) == [0, 3, 6, 7]
    assert tile_starts(4, 4, 3) == [0]
    for size, tile, stride in ((97, 32, 24), (64, 64, 48), (65, 8, 8)):
        starts = tile_starts(size, tile, stride)
        covered = set().union(*(range(s, s + tile) for s in starts))
        assert covered == set(range(size)) and starts[-1] + tile == size


def test_window_is_one_at_the_centre_and_never_zero():
    w = window(9, 15)
    assert w.shape == (9, 15) and w[4, 7] == pytest.approx(1.0) and w.min() >= 1e-3
    torch.testing.assert_close(w, w.flip(0).flip(1))


def test_one_tile_covering_the_image_is_whole_image_inference():
    torch.manual_seed(0)
    model = create_model("unet", 3, base_channels=4, depth=2).eval()
    x = torch.randn(1, 3, 24, 36)
    with torch.no_grad():
        whole = model(x)
    torch.testing.assert_close(slide_logits(model, x, CPU, None, (24, 36)), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tile, overlap, batch", [((8, 8), 0.25, 4), ((10, 7), 0.5, 1), ((24, 5), 0.0, 3)])
def test_slide_equals_whole_for_a_pointwise_network(tile, overlap, batch):
    torch.manual_seed(1)
    model = Pointwise().eval()
    x = torch.randn(1, 3, 24, 37)
    with torch.no_grad():
        whole = model(x)
    torch.testing.assert_close(slide_logits(model, x, CPU, None, tile, overlap, batch), whole, atol=1e-5, rtol=1e-5)


def test_streamed_labels_equal_the_argmax_of_the_assembled_logits():
    from structseg.data.transforms import normalize
    from structseg.engine.inference import slide_labels
    torch.manual_seed(3)
    model = create_model("unet", 5, base_channels=4, depth=2).eval()
    image = torch.randint(0, 256, (50, 70, 3), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x = normalize(image.permute(2, 0, 1).float() / 255, mean, std)[None]
    for tile, overlap in (((16, 24), 0.25), ((20, 20), 0.5), ((50, 70), 0.0)):
        labels = slide_labels(model, image, mean, std, CPU, None, tile, overlap, batch=3)
        expected = slide_logits(model, x, CPU, None, tile, overlap).argmax(1)[0].to(torch.uint8)
        assert (labels == expected).float().mean() > 0.999  # float rounding may flip a near-tie


def test_slide_blends_tiles_by_their_windows():
    """A network whose output is a constant per tile (its mean input): the blend at a pixel is the window-weighted
    mean of the constants of the tiles covering it."""
    class TileMean(torch.nn.Module):
        def forward(self, x):
            return x.mean((1, 2, 3), keepdim=True).expand(-1, 2, *x.shape[-2:]).clone()

    x = torch.arange(12.0).view(1, 1, 1, 12).expand(1, 3, 4, 12).contiguous()
    out = slide_logits(TileMean(), x, CPU, None, (4, 8), overlap=0.5)  # tiles at columns 0..7 and 4..11
    w = window(4, 8)
    a, b = x[..., :8].mean(), x[..., 4:].mean()
    col = 5  # covered by both: column 5 of tile 1, column 1 of tile 2
    expected = (a * w[0, col] + b * w[0, col - 4]) / (w[0, col] + w[0, col - 4])
    assert out[0, 0, 0, col].item() == pytest.approx(expected.item())
    assert out[0, 0, 0, 0].item() == pytest.approx(a.item()) and out[0, 0, 0, 11].item() == pytest.approx(b.item())


def test_tta_of_a_pointwise_network_is_its_softmax_and_averages_scales():
    torch.manual_seed(2)
    model = Pointwise().eval()
    x = torch.randn(1, 3, 16, 20)
    with torch.no_grad():
        whole = model(x)
    flip = infer_logits(model, x, CPU, None, InferenceSettings(flip=True))
    torch.testing.assert_close(flip, torch.log_softmax(whole, 1), atol=1e-5, rtol=1e-5)
    # two scales: the mean of the softmaxes of each scale's logits, resized back
    s = InferenceSettings(scales=(1.0, 0.5))
    small = torch.nn.functional.interpolate(x, size=(8, 10), mode="bilinear", align_corners=False)
    with torch.no_grad():
        back = torch.nn.functional.interpolate(model(small), size=(16, 20), mode="bilinear", align_corners=False)
    expected = torch.log((torch.softmax(whole, 1) + torch.softmax(back, 1)) / 2)
    torch.testing.assert_close(infer_logits(model, x, CPU, None, s), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("settings, message", [
    (InferenceSettings(mode="slide"), "needs --tile"),
    (InferenceSettings(mode="slide", tile=(8, 8), overlap=1.0), "--overlap must be in"),
    (InferenceSettings(scales=(1.0, 0.0)), "TTA scales must be positive"),
    (InferenceSettings(mode="slide", tile=(8, 8), batch=0), "--tile-batch"),
])
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        settings.validate()


def test_a_tile_larger_than_the_image_is_refused():
    with pytest.raises(StructsegError, match="tile .* is larger than the 20x16 image"):
        slide_logits(Pointwise(), torch.zeros(1, 3, 16, 20), CPU, None, (17, 8))


def test_eval_with_slide_and_tta_records_its_settings(trained_run, synth_root, tmp_path, capsys):
    from structseg.cli import main
    ckpt = trained_run / "best.pt"
    assert main(["eval", str(ckpt), "--data", str(synth_root), "--split", "val.txt", "--out", str(tmp_path / "w"),
                 "--panels", "0", "--quiet"]) == 0
    assert main(["eval", str(ckpt), "--data", str(synth_root), "--split", "val.txt", "--out", str(tmp_path / "s"),
                 "--panels", "1", "--tile", "48,64", "--quiet"]) == 0  # one tile = the whole 48x64 image
    whole, slide = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("w", "s"))
    assert slide["inference"]["mode"] == "slide" and slide["confusion"] == whole["confusion"]
    assert whole["boundary_tolerance_px"] == 2 and slide["boundary_f"] == whole["boundary_f"]
    assert main(["eval", str(ckpt), "--data", str(synth_root), "--split", "val.txt", "--out", str(tmp_path / "t"),
                 "--panels", "0", "--tta", "--quiet"]) == 0
    tta = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert tta["inference"]["scales"] == [0.75, 1.0, 1.25] and tta["inference"]["flip"] is True
    assert main(["predict", str(ckpt), str(synth_root / "images"), "--out", str(tmp_path / "p"), "--tile", "32,32",
                 "--tta-flip", "--quiet"]) == 0
    assert len(list((tmp_path / "p" / "labels").glob("*.png"))) == 24
    assert main(["eval", str(ckpt), "--data", str(synth_root), "--split", "val.txt", "--tta-scales", "1,-1"]) == 2
    assert "TTA scales must be positive" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(synth_root, tmp_path_factory):
    from structseg.engine.trainer import train

    from .test_engine import tiny_config
    run = tmp_path_factory.mktemp("run")
    train(tiny_config(synth_root, epochs=1), run, progress=False)
    return run


def test_batched_predict_equals_one_at_a_time_and_saves_probabilities(trained_run, synth_root, tmp_path):
    import numpy as np
    from PIL import Image

    from structseg.cli import main
    ckpt = str(trained_run / "best.pt")
    images = str(synth_root / "images")
    assert main(["predict", ckpt, images, "--out", str(tmp_path / "one"), "--batch", "1", "--amp", "off",
                 "--quiet"]) == 0
    assert main(["predict", ckpt, images, "--out", str(tmp_path / "many"), "--batch", "5", "--amp", "off",
                 "--save-probs", "--quiet"]) == 0
    names = sorted(p.name for p in (tmp_path / "one" / "labels").glob("*.png"))
    assert len(names) == 24
    for n in names:
        one = np.array(Image.open(tmp_path / "one" / "labels" / n))
        many = np.array(Image.open(tmp_path / "many" / "labels" / n))
        assert (one == many).mean() > 0.999
        probs = np.load(tmp_path / "many" / "probs" / n.replace(".png", ".npy"))
        assert probs.dtype == np.float16 and probs.shape == (5, *one.shape)
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
        assert (probs.argmax(0) == many).mean() > 0.99
    assert main(["predict", ckpt, images, "--out", str(tmp_path / "bad"), "--batch", "0"]) == 2


def _crf_case(h=90, w=110, classes=4, seed=0):
    """A piecewise-constant image with noisy logits that favour its true regions: what a CRF cleans up."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.zeros(h, w, dtype=torch.long)
    truth[:, w // 3:] = 1
    truth[h // 2:, : w // 2] = 2
    truth[h // 4: 3 * h // 4, 3 * w // 4:] = 3
    palette = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]], dtype=torch.float32)
    image = (palette[truth] + 20 * torch.randn(h, w, 3, generator=g)).clamp(0, 255).to(torch.uint8).numpy()
    logits = 1.5 * torch.nn.functional.one_hot(truth, classes).permute(2, 0, 1).float()
    logits = logits + 1.2 * torch.randn(classes, h, w, generator=g)
    return image, logits


def _bands(logits, rows):
    for top in range(0, logits.shape[1], rows):
        yield top, logits[:, top:top + rows]


def test_crf_on_tiles_is_the_whole_image_crf_when_one_tile_covers_it_and_seams_stay_clean():
    from structseg.structured.crf_postprocess import crf_refiner
    from structseg.structured.dense_crf import CRFParams
    image, logits = _crf_case()
    h, w = image.shape[:2]
    refine = crf_refiner(CRFParams(iterations=5))
    whole = refine(logits[None], image)[0].argmax(0).to(torch.uint8)
    assert (whole.long() != logits.argmax(0)).float().mean() > 0.05  # the CRF changes many noisy labels
    one = crf_tile_labels(_bands(logits, 7), image, refine, h, w, tile=128, margin=16)
    assert torch.equal(one, whole)
    tiled = crf_tile_labels(_bands(logits, 11), image, refine, h, w, tile=32, margin=24)
    agree = (tiled == whole).float()
    seams = torch.zeros(h, w, dtype=torch.bool)
    for c in range(32, max(h, w), 32):
        seams[max(0, c - 2):c + 2, :] = True
        seams[:, max(0, c - 2):c + 2] = True
    assert agree.mean() > 0.99 and agree[seams].mean() > 0.98
    # without context across the seams the same tiles disagree more there
    bare = (crf_tile_labels(_bands(logits, 11), image, refine, h, w, tile=32, margin=0) == whole).float()
    assert bare[seams].mean() < agree[seams].mean()


def test_predict_slide_with_crf_streams_and_equals_the_crf_on_the_assembled_logits(trained_run, synth_root, tmp_path):
    import numpy as np

    from structseg._io import load_image
    from structseg.cli import main
    from structseg.engine.metrics import class_map
    from structseg.engine.predict import Predictor
    from structseg.structured.dense_crf import CRFParams
    ckpt = trained_run / "best.pt"
    image = load_image(sorted((synth_root / "images").iterdir())[0])
    slide = InferenceSettings(mode="slide", tile=(32, 32), overlap=0.25)
    p = Predictor(ckpt, crf=CRFParams(iterations=3), amp="off", inference=slide)
    assert np.array_equal(p.predict(image), class_map(p.scores(image), 0).numpy())  # one CRF tile: exact
    small = Predictor(ckpt, crf=CRFParams(iterations=3), amp="off", inference=slide, crf_tile=16)
    assert (small.predict(image) == p.predict(image)).mean() > 0.97
    assert main(["predict", str(ckpt), str(synth_root / "images"), "--out", str(tmp_path / "o"), "--tile", "32,32",
                 "--crf", "--crf-tile", "24", "--quiet"]) == 0
    assert len(list((tmp_path / "o" / "labels").glob("*.png"))) == 24

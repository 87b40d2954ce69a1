"""Dense CRF: the lattice filter against brute force, gradients, mean field against a dense reference."""
from pathlib import Path

import pytest
import torch

from structseg.structured.dense_crf import (
    CRFParams,
    DenseCRF,
    GaussianKernel,
    appearance_features,
    mean_field,
    message_operator,
    position_features,
    softmax_rows,
)
from structseg.structured.lattice import PermutohedralLattice


def tiny_image(seed, h=20, w=24, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 5, generator=g) * 255, size=(h, w), mode="nearest")
    return (base + torch.randn(1, 3, h, w, generator=g) * 8).clamp(0, 255).to(dtype)


def brute_normalised(f, v):
    k = torch.exp(-0.5 * torch.cdist(f.double(), f.double()) ** 2)
    return (k @ v.double()) / k.sum(1, keepdim=True)


def lattice_normalised(f, v):
    lat = PermutohedralLattice(f)
    return lat.filter(v) / lat.filter(torch.ones(f.shape[0], 1))


@pytest.mark.parametrize("sxy, bound", [(3.0, 0.02), (5.0, 0.012)])
def test_position_filter_matches_brute_force(sxy, bound):
    # a normalised Gaussian blur of values in [0, 1]: the lattice approximation error is below `bound`
    f = position_features(20, 24, sxy, "cpu")[0]
    v = torch.rand(f.shape[0], 3, generator=torch.Generator().manual_seed(0))
    err = (lattice_normalised(f, v) - brute_normalised(f, v)).abs().max()
    assert err < bound, err


@pytest.mark.parametrize("seed", range(4))
def test_bilateral_filter_matches_brute_force(seed):
    # 5-D features (x, y, r, g, b): asserted bound 0.08 on values in [0, 1] (measured 0.02-0.06)
    f = appearance_features(tiny_image(seed), 6.0, 20.0)[0]
    v = torch.rand(f.shape[0], 3, generator=torch.Generator().manual_seed(seed))
    err = (lattice_normalised(f, v) - brute_normalised(f, v)).abs().max()
    assert err < 0.08, err


def test_lattice_approximates_the_right_width():
    # the best-matching brute-force width is the requested one (not 0.9x or 1.1x)
    f = position_features(16, 16, 3.0, "cpu")[0]
    v = torch.rand(f.shape[0], 2, generator=torch.Generator().manual_seed(1))
    out = lattice_normalised(f, v)
    errs = {s: (out - brute_normalised(f / s, v)).abs().max().item() for s in (0.9, 1.0, 1.1)}
    assert min(errs, key=errs.get) == 1.0, errs


@pytest.mark.parametrize("d", [1, 2, 3, 5, 7, 12])  # 12: too many simplices for int64 codes
def test_transpose_is_the_adjoint(d):
    g = torch.Generator().manual_seed(d)
    f = torch.randn(200, d, generator=g, dtype=torch.float64) * 2
    lat = PermutohedralLattice(f)
    v = torch.randn(200, 3, generator=g, dtype=torch.float64)
    w = torch.randn(200, 3, generator=g, dtype=torch.float64)
    lhs = (lat.filter(v) * w).sum()
    rhs = (v * lat.filter(w, transpose=True)).sum()
    assert lhs == pytest.approx(rhs.item(), rel=1e-10)


def test_constant_is_preserved_and_batch_is_independent():
    imgs = torch.cat([tiny_image(0), tiny_image(1)])
    f = appearance_features(imgs, 5.0, 15.0)
    kernel = GaussianKernel(f)
    v = torch.rand(2, f.shape[1], 4, generator=torch.Generator().manual_seed(0))
    both = kernel(v)
    single = GaussianKernel(f[1:])(v[1:])
    torch.testing.assert_close(both[1:], single, atol=1e-5, rtol=1e-5)


def dense_mean_field(unary, image, p, exact_gaussian):
    """Reference mean field with explicit N x N kernel matrices (one image)."""
    c, h, w = unary.shape[1:]
    u = unary[0].flatten(1).T.double()
    mats = []
    for feats, weight in ((position_features(h, w, p.smoothness_xy, "cpu", torch.float64)[0], p.smoothness_weight),
                          (appearance_features(image.double(), p.appearance_xy, p.appearance_rgb)[0],
                           p.appearance_weight)):
        if exact_gaussian:
            k = torch.exp(-0.5 * torch.cdist(feats, feats) ** 2)
        else:  # the lattice's own operator, as a dense matrix
            k = PermutohedralLattice(feats).filter(torch.eye(h * w, dtype=torch.float64))
        n = 1 / torch.sqrt(k.sum(1))
        mats.append((n[:, None] * k * n[None, :], weight))
    q = torch.softmax(-u, 1)
    for _ in range(p.iterations):
        q = torch.softmax(-u + sum(wt * (k @ q) for k, wt in mats), 1)
    return q.T.reshape(1, c, h, w)


@pytest.mark.parametrize("seed", range(3))
def test_mean_field_equals_dense_reference(seed):
    torch.manual_seed(seed)
    image = tiny_image(seed, 12, 14, torch.float64)
    truth = torch.randint(0, 4, (1, 3, 4)).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :12, :14]
    onehot = torch.nn.functional.one_hot(truth, 4).permute(0, 3, 1, 2).double()
    unary = -2.0 * onehot + torch.randn(1, 4, 12, 14, dtype=torch.float64)
    p = CRFParams(iterations=4, appearance_xy=6.0, appearance_rgb=20.0)
    q = mean_field(unary, image, p)
    # same update, same (lattice) kernels as dense matrices: equal to float64 precision
    torch.testing.assert_close(q, dense_mean_field(unary, image, p, exact_gaussian=False), atol=1e-8, rtol=1e-6)
    # exact Gaussians instead of the lattice: asserted mean |dQ| < 0.02 and >= 97 % equal labels
    # (measured 0.001-0.007 and 98.8-99.4 %)
    exact = dense_mean_field(unary, image, p, exact_gaussian=True)
    assert (q - exact).abs().mean() < 0.02
    assert (q.argmax(1) == exact.argmax(1)).double().mean() >= 0.97


def test_gradients_match_finite_differences():
    image = tiny_image(5, 6, 7, torch.float64)
    p = CRFParams(iterations=2, appearance_xy=4.0, appearance_rgb=30.0, smoothness_weight=1.0,
                  appearance_weight=2.0)
    unary = torch.randn(1, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: mean_field(u, image, p), (unary,), eps=1e-6, atol=1e-6)


def test_batched_equals_one_by_one():
    imgs = torch.cat([tiny_image(0, 10, 12), tiny_image(1, 10, 12)])
    logits = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    crf = DenseCRF(appearance_xy=5.0, appearance_rgb=20.0)
    both = crf(imgs, logits=logits)
    for i in range(2):
        torch.testing.assert_close(both[i:i + 1], crf(imgs[i:i + 1], logits=logits[i:i + 1]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both.sum(1), torch.ones(2, 10, 12))


def test_crf_cleans_a_noisy_labelling():
    # two colour regions; unaries favour the right class with heavy pixel noise
    h, w = 24, 32
    truth = torch.zeros(h, w, dtype=torch.long)
    truth[:, 16:] = 1
    image = torch.zeros(1, 3, h, w)
    image[0, 0][truth == 0] = 200
    image[0, 2][truth == 1] = 200
    g = torch.Generator().manual_seed(0)
    logits = torch.nn.functional.one_hot(truth, 2).permute(2, 0, 1)[None].float() + torch.randn(1, 2, h, w, generator=g)
    before = (logits.argmax(1)[0] == truth).float().mean()
    after = (DenseCRF(appearance_xy=20.0)(image, logits=logits).argmax(1)[0] == truth).float().mean()
    assert before < 0.85 and after > 0.99


@pytest.mark.parametrize("kwargs, message", [
    ({"iterations": 0}, "iterations must be a positive integer"),
    ({"appearance_rgb": 0.0}, "appearance_rgb .* must be a positive finite number"),
    ({"smoothness_xy": -1.0}, "smoothness_xy .* must be a positive finite number"),
    ({"appearance_xy": float("inf")}, "appearance_xy .* must be a positive finite number, got inf"),
    ({"appearance_weight": float("nan")}, "appearance_weight must be a non-negative finite number, got nan"),
    ({"compatibility": [[1.0, 2.0], [3.0]]}, "compatibility must be a list of C numbers or a C x C matrix"),
    ({"compatibility": [1.0, float("nan")]}, "compatibility must be finite"),
])
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DenseCRF(**kwargs)


def test_compatibility_shape_is_checked_against_the_class_count_before_any_inference():
    from structseg.structured.dense_crf import CRFParams
    CRFParams(compatibility=[1.0, 2.0, 3.0]).validate(3)
    with pytest.raises(ValueError, match=r"compatibility of shape \(2, 2\): the model has 3 classes"):
        CRFParams(compatibility=[[0.0, 1.0], [1.0, 0.0]]).validate(3)


def test_bad_inputs():
    crf = DenseCRF()
    img = tiny_image(0, 8, 8)
    with pytest.raises(ValueError, match="differ in batch or size"):
        crf(img, logits=torch.randn(1, 3, 8, 9))
    with pytest.raises(ValueError, match="image must be RGB"):
        crf(img[:, :1], logits=torch.randn(1, 3, 8, 8))
    probs = torch.full((1, 3, 8, 8), 1 / 3)
    probs[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        crf(img, probs=probs)
    probs[0, 0, 0, 0] = -0.1
    with pytest.raises(ValueError, match="negative"):
        crf(img, probs=probs)
    with pytest.raises(ValueError, match="exactly one of"):
        crf(img)


def test_crfasrnn_trains_end_to_end_from_a_config(synth_root, tmp_path):
    from structseg.config import config_from_dict
    from structseg.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from structseg.engine.trainer import train
    from structseg.structured.crfasrnn import CRFasRNN
    cfg = config_from_dict({
        "model": {"name": "unet", "args": {"base_channels": 4, "depth": 2},
                  "crf": {"iterations": 2, "appearance_xy": 10.0}},
        "data": {"root": str(synth_root), "workers": 0},
        "augment": {"crop_size": [32, 32]},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "train": {"epochs": 2, "batch_size": 4, "tensorboard": False},
    })
    summary = train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["model"]["crf"] == {"iterations": 2, "appearance_xy": 10.0}
    state = ckpt["state_dict"]
    # the CRF's own parameters were trained
    assert not torch.equal(state["compatibility"], 1 - torch.eye(5))
    assert state["appearance_weight"] != 10.0
    model = model_from_checkpoint(ckpt, "last.pt")
    assert isinstance(model, CRFasRNN) and model.params.iterations == 2
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 21, 27))
    assert out.shape == (2, 5, 21, 27)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2, 21, 27), atol=1e-4, rtol=0)
    assert 0 <= summary["best_miou"] <= 1


def test_bad_crf_section_in_config(synth_root, tmp_path):
    from structseg.config import config_from_dict
    from structseg.engine.trainer import train
    from structseg.errors import ConfigError
    cfg = config_from_dict({"model": {"name": "unet", "crf": {"iteration": 2}}, "data": {"root": str(synth_root)}})
    with pytest.raises(ConfigError, match="unknown config key 'crf.iteration'"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


REFERENCE = Path(__file__).resolve().parent / "reference" / "pydensecrf_reference.npz"


@pytest.mark.parametrize("case", ["k6", "k11"])
@pytest.mark.parametrize("iterations", [1, 5])
def test_parity_with_recorded_pydensecrf_marginals(case, iterations):
    """pydensecrf 1.1's marginals, recorded by tests/reference/make_pydensecrf_reference.py (so this runs
    without building pydensecrf): ours equal them to float32 precision, with identical labels."""
    import numpy as np
    ref = np.load(REFERENCE)
    gsxy, gw, bsxy, srgb, bw = ref[f"{case}_settings"]
    unary, image = ref[f"{case}_unary"], ref[f"{case}_image"]
    params = CRFParams(iterations=iterations, smoothness_xy=float(gsxy), smoothness_weight=float(gw),
                       appearance_xy=float(bsxy), appearance_rgb=float(srgb), appearance_weight=float(bw))
    ours = mean_field(torch.from_numpy(unary)[None], torch.from_numpy(image).permute(2, 0, 1)[None].float(),
                      params)[0].numpy()
    theirs = ref[f"{case}_q{iterations}"]
    assert np.abs(ours - theirs).max() < 1e-4
    assert (ours.argmax(0) == theirs.argmax(0)).mean() == 1.0


@pytest.mark.parametrize("iterations", [1, 5])
def test_parity_with_pydensecrf(iterations):
    """Same lattice, same normalisation, same update: pydensecrf's marginals to float32 precision."""
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    import numpy as np
    h, w, c = 40, 52, 6
    image = tiny_image(7, h, w)[0].round().to(torch.uint8).permute(1, 2, 0).numpy().copy()
    g = torch.Generator().manual_seed(iterations)
    probs = torch.softmax(torch.randn(c, h, w, generator=g) * 2, 0).numpy().astype(np.float32)
    unary = -np.log(np.clip(probs, 1e-5, None)).reshape(c, -1)
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=20, srgb=13, rgbim=image, compat=10)
    theirs = np.array(d.inference(iterations)).reshape(c, h, w)
    ours = mean_field(torch.from_numpy(unary.reshape(c, h, w))[None],
                      torch.from_numpy(image).permute(2, 0, 1)[None].float(),
                      CRFParams(iterations=iterations, appearance_xy=20.0))[0].numpy()
    assert np.abs(ours - theirs).max() < 1e-4
    assert (ours.argmax(0) == theirs.argmax(0)).mean() == 1.0


def test_compatibility_forms_agree_with_potts():
    image = tiny_image(2, 10, 12)
    unary = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    p = CRFParams(iterations=3, appearance_xy=5.0)
    potts = mean_field(unary, image, p)
    # a diagonal of ones is Potts; the full penalty 1 - I differs from Potts by a per-pixel constant
    torch.testing.assert_close(mean_field(unary, image, p, torch.ones(3)), potts)
    torch.testing.assert_close(mean_field(unary, image, p, 1 - torch.eye(3)), potts, atol=1e-5, rtol=1e-5)
    # a diagonal with a larger reward for class 0 gives class 0 more mass than Potts does
    boosted = mean_field(unary, image, p, torch.tensor([3.0, 1.0, 1.0]))
    assert boosted[:, 0].mean() > potts[:, 0].mean()
    with pytest.raises(ValueError, match=r"compatibility of shape \(2,\)"):
        mean_field(unary, image, p, torch.ones(2))


def test_compatibility_from_settings():
    from structseg.structured.crf_postprocess import load_crf_params
    p = load_crf_params(None, ["compatibility=[2.0, 1.0, 1.0]", "iterations=2"])
    assert p.compatibility == [2.0, 1.0, 1.0]
    full = load_crf_params(None, ["compatibility=[[0, 1], [1, 0]]"])
    assert full.compatibility == [[0.0, 1.0], [1.0, 0.0]]
    image, logits = tiny_image(1, 8, 9), torch.randn(1, 3, 8, 9)
    torch.testing.assert_close(DenseCRF(p)(image, logits=logits),
                               mean_field(-torch.log_softmax(logits, 1), image, p, torch.tensor([2.0, 1.0, 1.0])))


@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("path", ["int64 codes", "whole rows"])
def test_other_hashing_paths_build_the_same_lattice(monkeypatch, d, path):
    # codes are float64 products below 2^53, int64 sums below 2^62, and whole rows made unique beyond
    import structseg.structured.lattice as lattice_module
    g = torch.Generator().manual_seed(d)
    f = torch.randn(2, 150, d, generator=g, dtype=torch.float64) * 3
    v = torch.randn(2, 150, 3, generator=g, dtype=torch.float64)
    fast = PermutohedralLattice(f)
    if path == "int64 codes":
        monkeypatch.setattr(lattice_module, "_EXACT_IN_FLOAT64", 0)
    else:
        monkeypatch.setattr(lattice_module, "_fits_int64", lambda spans: False)
    slow = PermutohedralLattice(f)
    assert slow.num_lattice_points == fast.num_lattice_points
    torch.testing.assert_close(slow.filter(v), fast.filter(v), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(slow.filter(v, transpose=True), fast.filter(v, transpose=True), rtol=1e-12, atol=1e-12)


def test_a_prebuilt_operator_serves_other_weights_and_iterations():
    image = tiny_image(3, 10, 12)
    unary = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(3))
    widths = CRFParams(appearance_xy=5.0, appearance_rgb=20.0)
    op = message_operator(image, widths)
    for weight, iterations in ((2.0, 3), (8.0, 1)):
        p = CRFParams(iterations=iterations, appearance_weight=weight, appearance_xy=5.0, appearance_rgb=20.0)
        torch.testing.assert_close(mean_field(unary, image, p, operator=op), mean_field(unary, image, p))
    other = message_operator(image, CRFParams(appearance_xy=5.0, appearance_rgb=200.0))  # the operator is used
    assert not torch.allclose(mean_field(unary, image, widths, operator=other), mean_field(unary, image, widths))
    with pytest.raises(ValueError, match="operator built for 1 image"):
        mean_field(unary[:, :, :5], image[:, :, :5], widths, operator=op)


@pytest.mark.parametrize("c", [1, 2, 3, 4, 5, 11, 15, 16, 21])
def test_softmax_rows_equals_softmax_for_every_row_length(c):
    x = torch.randn(257, c) * 30
    x[0] = 1e4  # equal huge scores: no overflow
    x[1, 0] = -1e30
    got = softmax_rows(x)
    assert got.shape == (257, c) and got.is_contiguous()
    assert torch.allclose(got, torch.softmax(x, 1), atol=1e-6, rtol=1e-5)
    assert torch.allclose(got.sum(1), torch.ones(257), atol=1e-5)
    xd = x[2:9].double().requires_grad_(True)  # and it is differentiable like softmax (CRF-as-RNN trains through it)
    assert torch.autograd.gradcheck(softmax_rows, (xd / 30,))


@pytest.mark.parametrize("compatibility", ["potts", "diagonal", "full"])
def test_blocked_inference_equals_the_differentiable_loop(monkeypatch, compatibility):
    """Without autograd the CPU loop updates Q in place, block by block of pixels; it must equal the
    differentiable loop (which the dense reference and pydensecrf parity check) over several blocks, a batch
    and a ragged last block."""
    import structseg.structured.dense_crf as dense_crf
    monkeypatch.setattr(dense_crf, "BLOCK_BYTES", 1)  # the smallest blocks: 256 pixels
    g = torch.Generator().manual_seed(3)
    c = 5
    image = torch.cat([tiny_image(4, 23, 29), tiny_image(5, 23, 29)])  # 667 pixels each: blocks of 256, ragged end
    unary = torch.randn(2, c, 23, 29, generator=g) * 2
    compat = {"potts": None, "diagonal": torch.rand(c, generator=g) + 0.5, "full": torch.rand(c, c, generator=g)}
    p = CRFParams(iterations=4, appearance_xy=6.0)
    with torch.no_grad():
        blocked = mean_field(unary, image, p, compat[compatibility])
    looped = mean_field(unary.clone().requires_grad_(True), image, p, compat[compatibility]).detach()
    torch.testing.assert_close(blocked, looped, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(blocked, torch.softmax(-unary, 1), atol=1e-3)  # the iterations did something

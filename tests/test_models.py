import pytest
import torch

from structseg.errors import CheckpointError, ConfigError
from structseg.models import create_model, list_models, load_backbone_weights
from structseg.models.fcn import bilinear_kernel
from structseg.models.vgg import VGG16Backbone

# torchvision's vgg16 parameter names, written from the architecture (13 convs at these indices,
# then classifier Linear layers 0, 3, 6)
VGG16_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG16_SHAPES = {f"features.{i}.weight": (o, c, 3, 3) for i, c, o in zip(
    VGG16_CONV_INDICES, [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512],
    [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512])}
VGG16_SHAPES |= {f"features.{i}.bias": (VGG16_SHAPES[f"features.{i}.weight"][0],) for i in VGG16_CONV_INDICES}
VGG16_SHAPES |= {"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
                 "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
                 "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)}

SMALL = {"unet": {"base_channels": 4, "depth": 3}, "deeplabv3": {"backbone": "resnet18"},
         "deeplabv3plus": {"backbone": "mobilenet_v2"}, "pspnet": {"backbone": "resnet18"},
         "refinenet": {"backbone": "resnet18", "features": 32}}
# score layers start at zero (as in the paper), so only they get gradient on the first step
ZERO_INIT_HEADS = ("fcn8s", "fcn16s", "fcn32s")


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [(37, 53), (64, 64), (17, 90)])
def test_logits_at_input_resolution_for_odd_sizes(name, size):
    torch.manual_seed(0)
    model = create_model(name, 6, **SMALL.get(name, {})).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 6, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_backward_reaches_every_parameter(name):
    model = create_model(name, 3, **SMALL.get(name, {}))
    logits, aux = model(torch.randn(2, 3, 40, 40), return_aux=True)
    sum((o * torch.randn_like(o)).sum() for o in [logits, *aux]).backward()
    if name in ZERO_INIT_HEADS:
        assert model.score_fr.weight.grad.abs().sum() > 0
    else:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_padding_does_not_leak_across_images():
    model = create_model("unet", 4, base_channels=4, depth=3).eval()
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        both = model(x)
        single = model(x[:1])
    torch.testing.assert_close(both[:1], single, atol=1e-5, rtol=1e-4)


def test_vgg16_parameter_names_match_torchvision():
    own = {k: tuple(v.shape) for k, v in VGG16Backbone(fc=True).state_dict().items()}
    expected = {k: v for k, v in VGG16_SHAPES.items() if not k.startswith("classifier.6")}
    assert set(own) == set(expected)
    for k, shape in expected.items():
        assert own[k][0] == shape[0]
        assert torch.Size(own[k]).numel() == torch.Size(shape).numel()


@pytest.mark.parametrize("name, classes, published", [
    ("fcn8s", 21, 134.5e6),        # Tiramisu paper, Table 3 (VGG-16 FCN-8s)
    ("segnet", 11, 29.5e6),        # same table
    ("fcdensenet103", 11, 9.4e6),  # same table
    ("fcdensenet67", 11, 3.5e6),   # same table
    ("enet", 12, 0.37e6),          # ENet paper (CamVid, 11 classes + void)
])
def test_parameter_counts_match_papers(name, classes, published):
    n = sum(p.numel() for p in create_model(name, classes).parameters())
    assert abs(n - published) / published < 0.03, n


def test_fcdensenet56_parameter_count():
    # the authors' configuration (48 first filters, growth 12, 4 layers per block) gives 1.38M,
    # not the 1.5M printed in the paper's table; counted by hand from the architecture:
    k, c, total = 12, 48, 3 * 3 * 3 * 48 + 48
    skips = []
    for _ in range(5):  # down path: dense layers (BN + 3x3 conv) then transition (BN + 1x1 conv)
        for _ in range(4):
            total += 2 * c + 9 * c * k + k
            c += k
        skips.append(c)
        total += 2 * c + c * c + c
    for _ in range(4):  # bottleneck
        total += 2 * c + 9 * c * k + k
        c += k
    new = 4 * k
    for i in range(5):  # transposed conv on the new maps, concat skip, dense block
        total += 9 * new * new + new
        c = new + skips[-1 - i]
        for _ in range(4):
            total += 2 * c + 9 * c * k + k
            c += k
    total += c * 11 + 11
    assert sum(p.numel() for p in create_model("fcdensenet56", 11).parameters()) == total


def test_bilinear_kernel_interpolates():
    k = bilinear_kernel(1, 4)[0, 0]
    assert k[1, 1] == pytest.approx(0.5625) and k[0, 0] == pytest.approx(0.0625)
    up = torch.nn.functional.conv_transpose2d(torch.ones(1, 1, 4, 4), bilinear_kernel(1, 4), stride=2, padding=1)
    assert torch.allclose(up[0, 0, 1:-1, 1:-1], torch.ones(6, 6))


def test_unknown_model_and_argument():
    with pytest.raises(ConfigError, match=r"unknown model 'fcn9s' \(did you mean 'fcn8s'\?\); available:"):
        create_model("fcn9s", 3)
    with pytest.raises(ConfigError, match=r"model 'unet' has no argument\(s\) \['width'\]"):
        create_model("unet", 3, width=3)


@pytest.mark.slow
def test_torchvision_vgg16_state_dict_loads(tmp_path):
    torch.manual_seed(0)
    state = {k: torch.randn(shape) * 0.01 for k, shape in VGG16_SHAPES.items()}
    torch.save(state, tmp_path / "vgg16.pth")
    model = create_model("fcn8s", 5)
    skipped = load_backbone_weights(model, tmp_path / "vgg16.pth")
    assert skipped == ["classifier.6.bias", "classifier.6.weight"]
    assert torch.equal(model.backbone.features[28].weight, state["features.28.weight"])
    assert torch.equal(model.backbone.classifier[0].weight.flatten(1), state["classifier.0.weight"])
    # fc6 as a 7x7 conv computes the same as the Linear layer on a 7x7 pool5 map
    pool5 = torch.randn(1, 512, 7, 7)
    conv = torch.nn.functional.conv2d(pool5, model.backbone.classifier[0].weight, model.backbone.classifier[0].bias)
    lin = pool5.flatten(1) @ state["classifier.0.weight"].T + state["classifier.0.bias"]
    torch.testing.assert_close(conv.flatten(1), lin, atol=1e-4, rtol=1e-4)
    del state["features.0.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="broken.pth: not torchvision vgg16 weights; missing keys"):
        load_backbone_weights(create_model("fcn8s", 5), tmp_path / "broken.pth")
    with pytest.raises(ConfigError, match="has no pretrained backbone"):
        load_backbone_weights(create_model("unet", 5), tmp_path / "vgg16.pth")


@pytest.mark.parametrize("name", ["pspnet", "deeplabv3", "fpn"])
def test_auxiliary_logits_come_only_when_asked(name):
    model = create_model(name, 4, backbone="resnet18", aux_head=True)
    x = torch.randn(2, 3, 33, 47)
    logits, aux = model.train()(x, return_aux=True)
    assert logits.shape == (2, 4, 33, 47) and [a.shape for a in aux] == [(2, 4, 33, 47)]
    assert model(x).shape == (2, 4, 33, 47)  # plain forward: the logits tensor, in training mode too
    with torch.no_grad():
        assert model.eval()(x[:1]).shape == (1, 4, 33, 47)
    assert create_model(name, 4, backbone="resnet18", aux_head=False)(x, return_aux=True)[1] == []


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet152'"):
        create_model("deeplabv3", 4, backbone="resnet152")


def test_mac_count_by_hand():
    from structseg.models.profile import count_macs
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4),
                              torch.nn.ConvTranspose2d(8, 2, 2, stride=2))
    macs = 10 * 12 * 8 * 3 * 9 + 5 * 6 * 8 * 2 * 9 + 5 * 6 * 8 * 2 * 4
    assert count_macs(net, 10, 12) == macs
    with torch.device("meta"):
        meta = create_model("unet", 3, base_channels=4, depth=2)
    assert count_macs(meta, 16, 16) == count_macs(create_model("unet", 3, base_channels=4, depth=2), 16, 16)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_torch_export_matches_eager(name):
    """Every model exports with torch.export (static shapes) and the exported program matches eager."""
    torch.manual_seed(0)
    model = create_model(name, 3, **SMALL.get(name, {})).eval()
    x = torch.randn(1, 3, 64, 64)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("h, w", [(7, 9), (12, 12), (5, 3), (45, 61)])
def test_pyramid_pooling_cells_equal_adaptive_average_pooling(h, w):
    import torch.nn.functional as F

    from structseg.models.heads import AdaptiveAvgPool
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    for bins in (1, 2, 3, 6):  # 6 bins on 5 or 3 pixels: overlapping cells, as PyTorch makes them
        torch.testing.assert_close(AdaptiveAvgPool(bins)(x), F.adaptive_avg_pool2d(x, bins))

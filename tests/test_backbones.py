"""Backbones carry torchvision's parameter names and shapes, so ImageNet state dicts load.

The expected keys are generated here from the published architectures (block counts, widths),
not by importing torchvision."""
import pytest
import torch

from structseg.models.mobilenet import MobileNetV2Backbone
from structseg.models.resnet import ResNetBackbone
from structseg.models.vgg import make_vgg_features

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def bn(prefix):
    return [f"{prefix}.{s}" for s in BN]


def resnet_keys(blocks, bottleneck):
    keys = ["conv1.weight"] + bn("bn1")
    convs = 3 if bottleneck else 2
    for stage, n in enumerate(blocks, 1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            for c in range(1, convs + 1):
                keys += [f"{p}.conv{c}.weight"] + bn(f"{p}.bn{c}")
            if i == 0 and (bottleneck or stage > 1):
                keys += [f"{p}.downsample.0.weight"] + bn(f"{p}.downsample.1")
    return keys


def mobilenet_v2_keys():
    keys = ["features.0.0.weight"] + bn("features.0.1")
    idx = 1
    for t, _, n, _ in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:
        for _ in range(n):
            p = f"features.{idx}.conv"
            if t == 1:  # depthwise, then linear projection
                keys += [f"{p}.0.0.weight"] + bn(f"{p}.0.1") + [f"{p}.1.weight"] + bn(f"{p}.2")
            else:  # expansion, depthwise, linear projection
                keys += ([f"{p}.0.0.weight"] + bn(f"{p}.0.1") + [f"{p}.1.0.weight"] + bn(f"{p}.1.1")
                         + [f"{p}.2.weight"] + bn(f"{p}.3"))
            idx += 1
    return keys + ["features.18.0.weight"] + bn("features.18.1")


@pytest.mark.parametrize("depth, blocks, bottleneck", [
    ("resnet18", [2, 2, 2, 2], False), ("resnet34", [3, 4, 6, 3], False),
    ("resnet50", [3, 4, 6, 3], True), ("resnet101", [3, 4, 23, 3], True)])
def test_resnet_keys(depth, blocks, bottleneck):
    assert list(ResNetBackbone(depth).state_dict()) == resnet_keys(blocks, bottleneck)


def test_resnet_shapes_and_parameter_counts():
    sd = ResNetBackbone("resnet50").state_dict()
    assert sd["layer3.0.downsample.0.weight"].shape == (1024, 512, 1, 1)
    assert sd["layer4.2.conv2.weight"].shape == (512, 512, 3, 3)
    # torchvision's totals (25,557,032 / 11,689,512) minus the 1000-way fc layer
    assert sum(p.numel() for p in ResNetBackbone("resnet50").parameters()) == 25_557_032 - (2048 * 1000 + 1000)
    assert sum(p.numel() for p in ResNetBackbone("resnet18").parameters()) == 11_689_512 - (512 * 1000 + 1000)


def test_mobilenet_v2_keys_and_count():
    m = MobileNetV2Backbone()
    assert list(m.state_dict()) == mobilenet_v2_keys()
    # torchvision's 3,504,872 minus the classifier (1280 * 1000 + 1000)
    assert sum(p.numel() for p in m.parameters()) == 3_504_872 - 1_281_000


def test_vgg16_bn_keys():
    expected = []
    i = 0
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            i += 1
            continue
        expected += [f"{i}.weight", f"{i}.bias"] + bn(str(i + 1))
        i += 3
    assert list(make_vgg_features(batch_norm=True).state_dict()) == expected


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_by_dilation(output_stride):
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        r = ResNetBackbone("resnet18", output_stride=output_stride).eval()(x)
        m = MobileNetV2Backbone(output_stride=output_stride).eval()(x)
    for enc, feats in ((ResNetBackbone("resnet18", output_stride=output_stride), r),
                       (MobileNetV2Backbone(output_stride=output_stride), m)):
        assert [tuple(f.shape[-2:]) for f in feats] == [(64 // s, 96 // s) for s in enc.strides]
        assert [f.shape[1] for f in feats] == enc.channels
    assert r[-1].shape[-2:] == (64 // output_stride, 96 // output_stride)
    assert r[1].shape[-2:] == (16, 24)
    assert m[-1].shape[-2:] == (64 // output_stride, 96 // output_stride)
    assert m[1].shape[-2:] == (16, 24)


def test_torchvision_resnet_and_vgg16_bn_files_load(tmp_path):
    from structseg.errors import CheckpointError
    from structseg.models import create_model, load_backbone_weights
    torch.manual_seed(0)
    # a torchvision-style resnet18 file: backbone keys + the ImageNet classifier
    state = {k: torch.randn_like(v.float()) if v.is_floating_point() else v
             for k, v in ResNetBackbone("resnet18").state_dict().items()}
    state |= {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    torch.save(state, tmp_path / "resnet18.pth")
    model = create_model("deeplabv3plus", 5, backbone="resnet18")
    assert load_backbone_weights(model, tmp_path / "resnet18.pth") == ["fc.bias", "fc.weight"]
    assert torch.equal(model.backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.backbone.bn1.running_var, state["bn1.running_var"])
    # the wrong backbone's file is refused with the file named
    with pytest.raises(CheckpointError, match="resnet18.pth: not torchvision resnet50 weights; missing keys"):
        load_backbone_weights(create_model("pspnet", 5, backbone="resnet50"), tmp_path / "resnet18.pth")
    # vgg16_bn for SegNet's encoder
    vgg = {f"features.{k}": torch.randn_like(v.float()) if v.is_floating_point() else v
           for k, v in make_vgg_features(batch_norm=True).state_dict().items()}
    vgg |= {"classifier.6.weight": torch.randn(1000, 8)}
    torch.save(vgg, tmp_path / "vgg16_bn.pth")
    segnet = create_model("segnet", 5)
    assert load_backbone_weights(segnet, tmp_path / "vgg16_bn.pth") == ["classifier.6.weight"]
    assert torch.equal(segnet.features[41].weight, vgg["features.41.weight"])

"""Backbones and create_model: architectures, published initialisation, name resolution."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from px_lightning.models import available_models, create_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "conformance"))
import models as conformance


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cifar_resnet20_matches_conformance_reference():
    ref = conformance.build("resnet20")
    ours = create_model("resnet20", num_classes=10)
    # Same parameter names and shapes: the reference state dict loads strictly and gives the same outputs.
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    ref.eval(), ours.eval()
    torch.testing.assert_close(ours(x), ref(x))
    assert isinstance(ours.blocks[3].shortcut.conv, nn.Conv2d)  # 1x1-conv shortcut at the stage change
    assert ours.blocks[3].shortcut.conv.kernel_size == (1, 1)


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_cifar_resnet_depths(depth):
    model = create_model(f"resnet{depth}", num_classes=100)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3x3 convolutions + the classifier
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_resnet20_parameter_count_is_the_published_0_27m():
    # 3x3 convs + 1x1 shortcuts + BN + fc for 10 classes
    assert 268_000 < _n_params(create_model("resnet20", 10)) < 275_000


def test_vgg16_bn_is_the_cifar_vgg():
    model = create_model("vgg16_bn", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 13 and len(linears) == 1 and linears[0].in_features == 512
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    tv = create_model("torchvision.vgg16_bn", num_classes=10)
    assert isinstance(tv, torchvision.models.VGG)
    assert tv.classifier[-1].out_features == 10


def test_resnet18_tiny_is_the_64px_resnet():
    model = create_model("resnet18_tiny", num_classes=200)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 200)
    # 11.2M parameters: the basic-block ResNet-18 with a 200-way classifier
    assert 11_100_000 < _n_params(model) < 11_400_000


def test_resnet50_is_torchvisions():
    model = create_model("resnet50", num_classes=1000)
    assert type(model) is torchvision.models.ResNet
    reference = torchvision.models.resnet50(weights=None)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


def test_any_torchvision_model_and_kwargs():
    model = create_model("mobilenet_v3_small", num_classes=7)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert isinstance(create_model("ResNet20", num_classes=3), nn.Module)  # case-insensitive
    cnn = create_model("small_cnn", num_classes=4, widths=(8, 16))
    assert cnn.fc.in_features == 16


def test_unknown_name_lists_choices():
    with pytest.raises(
        ValueError,
        match="unknown model 'resnet21'.*resnet18_tiny.*resnet20.*vgg16_bn.*resnet50.*torchvision[.]vgg16_bn",
    ):
        create_model("resnet21", num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet20", num_classes=0)
    assert "torchvision.vgg16_bn" in available_models()


@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn", "small_cnn"])
def test_kaiming_normal_fan_in_initialisation(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4096:
            fan_in = m.weight[0].numel()
            # kaiming_normal_(fan_in, relu gain): std = sqrt(2 / fan_in), mean 0
            assert m.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
            assert abs(m.weight.mean().item()) < 0.1 * (2 / fan_in) ** 0.5
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_tiny_resnet_fan_out_initialisation():
    torch.manual_seed(0)
    model = create_model("resnet18_tiny", num_classes=200)
    w = model.layer3[0].conv2.weight
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert w.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)


def test_small_cnn_is_small():
    model = create_model("small_cnn", num_classes=10)
    prunable = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert 90_000 < prunable < 100_000

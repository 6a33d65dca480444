"""The Tiny-ImageNet ResNet-18 (and ResNet-34) of the published PX experiments, for 64x64 inputs.

The pytorch-cifar100 style ResNet used by SynFlow and PX: a 3x3 stride-1 stem with no max-pool, four
stages of basic blocks (64, 128, 256, 512 channels; strides 1, 2, 2, 2), 1x1-convolution shortcuts where
the shape changes, global average pooling and a linear classifier. Published initialisation:
Kaiming-normal with ``mode="fan_out"`` for convolutions, BatchNorm 1/0, PyTorch's default for the
classifier. Not torchvision's ``resnet18`` (7x7 stride-2 stem and max-pool, meant for 224x224).

Example:
    >>> model = resnet18_tiny(num_classes=200)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_resnet import BasicBlock


class _BasicBlock(BasicBlock):
    def projection(self, f_in: int, f_out: int, stride: int) -> nn.Module:
        # A Sequential, so that the parameters are shortcut.0/shortcut.1 as in the published code.
        return nn.Sequential(nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False), nn.BatchNorm2d(f_out))


class TinyImageNetResNet(nn.Module):
    """ResNet with basic blocks for 64x64 inputs; ``blocks`` per stage, e.g. (2, 2, 2, 2) for ResNet-18.

    Example:
        >>> TinyImageNetResNet((3, 4, 6, 3), num_classes=200)  # ResNet-34
    """

    def __init__(
        self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 200, in_channels: int = 3
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or any(b < 1 for b in blocks):
            raise ValueError(f"blocks must be four positive counts (one per stage), got {blocks!r}")
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, cur = [], 64
        for i, (filters, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            layer = []
            for b in range(n):
                layer.append(_BasicBlock(cur, filters, stride=2 if (i > 0 and b == 0) else 1))
                cur = filters
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet18_tiny(num_classes: int = 200, **kwargs) -> TinyImageNetResNet:
    """The published Tiny-ImageNet ResNet-18."""
    return TinyImageNetResNet((2, 2, 2, 2), num_classes, **kwargs)


def resnet34_tiny(num_classes: int = 200, **kwargs) -> TinyImageNetResNet:
    """Tiny-ImageNet ResNet-34 (same design, 3-4-6-3 blocks)."""
    return TinyImageNetResNet((3, 4, 6, 3), num_classes, **kwargs)

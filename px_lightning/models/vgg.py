"""VGG with BatchNorm for 32x32 inputs (CIFAR), as in the published PX experiments (``vgg16_bn``).

The open_lth/SynFlow CIFAR VGG: 3x3 convolutions (with bias) + BatchNorm + ReLU, max-pooling between
stages, a 2x2 average pool and a single linear classifier on 512 features. Not torchvision's ImageNet VGG
(that one has a 4096-wide classifier head): see :func:`px_lightning.models.create_model` for the names.

Example:
    >>> model = vgg16_bn(num_classes=100)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_resnet import kaiming_normal_init

_PLANS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class _ConvBN(nn.Module):
    def __init__(self, f_in: int, f_out: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(f_out) if batch_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    """VGG-``depth`` (11, 13, 16, 19) for 32x32 inputs.

    Example:
        >>> CifarVGG(16, num_classes=10, batch_norm=True)
    """

    def __init__(
        self, depth: int = 16, num_classes: int = 10, batch_norm: bool = True, in_channels: int = 3
    ) -> None:
        super().__init__()
        if depth not in _PLANS:
            raise ValueError(f"depth must be one of {sorted(_PLANS)}, got {depth}")
        layers: list[nn.Module] = []
        filters = in_channels
        for spec in _PLANS[depth]:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(_ConvBN(filters, int(spec), batch_norm))
                filters = int(spec)
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)
        kaiming_normal_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(x)
        # 32x32 inputs leave 2x2 maps after four max-pools; the published head averages them.
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def vgg11_bn(num_classes: int = 10, **kwargs) -> CifarVGG:
    """CIFAR VGG-11 with BatchNorm."""
    return CifarVGG(11, num_classes, batch_norm=True, **kwargs)


def vgg13_bn(num_classes: int = 10, **kwargs) -> CifarVGG:
    """CIFAR VGG-13 with BatchNorm."""
    return CifarVGG(13, num_classes, batch_norm=True, **kwargs)


def vgg16_bn(num_classes: int = 10, **kwargs) -> CifarVGG:
    """CIFAR VGG-16 with BatchNorm (the published ``vgg16_bn``)."""
    return CifarVGG(16, num_classes, batch_norm=True, **kwargs)


def vgg19_bn(num_classes: int = 10, **kwargs) -> CifarVGG:
    """CIFAR VGG-19 with BatchNorm."""
    return CifarVGG(19, num_classes, batch_norm=True, **kwargs)

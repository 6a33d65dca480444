"""The CIFAR ResNet (ResNet-20/32/44/56) of the published PX experiments.

Three stages of ``(depth - 2) / 6`` basic blocks with 16, 32 and 64 channels for 32x32 inputs. Where a
block changes resolution or width, the shortcut is a 1x1 convolution with stride 2 followed by
BatchNorm (the "lottery ticket" ResNet of open_lth/SynFlow used by PX), not the zero-padding shortcut of
the original paper. Parameter names match ``shared/conformance/models.py`` so its state dicts load.

Example:
    >>> model = resnet20(num_classes=10)
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def kaiming_normal_init(model: nn.Module) -> nn.Module:
    """The published initialisation: Kaiming-normal (fan-in) conv/linear weights, BatchNorm 1/0.

    Biases of convolutions and linears keep PyTorch's default, as in the published code.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class _Shortcut(nn.Module):
    def __init__(self, f_in: int, f_out: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convolutions with BatchNorm, ReLU, and a residual connection that
    is the identity, or ``projection(f_in, f_out, stride)`` where the block changes resolution or width.

    The projection is a 1x1 convolution and BatchNorm, as ``shortcut.conv``/``shortcut.bn`` (the names of
    ``shared/conformance/models.py``); a subclass may name them otherwise.

    Example:
        >>> BasicBlock(16, 32, stride=2)(torch.randn(1, 16, 32, 32)).shape
        torch.Size([1, 32, 16, 16])
    """

    def __init__(self, f_in: int, f_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        changes = stride != 1 or f_in != f_out
        self.shortcut = self.projection(f_in, f_out, stride) if changes else nn.Identity()

    def projection(self, f_in: int, f_out: int, stride: int) -> nn.Module:
        """The shortcut of a block that changes resolution or width."""
        return _Shortcut(f_in, f_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; ``depth`` in 20, 32, 44, 56, 110, ...; ``width`` of the first stage.

    Example:
        >>> CifarResNet(depth=32, num_classes=100)
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, cur = [], width
        for stage, filters in enumerate((width, 2 * width, 4 * width)):
            for b in range(n):
                blocks.append(BasicBlock(cur, filters, stride=2 if stage > 0 and b == 0 else 1))
                cur = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cur, num_classes)
        kaiming_normal_init(self)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        # Global average pooling over the (square) final feature map, as published.
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet20(num_classes: int = 10, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (0.27M parameters)."""
    return CifarResNet(20, num_classes, **kwargs)


def resnet32(num_classes: int = 10, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32."""
    return CifarResNet(32, num_classes, **kwargs)


def resnet44(num_classes: int = 10, **kwargs) -> CifarResNet:
    """CIFAR ResNet-44."""
    return CifarResNet(44, num_classes, **kwargs)


def resnet56(num_classes: int = 10, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56."""
    return CifarResNet(56, num_classes, **kwargs)


__all__ = ["BasicBlock", "CifarResNet", "kaiming_normal_init", "resnet20", "resnet32", "resnet44", "resnet56"]

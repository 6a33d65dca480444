"""A masked module's parts by plain tensor name (``net.conv1.weight``): its mask, its trainable original."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..pruning.masks import WeightMask


def split_name(name: str) -> tuple[str, str]:
    """``"net.conv1.weight"`` -> ``("net.conv1", "weight")``; a top-level tensor has the module name ``""``."""
    module_name, _, attr = name.rpartition(".")
    return module_name, attr


def owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding the tensor ``name`` and the tensor's attribute name on it."""
    module_name, attr = split_name(name)
    return (model.get_submodule(module_name) if module_name else model), attr


def mask_module(model: nn.Module, name: str) -> WeightMask:
    """The ``WeightMask`` parametrization of the masked tensor ``name``."""
    module, attr = owner(model, name)
    return next(p for p in module.parametrizations[attr] if isinstance(p, WeightMask))


def original(model: nn.Module, name: str) -> Tensor:
    """The trainable tensor (``parametrizations.<attr>.original``) behind the masked tensor ``name``."""
    module, attr = owner(model, name)
    return module.parametrizations[attr].original


def zero_pruned(module: nn.Module, names: Sequence[str]) -> None:
    """Set the pruned entries of the trainable tensors of ``names`` to exactly zero."""
    # Their gradients are zero, so SGD (momentum, weight decay) and Adam leave them there, and a resumed run
    # continues bit for bit.
    with torch.no_grad():
        for n in names:
            original(module, n).mul_(mask_module(module, n).mask)

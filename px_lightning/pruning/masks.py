"""The mask parametrization: install, read, remove.

A mask is a boolean buffer inside a ``torch.nn.utils.parametrize`` parametrization, so the effective
weight is ``original * mask`` in every forward pass, gradients of pruned entries are zero, and the
mask is part of the ``state_dict`` (``layer.parametrizations.weight.0.mask``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


def _bool_mask(mask: object, name: str) -> Tensor:
    """``mask`` as a bool tensor; a float/int mask must hold only 0 and 1, else ``ValueError`` names it.

    Casting scores or probabilities to bool would keep every nonzero entry (density 1.0, silently).
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor mask (bool, True = kept), got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return mask
    binary = (mask == 0) | (mask == 1)
    if not bool(binary.all()):
        bad = mask[~binary].flatten()[0].item()
        raise ValueError(
            f"{name} is a {mask.dtype} tensor with values other than 0 and 1 (e.g. {bad!r}): a mask must be "
            "bool (True = kept) or hold only 0/1. To turn scores into masks use find_masks, or threshold "
            "them yourself (scores > t)"
        )
    return mask.to(torch.bool)


class WeightMask(nn.Module):
    """Parametrization multiplying a tensor by a fixed boolean mask (kept in the ``state_dict``).

    ``mask`` is a bool tensor, or a float/int one holding only 0 and 1 (anything else raises).

    Example:
        >>> parametrize.register_parametrization(layer, "weight", WeightMask(layer.weight != 0))
    """

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", _bool_mask(mask, "mask").detach().clone())

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask.to(weight.dtype)


def module_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding the tensor ``name`` (a plain parameter name) and the tensor's attribute name.

    Raises a ``KeyError`` naming ``name`` when ``model`` has no such tensor.

    Example:
        >>> module, attr = module_and_attr(model, "layer1.0.conv1.weight")  # (the Conv2d, "weight")
    """
    module_name, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError as err:
        raise KeyError(f"masks name {name!r}, which is not a tensor of {type(model).__name__}") from err
    if not (hasattr(module, attr) and isinstance(getattr(module, attr), Tensor)):
        raise KeyError(f"masks name {name!r}, which is not a tensor of {type(model).__name__}")
    return module, attr


def _mask_of(module: nn.Module, attr: str) -> WeightMask | None:
    if not parametrize.is_parametrized(module, attr):
        return None
    for p in module.parametrizations[attr]:
        if isinstance(p, WeightMask):
            return p
    return None


def get_masks(model: nn.Module) -> dict[str, Tensor]:
    """The boolean masks installed on ``model``, by plain parameter name (copies)."""
    masks = {}
    for module_name, module in model.named_modules():
        for attr in getattr(module, "parametrizations", {}):
            found = _mask_of(module, attr)
            if found is not None:
                masks[f"{module_name}.{attr}" if module_name else attr] = found.mask.clone()
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Install ``masks`` as parametrizations; a tensor that already has one gets its mask updated in place.

    ``masks`` maps plain parameter names to bool tensors of the parameter's shape (True = kept); float or
    int masks are accepted when they hold only 0 and 1. Every mask is checked (name, shape, values)
    before any is installed, so a bad entry leaves the model as it was.

    Example:
        >>> apply_masks(model, {"fc.weight": torch.ones(10, 32, dtype=torch.bool)})
    """
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict {{param_name: bool Tensor}}, got {type(masks).__name__}")
    checked = []
    for name, mask in masks.items():
        module, attr = module_and_attr(model, name)
        mask = _bool_mask(mask, f"masks[{name!r}]")
        shape = getattr(module, attr).shape
        if tuple(mask.shape) != tuple(shape):
            raise ValueError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, the tensor has {tuple(shape)}"
            )
        checked.append((module, attr, mask))
    for module, attr, mask in checked:
        existing = _mask_of(module, attr)
        if existing is not None:
            existing.mask.copy_(mask.to(existing.mask.device))
        else:
            device = getattr(module, attr).device
            parametrize.register_parametrization(module, attr, WeightMask(mask.to(device)))
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Remove every mask parametrization, leaving pruned weights at exactly zero (same Parameter objects).

    A tensor that carries other parametrizations too (``weight_norm`` before the mask, say) has them made
    permanent with the mask, with a warning naming them: the mask cannot be taken out of the chain alone
    and keep the pruned weights at zero.
    """
    for module_name, module in list(model.named_modules()):
        for attr in list(getattr(module, "parametrizations", {}) or {}):
            if _mask_of(module, attr) is not None:
                others = [
                    type(p).__name__ for p in module.parametrizations[attr] if not isinstance(p, WeightMask)
                ]
                if others:
                    name = f"{module_name}.{attr}" if module_name else attr
                    warnings.warn(
                        f"remove_masks: {name} also carries the parametrizations {others}; they are made "
                        "permanent together with its mask",
                        stacklevel=2,
                    )
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model

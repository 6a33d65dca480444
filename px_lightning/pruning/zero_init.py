"""Prunable tensors that are zero because the architecture initialises them so, read at a default init.

A weight tensor that is identically zero at scoring time because its network was built that way
(torchvision's ``VisionTransformer`` zero-initialises its classifier ``heads.head``; zero-initialised
residual branches) carries no path information yet: every path through it has weight 0, so a scorer that
differentiates through it finds nothing upstream either (PX's scores all vanish on a fresh ViT). The
scorers read such a tensor as if it had the default initialisation of its layer type, on their own
copies only:

- ``.weight`` of ``nn.Linear`` / ``nn.ConvNd`` (and any other attribute not named below): torch's default
  ``kaiming_uniform_(a=sqrt(5))``, i.e. uniform on ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``;
- ``nn.MultiheadAttention``'s ``in_proj_weight`` / ``q_proj_weight`` / ``k_proj_weight`` /
  ``v_proj_weight``: ``xavier_uniform_``, uniform on ``[-sqrt(6/(fan_in+fan_out)), +...]``.

The rule depends on the tensor's attribute name and shape only, so a scorer can apply it wherever it holds
the ``weights`` dict, without the module. Values come from a CPU ``torch.Generator`` seeded with a fixed
number and the tensor's name, drawn in float64 and then cast: the same on every rank, device and run, and
a float32 copy holds the rounding of the float64 one. A tensor zero because masks pruned it is never
substituted: only a tensor with at least one kept entry, all of whose kept entries are zero, is; and the
pruned entries of a substituted tensor stay zero (so pruned weights keep scoring 0).

Example:
    >>> weights = at_default_init(weights, masks)  # zero-initialised tensors replaced (masked), others as given
    >>> replaced = read_zero_tensors_at_default_init(net, ["heads.head.weight"], masks)  # in place, a copy
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

# The seed every substitution starts from (mixed with the tensor's name): fixed, so scores are reproducible.
SEED = 20240617
# nn.MultiheadAttention's packed / separate projection matrices, which torch initialises xavier-uniformly.
XAVIER_ATTRIBUTES = frozenset({"in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"})


def _fans(shape: torch.Size) -> tuple[int, int]:
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_in = shape[1] * receptive if len(shape) > 1 else shape[0]
    return fan_in, shape[0] * receptive


def default_init(name: str, shape: torch.Size | tuple[int, ...], like: Tensor) -> Tensor:
    """A default initial value of the tensor ``name`` (a plain parameter name) of ``shape``, in ``like``'s
    dtype and on its device, drawn from a fixed-seed generator: the same on every call.

    Example:
        >>> default_init("heads.head.weight", (10, 32), torch.empty(0)).abs().max() <= 32**-0.5
        tensor(True)
    """
    shape = torch.Size(shape)
    fan_in, fan_out = _fans(shape)
    if name.rpartition(".")[2] in XAVIER_ATTRIBUTES:
        bound = math.sqrt(6.0 / (fan_in + fan_out))
    else:  # kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in) = 1/sqrt(fan_in)
        bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
    generator = torch.Generator().manual_seed(SEED + zlib.crc32(name.encode()))
    value = torch.rand(shape, generator=generator, dtype=torch.float64).mul_(2 * bound).sub_(bound)
    return value.to(device=like.device, dtype=like.dtype)


def _masked_default(name: str, like: Tensor, masks: Mapping[str, Tensor] | None) -> Tensor:
    value = default_init(name, like.shape, like)
    return value.mul_(masks[name].to(value.device)) if masks is not None and name in masks else value


def zero_initialised(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> list[str]:
    """The names of ``weights`` whose kept entries (``masks``; all entries when ``None``) are all zero while
    at least one entry is kept: zero by construction, not by pruning.

    Example:
        >>> zero_initialised({"fc.weight": torch.zeros(2, 3)})
        ['fc.weight']
    """
    out = []
    for n, w in weights.items():
        kept = None if masks is None or n not in masks else masks[n].to(w.device)
        if kept is None:
            if w.numel() and not bool(w.any()):
                out.append(n)
        elif bool(kept.any()) and not bool((w * kept).any()):
            out.append(n)
    return out


def at_default_init(
    weights: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """``weights`` with each ``zero_initialised`` tensor replaced by ``default_init`` times its mask (new
    tensors); every other tensor is the one given. Nothing passed in is changed.

    Example:
        >>> weights = at_default_init(weights, masks)
    """
    out = dict(weights)
    for n in zero_initialised(weights, masks):
        out[n] = _masked_default(n, weights[n], masks)
    return out


def read_zero_tensors_at_default_init(
    net: nn.Module, names: Iterable[str], masks: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Write ``default_init`` values, in place, into those tensors ``names`` of ``net`` (a scorer's working
    copy, never the caller's model) that are ``zero_initialised``; pass the ``masks`` a masked network
    scores under, so that tensors pruned away stay zero. Returns ``{name: value written}``.

    Example:
        >>> net = plain_copy(model)
        >>> read_zero_tensors_at_default_init(net, ["heads.head.weight"], masks)
        {'heads.head.weight': tensor(...)}
    """
    current = {n: net.get_parameter(n).detach() for n in names}
    replaced = {}
    with torch.no_grad():
        for n in zero_initialised(current, masks):
            replaced[n] = _masked_default(n, current[n], masks)
            current[n].copy_(replaced[n])
    return replaced


__all__ = [
    "SEED",
    "XAVIER_ATTRIBUTES",
    "at_default_init",
    "default_init",
    "read_zero_tensors_at_default_init",
    "zero_initialised",
]

"""N:M masks: at most N kept weights in every group of M consecutive weights along the input dimension.

Groups: a linear weight ``[out, in]`` is grouped along ``in`` (``w[o, 4g : 4g + 4]``), as the 2:4
semi-structured kernels (cuSPARSELt, ``torch.sparse.to_sparse_semi_structured``) read it. A convolution
weight ``[out, in, *kernel]`` is grouped along ``in`` at each kernel tap (``w[o, 4g : 4g + 4, i, j]``): the
reduction dimension of the channels-last implicit GEMM that sparse tensor cores run, as NVIDIA's ASP
groups it. A tensor is constrained when its input dimension (``in``, per group for grouped convolutions)
is a multiple of M; any other tensor (the 3-channel stem of an image network, a 10-input linear layer) is
left unconstrained, since no N:M kernel could run it, and is named in ``NMMasks.unconstrained``.

The budget is the global (or per-layer) one of ``threshold_masks``: within each group only the N best
scores may be kept, and the density's threshold is taken over those allowed weights (every other weight
ranks last), so the total kept stays within the budget of ``threshold_masks`` (``total - int((1 - density)
* total)``) and each group keeps at most N.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .masks import get_masks
from .schedule import threshold_masks
from .validation import check_density

_PATTERN = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


def parse_pattern(pattern: str | tuple[int, int]) -> tuple[int, int]:
    """``"N:M"`` (or ``(N, M)``) as ``(N, M)``, integers with ``1 <= N < M``; else a ``ValueError``.

    Example:
        >>> parse_pattern("2:4")
        (2, 4)
    """
    hint = "pattern must be 'N:M' with integers 1 <= N < M, e.g. '2:4' (2 kept in every 4)"
    if isinstance(pattern, str):
        match = _PATTERN.fullmatch(pattern)
        if match is None:
            raise ValueError(f"{hint}, got {pattern!r}")
        n, m = int(match.group(1)), int(match.group(2))
    elif isinstance(pattern, tuple) and len(pattern) == 2 and all(type(v) is int for v in pattern):
        n, m = pattern
    else:
        raise TypeError(f"{hint} (a str, or a tuple (N, M)), got {type(pattern).__name__} {pattern!r}")
    if not 1 <= n < m:
        raise ValueError(f"{hint}, got {pattern!r}" + (": it constrains nothing" if n >= m >= 1 else ""))
    return n, m


def nm_eligible(shape: Sequence[int], m: int) -> bool:
    """Whether a tensor of ``shape`` takes an N:M pattern: 2 or more dims, ``shape[1]`` a multiple of ``m``.

    Example:
        >>> nm_eligible((64, 3, 7, 7), 4), nm_eligible((64, 64, 3, 3), 4)
        (False, True)
    """
    return len(shape) >= 2 and shape[1] % m == 0


def _groups(t: Tensor, m: int) -> Tensor:
    # [out, in, *kernel] -> [out * kernel taps * in / m, m]: consecutive input channels at each tap.
    return t.movedim(1, -1).reshape(-1, m)


def _ungroup(groups: Tensor, like: Tensor) -> Tensor:
    return groups.reshape(like.movedim(1, -1).shape).movedim(-1, 1)


def nm_allowed(scores: Tensor, n: int, m: int) -> Tensor:
    """Bool tensor of ``scores``' shape: the ``n`` best scores of every group of ``m`` (ties: lowest index).

    Example:
        >>> nm_allowed(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 2, 4)
        tensor([[ True, False,  True, False]])
    """
    groups = _groups(scores, m)
    top = groups.topk(n, dim=1).indices
    allowed = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    return _ungroup(allowed, scores)


def satisfies_nm(mask: Tensor, pattern: str | tuple[int, int]) -> bool:
    """Whether ``mask`` keeps at most N of every group of M (see the module docstring for the groups).

    Example:
        >>> satisfies_nm(masks["layer1.0.conv1.weight"], "2:4")
        True
    """
    n, m = parse_pattern(pattern)
    if not nm_eligible(mask.shape, m):
        raise ValueError(
            f"a mask of shape {tuple(mask.shape)} has no groups of {m} along its input dimension"
        )
    return bool((_groups(mask.bool(), m).sum(1) <= n).all())


class NMMasks(NamedTuple):
    """``nm_masks``' answer: the masks, and which tensors hold the pattern and which are left free."""

    masks: dict[str, Tensor]
    constrained: list[str]
    unconstrained: list[str]


def nm_masks(
    scores: Mapping[str, Tensor],
    density: float,
    pattern: str | tuple[int, int] = "2:4",
    scope: str = "global",
    *,
    pruned: Mapping[str, Tensor] | None = None,
    dense: Sequence[str] = (),
    layer_floor: float = 0.0,
) -> NMMasks:
    """Masks keeping the top ``density`` of ``scores`` (as ``threshold_masks``) under an N:M pattern.

    In every constrained tensor each group of M keeps at most N: the N best scores of a group are
    allowed and the density's threshold is taken among the allowed weights of all tensors (``scope=
    "global"``) or of each (``"local"``), every other weight ranking last; so at most the budget of
    ``threshold_masks`` is kept (``total - int((1 - density) * total)``), fewer when the pattern allows fewer (a density above N/M on a network
    that is all constrained keeps N/M). ``pruned`` (bool masks, False = already pruned) ranks pruned
    weights last, and they stay pruned. ``dense`` tensors are kept whole and ``layer_floor`` reserves each
    tensor's best weights, as in ``threshold_masks``; ``dense`` tensors are left unconstrained.

    Example:
        >>> result = nm_masks(compute_scores(model, "magnitude"), 0.3, "2:4")
        >>> result.unconstrained  # e.g. ['conv1.weight'] for a ResNet (3 input channels)
    """
    n, m = parse_pattern(pattern)
    density = check_density(density)
    unknown = [name for name in dense if name not in scores]
    if unknown:
        raise ValueError(f"dense names {unknown} are not scored tensors; scored: {sorted(scores)[:20]}")
    constrained, unconstrained, ranked = [], [], {}
    for name, s in scores.items():
        s = s.float() if not s.is_floating_point() else s
        if pruned is not None:
            s = s.masked_fill(~pruned[name].to(s.device, torch.bool), float("-inf"))
        if name in dense or not nm_eligible(s.shape, m):
            unconstrained.append(name)
        else:
            s = s.masked_fill(~nm_allowed(s, n, m), float("-inf"))
            constrained.append(name)
        ranked[name] = s
    masks = threshold_masks(ranked, density, scope, dense=dense, layer_floor=layer_floor)
    for name in constrained:
        # A density near 1 keeps everything (k < 1): only the allowed weights may stay.
        masks[name] &= ranked[name] > float("-inf")
    if pruned is not None:
        for name, mask in masks.items():
            mask &= pruned[name].to(mask.device, torch.bool)
    return NMMasks(masks, constrained, unconstrained)


def semi_structured_linears(model: nn.Module) -> dict[str, list[str] | dict[str, str]]:
    """Turn every 2:4-masked ``nn.Linear`` weight into ``torch.sparse.to_sparse_semi_structured`` (CUDA).

    For inference: each converted layer loses its mask parametrization (its weight is the masked one,
    stored in the 2:4 compressed form that sparse tensor cores multiply). Needs a CUDA GPU of compute
    capability 8.0 or later (A100, H100, H200) and the model on it; raises ``RuntimeError`` otherwise.
    Layers whose mask breaks the pattern, or whose shape or dtype the kernels refuse (torch says why),
    are left as they are and returned under ``"skipped"`` with the reason. Only modules of type exactly
    ``nn.Linear`` are converted (``nn.MultiheadAttention``'s ``out_proj`` is read by other code).

    Example:
        >>> apply_masks(model, find_masks(model, "magnitude", density=0.5, pattern="2:4"))
        >>> semi_structured_linears(model.half().cuda())["converted"]
    """
    if not torch.cuda.is_available():
        raise RuntimeError(
            "semi_structured_linears needs a CUDA GPU of compute capability >= 8.0 (torch.sparse semi-"
            "structured kernels); none is available here: keep the masked model dense on this machine"
        )
    from torch.sparse import to_sparse_semi_structured  # only meaningful with CUDA

    masks = get_masks(model)
    converted, skipped = [], {}
    for module_name, module in model.named_modules():
        name = f"{module_name}.weight" if module_name else "weight"
        if type(module) is not nn.Linear or name not in masks:
            continue
        weight = module.weight
        if weight.device.type != "cuda" or torch.cuda.get_device_capability(weight.device) < (8, 0):
            raise RuntimeError(
                f"semi_structured_linears: {name} is on {weight.device}; move the model to a CUDA GPU of "
                "compute capability >= 8.0 first"
            )
        if len(module.parametrizations["weight"]) != 1:
            skipped[name] = "carries parametrizations other than its mask"
            continue
        if not (nm_eligible(weight.shape, 4) and satisfies_nm(masks[name], "2:4")):
            skipped[name] = "its mask breaks the 2:4 pattern"
            continue
        try:
            compressed = to_sparse_semi_structured(weight.detach())
        except (RuntimeError, ValueError) as err:
            skipped[name] = str(err)
            continue
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        module.weight = nn.Parameter(compressed, requires_grad=False)
        converted.append(name)
    return {"converted": converted, "skipped": skipped}


__all__ = [
    "NMMasks",
    "nm_allowed",
    "nm_eligible",
    "nm_masks",
    "parse_pattern",
    "satisfies_nm",
    "semi_structured_linears",
]

"""Density schedules and thresholds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def density_schedule(density: float, rounds: int, kind: str = "exponential") -> list[float]:
    """Density after each round: ``density ** ((r + 1) / rounds)`` (published) or linear."""
    if kind == "exponential":
        return [density ** ((r + 1) / rounds) for r in range(rounds)]
    if kind == "linear":
        return [1.0 - (1.0 - density) * (r + 1) / rounds for r in range(rounds)]
    raise ValueError(f"schedule must be 'exponential' or 'linear', got {kind!r}")


def _keep_above(scores: Tensor, density: float) -> Tensor:
    # As published: k = int((1 - d) * n), threshold = k-th smallest score, keep scores strictly above it.
    k = int((1.0 - density) * scores.numel())
    if k < 1:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores.flatten(), k).values
    return scores > threshold


def flatten_named(tensors: dict[str, Tensor]) -> Tensor:
    """The tensors of ``tensors`` as one flat tensor, in the dict's order (undone by ``split_like``).

    Example:
        >>> split_like(flatten_named(scores), scores)  # equal to scores
    """
    return torch.cat([t.flatten() for t in tensors.values()])


def split_like(flat: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """Views of ``flat`` shaped as the tensors of ``like``, in its order (the inverse of ``flatten_named``)."""
    out, start = {}, 0
    for n, t in like.items():
        out[n] = flat[start : start + t.numel()].view_as(t)
        start += t.numel()
    return out


def threshold_masks(
    scores: dict[str, Tensor],
    density: float,
    scope: str = "global",
    *,
    dense: Sequence[str] = (),
    layer_floor: float = 0.0,
) -> dict[str, Tensor]:
    """Boolean masks keeping the top ``density`` of ``scores`` globally or per layer (on the scores' device).

    ``dense``: tensors kept whole, inside the same total budget (global: the others share
    ``density * total - kept dense``; local: the others keep ``density`` each). ``layer_floor``
    (global scope): every other tensor keeps at least ``ceil(layer_floor * density * size)`` of its
    positive-scored weights, its best ones, again inside the same total budget.

    Example:
        >>> threshold_masks(scores, 0.01, dense=["fc.weight"], layer_floor=0.2)
    """
    if dense or layer_floor:
        return _threshold_with_constraints(scores, density, scope, dense, layer_floor)
    if scope == "global":
        return split_like(_keep_above(flatten_named(scores), density), scores)
    if scope == "local":
        return {n: _keep_above(s, density) for n, s in scores.items()}
    raise ValueError(f"scope must be 'global' or 'local', got {scope!r}")


def _threshold_with_constraints(
    scores: dict[str, Tensor], density: float, scope: str, dense: Sequence[str], layer_floor: float
) -> dict[str, Tensor]:
    unknown = [n for n in dense if n not in scores]
    if unknown:
        raise ValueError(f"dense names {unknown} are not scored tensors; scored: {sorted(scores)[:20]}")
    if not 0.0 <= layer_floor <= 1.0:
        raise ValueError(f"layer_floor must be in [0, 1] (a fraction of the density), got {layer_floor!r}")
    out = {n: torch.ones_like(scores[n], dtype=torch.bool) for n in dense}
    rest = {n: s for n, s in scores.items() if n not in out}
    if not rest:
        return out
    if scope == "local":
        out.update(threshold_masks(rest, density, "local"))
        return {n: out[n] for n in scores}
    if scope != "global":
        raise ValueError(f"scope must be 'global' or 'local', got {scope!r}")
    total = sum(s.numel() for s in scores.values())
    size = sum(s.numel() for s in rest.values())
    budget = density * total - sum(m.numel() for m in out.values())
    if budget < 1:
        raise ValueError(
            f"density {density:g} (this round's) keeps {density * total:.0f} weights, not more than the "
            f"dense tensors {list(dense)} hold: raise the density or keep fewer tensors dense"
        )
    if layer_floor:
        # Reserve each tensor's best positive-scored weights (pruned weights score 0 and stay pruned), by
        # giving them an infinite score, then threshold globally within the same budget.
        floored = {}
        for n, s in rest.items():
            want = min(math.ceil(layer_floor * density * s.numel()), int((s > 0).sum()))
            s = s.clone()
            if want:
                top = torch.topk(s.flatten(), want).indices
                s.view(-1)[top] = float("inf")
            floored[n] = s
        rest = floored
    out.update(threshold_masks(rest, min(1.0, budget / size), "global"))
    return {n: out[n] for n in scores}

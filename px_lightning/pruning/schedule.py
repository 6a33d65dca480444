"""Density schedules and thresholds."""

from __future__ import annotations

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


def threshold_masks(scores: dict[str, Tensor], density: float, scope: str = "global") -> dict[str, Tensor]:
    """Boolean masks keeping the top ``density`` of ``scores`` globally or per layer (on the scores' device)."""
    if scope == "global":
        names = list(scores)
        flat = torch.cat([scores[n].flatten() for n in names])
        keep = _keep_above(flat, density)
        out, start = {}, 0
        for n in names:
            size = scores[n].numel()
            out[n] = keep[start : start + size].view_as(scores[n])
            start += size
        return out
    if scope == "local":
        return {n: _keep_above(s, density) for n, s in scores.items()}
    raise ValueError(f"scope must be 'global' or 'local', got {scope!r}")

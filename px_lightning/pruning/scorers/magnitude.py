"""Magnitude: ``|w|`` of the effective (masked) weight; needs no data."""

from __future__ import annotations

from torch import Tensor

from .base import Scorer


class MagnitudeScorer(Scorer):
    name = "magnitude"
    one_shot = True
    needs_data = False

    def score(self, model, weights, masks, batches, loss_fn=None) -> dict[str, Tensor]:
        return {n: (w.detach() * masks[n]).abs() for n, w in weights.items()}

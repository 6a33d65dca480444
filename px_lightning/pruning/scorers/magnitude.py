"""Magnitude: ``|w|`` of the effective (masked) weight; needs no data. A tensor zero by construction (a
ViT's zero-initialised head) is read at its layer's default init (``zero_init``), not pruned away whole."""

from __future__ import annotations

from torch import Tensor

from ..zero_init import at_default_init
from .base import Scorer


class MagnitudeScorer(Scorer):
    name = "magnitude"
    one_shot = True
    needs_data = False

    def score(self, model, weights, masks, batches, loss_fn=None) -> dict[str, Tensor]:
        # A tensor zero by construction (a ViT's head) is scored as if at its layer's default init.
        weights = at_default_init(weights, masks)
        return {n: (w.detach() * masks[n]).abs() for n, w in weights.items()}

"""Random: i.i.d. uniform scores (pruned weights score 0), seeded by ``seed`` for reproducibility."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Scorer, check_seed


class RandomScorer(Scorer):
    name = "random"
    one_shot = True
    needs_data = False

    def __init__(self, seed: int | None = None) -> None:
        self.seed = check_seed(seed, self.name)

    def score(self, model, weights, masks, batches, loss_fn=None) -> dict[str, Tensor]:
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        out = {}
        for n, w in weights.items():
            r = torch.rand(w.shape, generator=generator, dtype=torch.float64).to(w.device, w.dtype)
            out[n] = (r + 1e-12) * masks[n]  # strictly positive where kept, zero where pruned
        return out

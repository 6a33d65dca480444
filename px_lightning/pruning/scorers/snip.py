"""SNIP (Lee et al., 2019): connection sensitivity ``|dL/dm|`` of a mask ``m`` on each weight.

As published: a working copy in ``train()`` mode, gradients summed over the scoring batches, scores
normalised to sum to 1. With the effective weight ``m * w``, ``dL/dm = dL/dw_eff * w``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..masks import plain_copy
from .base import Scorer


def split_batch(batch) -> tuple[Tensor, Tensor | None]:
    """``(inputs, targets)`` of a batch given as a pair or a bare input tensor."""
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


class SNIPScorer(Scorer):
    name = "snip"
    one_shot = True

    def score(self, model, weights, masks, batches, loss_fn=None) -> dict[str, Tensor]:
        loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        net = plain_copy(model).train()
        ref = next(iter(weights.values()))
        gates = {n: masks[n].to(w.dtype).requires_grad_(True) for n, w in weights.items()}
        seen = 0
        for batch in batches:
            x, y = split_batch(batch)
            if y is None:
                raise ValueError("batches must hold (inputs, targets) pairs: SNIP needs targets for its loss")
            x = x.to(ref.device, ref.dtype if x.is_floating_point() else x.dtype)
            substituted = {n: gates[n] * weights[n] for n in weights}
            out = torch.func.functional_call(net, substituted, (x,), strict=False)
            loss_fn(out, y.to(ref.device)).backward()
            seen += 1
        if seen == 0:
            raise ValueError("batches is empty: SNIP needs at least one (inputs, targets) batch")
        scores = {n: g.grad.detach().abs() for n, g in gates.items()}
        total = sum(s.sum() for s in scores.values())
        return {n: s / total for n, s in scores.items()}

"""SNIP (Lee et al., 2019): connection sensitivity ``|dL/dm|`` of a mask ``m`` on each weight.

As published: a working copy in ``train()`` mode, gradients summed over the scoring batches, scores
normalised to sum to 1. With the effective weight ``m * w``, ``dL/dm = dL/dw_eff * w``; pruned weights score 0. Dropout and
stochastic depth are off (``without_randomness``). Where every sensitivity is zero (a collapsed layer cuts
every path, or the loss is flat) the scores stay zero rather than 0/0 = NaN: the search then says so.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..copies import scoring_copy, without_randomness
from ..zero_init import at_default_init
from .base import Scorer, grad_or_zeros, labelled_batch, model_output


class SNIPScorer(Scorer):
    name = "snip"
    one_shot = True

    def score(self, model, weights, masks, batches, loss_fn=None) -> dict[str, Tensor]:
        # A tensor zero by construction (a ViT's head) is scored as if at its layer's default init.
        weights = at_default_init(weights, masks)
        loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        net = without_randomness(scoring_copy(model).train())
        ref = next(iter(weights.values()))
        gates = {n: masks[n].to(w.dtype).requires_grad_(True) for n, w in weights.items()}
        for batch in batches:
            x, y = labelled_batch(batch, ref, "SNIP")
            substituted = {n: gates[n] * weights[n] for n in weights}
            out = torch.func.functional_call(net, substituted, (x,), strict=False)
            loss_fn(model_output(out), y).backward()
        # A pruned weight scores 0 (its mask gradient is not: dL/dw_eff * w), so that in a later round of a
        # search it neither outranks kept weights nor revives; otherwise the kept share falls short.
        # A tensor the output does not depend on (GoogLeNet's auxiliary heads) has no gradient: it scores 0.
        scores = {n: grad_or_zeros(g).detach().abs() * masks[n] for n, g in gates.items()}
        total = sum(s.sum() for s in scores.values())
        if not total > 0:  # all zero: no normalisation (0/0); find_masks reports the zero scores
            return scores
        return {n: s / total for n, s in scores.items()}

"""SynFlow (Tanaka et al., 2020): data-free synaptic saliency ``|dR/dw * w|``.

As published: a working copy in ``eval()`` mode with every parameter and buffer replaced by its absolute
value, an all-ones input of batch 1 shaped like the first scoring batch, ``R = sum(output)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..masks import plain_copy
from .base import Scorer, batch_inputs, model_output


class SynFlowScorer(Scorer):
    name = "synflow"
    one_shot = False

    def score(self, model, weights, masks, batches, loss_fn=None) -> dict[str, Tensor]:
        net = plain_copy(model).eval()
        with torch.no_grad():
            for tensor in list(net.parameters()) + list(net.buffers()):
                if tensor.is_floating_point():
                    tensor.abs_()
        leaves = {n: (w.abs() * masks[n]).requires_grad_(True) for n, w in weights.items()}
        # The effective weight is leaf * mask, so a pruned weight gets no gradient.
        substituted = {n: leaves[n] * masks[n] for n in leaves}
        ref = next(iter(weights.values()))
        x, _ = batch_inputs(batches[0], ref)  # only its shape: the input is all ones
        ones = torch.ones((1, *x.shape[1:]), dtype=ref.dtype, device=ref.device)
        out = torch.func.functional_call(net, substituted, (ones,), strict=False)
        torch.sum(model_output(out)).backward()
        return {n: (leaves[n].grad * leaves[n]).detach().abs() for n in leaves}

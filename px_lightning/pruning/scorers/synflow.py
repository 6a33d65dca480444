"""SynFlow (Tanaka et al., 2020): data-free synaptic saliency ``|dR/dw * w|``.

As published: a working copy in ``eval()`` mode with every parameter and buffer replaced by its absolute
value, an all-ones input of batch 1 shaped like the first scoring batch, ``R = sum(output)``.

``R`` is a product of absolute weights along every path, so it overflows float32 on deep networks
(ResNet-50 gives infinite scores): the copy runs in float64, and where the scores do not fit the weights'
dtype they are all divided by one power of two (a common factor: rankings and thresholds are unchanged).

ReLU6 and Hardtanh are read as ReLU: their ceiling is what the all-ones pass of absolute weights exceeds at
once (on MobileNetV2 every gradient behind the first ReLU6 was 0, so round 1 pruned those layers whole), and
below it they are the ReLU. ``R`` then stays SynFlow's sum over paths of products of absolute weights;
every other activation runs as it is, so a ReLU network's scores are the published ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..copies import ACTIVATIONS, ActivationGates, scoring_copy
from ..zero_init import at_default_init
from .base import Scorer, batch_inputs, grad_or_zeros, model_output

# The clipped ReLUs (nn.ReLU6 calls F.hardtanh), read as ReLU (module docstring).
_CLIPPED_RELUS = frozenset({F.relu6, F.hardtanh})


class SynFlowScorer(Scorer):
    name = "synflow"
    one_shot = False

    def score(self, model, weights, masks, batches, loss_fn=None) -> dict[str, Tensor]:
        # A tensor zero by construction (a ViT's head) is scored as if at its layer's default init.
        weights = at_default_init(weights, masks)
        ref = next(iter(weights.values()))
        net = scoring_copy(model).eval().to(torch.float64)
        with torch.no_grad():
            for tensor in list(net.parameters()) + list(net.buffers()):
                if tensor.is_floating_point():
                    tensor.abs_()
        leaves = {n: (w.double().abs() * masks[n]).requires_grad_(True) for n, w in weights.items()}
        # The effective weight is leaf * mask, so a pruned weight gets no gradient.
        substituted = {n: leaves[n] * masks[n] for n in leaves}
        x, _ = batch_inputs(batches[0], ref)  # only its shape: the input is all ones
        ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=ref.device)
        with ActivationGates("relu", exclude=ACTIVATIONS - _CLIPPED_RELUS):
            out = torch.func.functional_call(net, substituted, (ones,), strict=False)
        torch.sum(model_output(out)).backward()
        scores = {n: (grad_or_zeros(leaves[n]) * leaves[n]).detach().abs() for n in leaves}
        top = max(float(s.max()) for s in scores.values())
        limit = torch.finfo(ref.dtype).max
        if math.isfinite(top) and top > limit / 2**10:
            scale = 2.0 ** -math.ceil(math.log2(top / (limit / 2**10)))
            scores = {n: s * scale for n, s in scores.items()}
        return {n: s.to(ref.dtype) for n, s in scores.items()}

"""GraSP (Wang et al., 2020): gradient-signal preservation, ``w * (H g)``, as the published code computes it.

A working copy in ``train()`` mode, logits divided by a temperature of 200; ``g`` is the loss gradient
summed over the batches (no graph), then ``d/dw (g_batch . g)`` summed over the batches; scores
``w * that`` divided by ``|sum(scores)| + 1e-10``. Scores are signed; pruned weights score 0.

The second derivative must exist for every operation of the network. Where torch's kernel lacks one, the
copy computes the same function from operations that have it: attention by the math implementation of
``scaled_dot_product_attention`` (``differentiable_attention``), ``hardsigmoid`` (MobileNetV3's
squeeze-excitation gate) as ``relu6(x + 3) / 6``. Dropout and stochastic depth are off.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..copies import scoring_copy, without_randomness
from ..zero_init import at_default_init
from .base import Scorer, differentiable_attention, labelled_batch, model_output


class TwiceDifferentiable(TorchFunctionMode):
    """Inside the ``with`` block ``F.hardsigmoid``, whose backward torch cannot differentiate, is computed
    as ``relu6(x + 3) / 6``: the same function, from operations with second derivatives."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.hardsigmoid:
            return func(*args, **kwargs)
        x = args[0]
        out = F.relu6(x + 3) / 6
        inplace = kwargs.get("inplace", args[1] if len(args) > 1 else False)
        return x.copy_(out) if inplace else out


class GraSPScorer(Scorer):
    name = "grasp"
    one_shot = True

    def __init__(self, temperature: float = 200.0) -> None:
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not (math.isfinite(temperature) and temperature > 0)
        ):
            raise ValueError(
                f"grasp: temperature must be a positive number (published: 200), got {temperature!r}"
            )
        self.temperature = temperature

    def score(self, model, weights, masks, batches, loss_fn=None) -> dict[str, Tensor]:
        # A tensor zero by construction (a ViT's head) is scored as if at its layer's default init.
        weights = at_default_init(weights, masks)
        loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        net = without_randomness(scoring_copy(model).train())
        names = list(weights)
        ref = weights[names[0]]
        leaves = {n: weights[n].clone().requires_grad_(True) for n in names}

        def batch_grads(batch, create_graph: bool):
            x, y = labelled_batch(batch, ref, "GraSP")
            substituted = {n: leaves[n] * masks[n] for n in names}
            out = model_output(torch.func.functional_call(net, substituted, (x,), strict=False))
            loss = loss_fn(out / self.temperature, y)
            # materialize_grads: a tensor the output does not depend on (GoogLeNet's aux heads) gets zeros.
            return torch.autograd.grad(
                loss, [leaves[n] for n in names], create_graph=create_graph, materialize_grads=True
            )

        stopped = [torch.zeros_like(leaves[n]) for n in names]
        for batch in batches:
            for acc, g in zip(stopped, batch_grads(batch, False)):
                acc += g
        hg = [torch.zeros_like(leaves[n]) for n in names]
        for batch in batches:
            with differentiable_attention(), TwiceDifferentiable():
                grads = batch_grads(batch, True)
            z = sum((g * s).sum() for g, s in zip(grads, stopped))
            try:
                second = torch.autograd.grad(z, [leaves[n] for n in names], materialize_grads=True)
            except RuntimeError as err:
                if "derivative for" not in str(err):
                    raise
                raise RuntimeError(
                    f"GraSP needs second derivatives, which torch does not provide for an operation of this "
                    f"model ({err}); choose another method"
                ) from err
            for acc, h in zip(hg, second):
                acc += h
        # Pruned weights score 0 in later rounds of a search (the search ranks them last when scores are signed).
        scores = {n: (h * leaves[n] * masks[n]).detach() for n, h in zip(names, hg)}
        norm = torch.abs(sum(s.sum() for s in scores.values())) + 1e-10
        return {n: s / norm for n, s in scores.items()}

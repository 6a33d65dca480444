"""NTK-SAP (Wang et al., ICLR 2023): data-free saliency of the finite-difference NTK-trace proxy.

As the authors publish it (``YiteWang/NTK-SAP``, ``Pruners/pruners.py``), for each of ``repeats`` repeats
and each scoring batch:

1. the network's weights are re-initialised at random (a *fresh* initialisation, not the caller's
   weights): every Conv/Linear weight Kaiming-normal (fan-in, ReLU gain), every normalisation layer's
   affine weight 1 and bias 0, other tensors (biases) as they are; the current masks stay applied;
2. the input is Gaussian noise of the batch's shape (only the shape of the scoring data is used);
3. BatchNorm running statistics are reset and set, in a no-gradient ``train()`` pass with momentum 1,
   to the statistics of that noise batch; both following passes run in ``eval()`` mode with them;
4. ``L = ||f(x; theta * m) - f(x; (theta + epsilon * delta) * m)||^2`` (summed over the batch) with
   ``delta`` standard Gaussian on every masked tensor, and ``L`` is differentiated with respect to the
   mask ``m`` shared by both networks, i.e. ``theta * g + (theta + epsilon * delta) * g'``.

The score is ``|sum of those gradients| * (m != 0)``, divided by the number of passes (the published
code sums; the ranking is the same), so pruned weights score exactly 0. Scores therefore belong to the
re-initialised weights, and the caller's weights are never read, only its architecture, masks, biases
and buffers' shapes. Dropout is off in every pass.

Options: ``epsilon`` (0.01, published), ``repeats`` (the published ``ntksap_R``: 1 by default, 5 in the
published CIFAR script), ``seed`` (``None`` draws from torch's global generator; an integer makes a
``find_masks`` run reproducible, each round drawing different weights, as published), ``input_shape``
(the full shape of one Gaussian batch, e.g. ``(64, 3, 32, 32)``: used instead of the scoring batches'
shapes, and required when no batches are given) and ``init`` (a callable ``init(module)`` replacing the
default re-initialisation, applied to the scoring copy). The published CIFAR script runs 20 rounds.

Example:
    >>> scores = compute_scores(model, "ntksap", [torch.randn(8, 3, 32, 32)], epsilon=0.01, seed=0)
    >>> masks = find_masks(model, "ntksap", input_shape=(8, 3, 32, 32), density=0.1, rounds=20, seed=0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..copies import scoring_copy
from ..targets import weight_attributes
from .base import Scorer, batch_inputs, check_seed, grad_or_zeros, model_output

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def fresh_init(net: nn.Module) -> None:
    """The published re-initialisation: Kaiming-normal Conv/Linear weights, norm affine weight 1, bias 0."""
    with torch.no_grad():
        for m in net.modules():
            for attr in weight_attributes(m):  # attention's input projections are linear maps too
                nn.init.kaiming_normal_(getattr(m, attr))
            if not weight_attributes(m) and isinstance(m, _NORMS):
                if getattr(m, "weight", None) is not None:
                    nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)


def _set_modes(net: nn.Module, norm_train: bool) -> None:
    # eval() everywhere (dropout off); only the statistics pass runs normalisation layers in train().
    net.eval()
    if norm_train:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()


class NTKSAPScorer(Scorer):
    name = "ntksap"
    one_shot = False
    needs_data = False
    default_rounds = 20  # the published CIFAR script (--prune-epochs 20)

    def __init__(
        self,
        epsilon: float = 0.01,
        repeats: int = 1,
        seed: int | None = None,
        input_shape: Sequence[int] | None = None,
        init: Callable[[nn.Module], None] | None = None,
    ) -> None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
            raise ValueError(f"epsilon must be a positive number (published: 0.01), got {epsilon!r}")
        if not math.isfinite(epsilon):
            raise ValueError(f"epsilon must be finite, got {epsilon!r}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1 (published ntksap_R), got {repeats!r}")
        seed = check_seed(seed, self.name)
        if input_shape is not None:
            shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else None
            if not shape or len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape):
                raise ValueError(
                    "input_shape must be the full shape of one input batch, batch size first, e.g. "
                    f"(64, 3, 32, 32); got {input_shape!r}"
                )
            input_shape = shape
        if init is not None and not callable(init):
            raise ValueError(f"init must be a callable init(module) or None, got {type(init).__name__}")
        self.epsilon, self.repeats, self.seed = float(epsilon), repeats, seed
        self.input_shape, self.init = input_shape, init
        # Seeds of successive calls (rounds) come from one generator: reproducible, yet each round differs.
        self._seeds = None if seed is None else torch.Generator().manual_seed(seed)

    def _shapes(self, batches, ref: Tensor) -> list[tuple[int, ...]]:
        if self.input_shape is not None:
            return [self.input_shape]
        if not batches:
            raise ValueError(
                "ntksap needs the input shape: give scoring batches (only their shape is used) or the "
                "input_shape option, e.g. input_shape=(64, 3, 32, 32)"
            )
        shapes = []
        for batch in batches:
            x, _ = batch_inputs(batch, ref)
            if not x.is_floating_point():
                raise ValueError(
                    f"ntksap feeds Gaussian inputs shaped like the batches, but a batch holds {x.dtype} "
                    "inputs; give floating-point batches or input_shape"
                )
            shapes.append(tuple(x.shape))
        return shapes

    def score(self, model, weights, masks, batches, loss_fn=None) -> dict[str, Tensor]:
        ref = next(iter(weights.values()))
        shapes = self._shapes(batches, ref)
        if self._seeds is None:
            return self._score(model, weights, masks, shapes, ref)
        seed = int(torch.randint(0, 2**62, (1,), generator=self._seeds))
        devices = [ref.device.index or 0] if ref.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the caller's global generators stay as they were
            torch.manual_seed(seed)
            return self._score(model, weights, masks, shapes, ref)

    def _score(self, model, weights, masks, shapes, ref) -> dict[str, Tensor]:
        net = scoring_copy(model)
        net.requires_grad_(False)  # only the masks need gradients
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 1.0  # one statistics pass sets the running statistics to the noise batch's
        gates = {n: masks[n].to(ref.dtype).requires_grad_(True) for n in weights}
        init = self.init or fresh_init
        for _ in range(self.repeats):
            for shape in shapes:
                init(net)
                theta = {n: net.get_parameter(n).detach() for n in weights}
                x = torch.randn(shape, dtype=ref.dtype, device=ref.device)
                with torch.no_grad():
                    for m in net.modules():
                        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                            m.reset_running_stats()
                    _set_modes(net, norm_train=True)
                    torch.func.functional_call(net, {n: theta[n] * masks[n] for n in weights}, (x,))
                _set_modes(net, norm_train=False)
                out = model_output(
                    torch.func.functional_call(net, {n: theta[n] * gates[n] for n in gates}, (x,))
                )
                perturbed = {
                    n: (theta[n] + self.epsilon * torch.randn_like(theta[n])) * gates[n] for n in gates
                }
                out_mod = model_output(torch.func.functional_call(net, perturbed, (x,)))
                ((out - out_mod) ** 2).sum().backward()
        passes = self.repeats * len(shapes)
        return {n: (grad_or_zeros(gates[n]).abs() * masks[n] / passes).detach() for n in weights}

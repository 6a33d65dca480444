"""PX (Path eXclusion; Iurada, Ciccone, Tommasi, CVPR 2024), as in ``shared/conformance/README.md``.

One pass: (1) an activation copy in ``eval()`` mode records every activation's gate ``pre > 0`` on ``x``;
(2) a data-path copy in ``train()`` mode, kept weights and biases of the path layers set to 1, runs on
``x ** 2`` with each activation replaced by its recorded gate: output ``z1``; (3) a kernel copy with
squared weights and biases, activations as the identity, runs on all-ones: output ``z2``;
``score = |d(z1 . z2)/d(w^2)| * w^2``. The head (last prunable layer) keeps its real weights in (2) and (3).

``kernel_norm="eval"`` (default) runs the kernel copy's normalisation layers in ``eval()`` mode: a linear
path network, well-posed. ``"train"`` is the published code, whose kernel scores are float round-off when
BatchNorm precedes global pooling. ``z2`` does not depend on the data, so it is computed once per input
shape and round. Activations other than ReLU (GELU, SiLU, tanh, sigmoid, ...) are treated as ReLU. Dropout is off in
every copy, so scores are deterministic.

Options against layer collapse (all off by default, which is the published computation). PX tends to
starve the classifier: its published copies leave the head's real weights in both paths, so the head is
scored on another scale than the body, and at very low density it keeps a few percent of the head and
may drop whole residual branches.

- ``head="body"``: score the head on the body's scale (kept weights and bias set to 1 in the data path,
  squared in the kernel copy, like every other layer). ``"published"`` (default) keeps its real weights.
- ``dense_head=True``: keep the head (the last prunable layer) whole, inside the same total budget: the
  body shares ``density * total - head size`` (as SynFlow's code's dense classifier, but within budget).
- ``layer_floor=f`` (0 to 1): each prunable tensor keeps at least ``f * round density`` of its weights
  in every round (its best positive-scored ones), within the same total budget.
- ``bn_warmup=True``: before each round's scoring, the BatchNorm running statistics of the scoring copies
  are estimated on the scoring batches (cumulative average over the masked network's forward passes), so
  the eval-mode activation and kernel copies use data statistics instead of the initial 0/1.
- ``layer_norm="sum"``: each prunable tensor's scores are divided by their sum, so every layer carries
  the same total score in every round (SynFlow's per-layer conservation, enforced). Iterated, this keeps
  about the same number of weights in every layer, so no layer or residual branch collapses and a 1x1
  shortcut convolution (whose few weights carry a third of a stage's PX score) keeps no more weights than
  a branch convolution. A no-op up to scale on a plain chain with ``head="body"`` (PX already conserves
  the score per layer there). On the Digits ResNet-8 it helps with 100 rounds, not with 10
  (``benchmarks/README.md``, Quality). ``"none"`` (default) keeps the raw scores. Under data-parallel
  sharded scoring each rank normalises its own scores before the sum, which is close to but not exactly
  the single-process normalisation.

Options on how the kernel copy splits the score between parallel paths (residual branch against shortcut;
both off by default). A layer's total PX score is the sum of the path values through it, and at a
residual block the kernel's per-layer gain sets the split: under Kaiming init ``fan_in * E[w^2] = 2``, so a
two-conv branch carries about 4 and a 1x1 shortcut conv about 2 (a third of the block, on a ninth of a
branch conv's weights), and as the branch is pruned its path value falls with both its layers' densities
while the shortcut's falls with one, so the shortcut keeps gaining (``benchmarks/README.md``, Quality).

- ``kernel_bn="squared"``: in the eval-mode kernel copy each BatchNorm is the per-channel factor
  ``(gamma / sqrt(running_var + eps))^2`` with no shift, instead of ``gamma * (x - mean) / sigma + beta``:
  the squared network gets the squared multiplier of every path, as it does for weights. With
  ``bn_warmup=True`` (statistics of the masked network) each conv-BatchNorm pair then has a kernel gain
  independent of the conv's scale and density, as in the real network, where BatchNorm renormalises a
  pruned layer: the scores become invariant to rescaling a conv followed by BatchNorm, and pruning a
  branch no longer shifts the score to its shortcut. Needs ``kernel_norm="eval"`` and BatchNorm running
  statistics; other normalisation layers are unchanged. ``"affine"`` (default) is the computation above.
- ``kernel_scale="mean_square"``: each squared layer of the kernel copy is divided by its mean squared
  weight (over the whole tensor, as the scorer receives it: ``find_masks`` passes the unmasked weights, so
  the factor is the same in every round), so every path product is in units of its layers' mean initial
  weight: a layer's kernel gain becomes its fan-in (the count of its paths) instead of
  ``fan_in * E[w^2]``, and a path through more layers is no longer worth less for its extra factors
  ``E[w^2] = 2 / fan_in``. A residual branch then outweighs a 1x1 shortcut by about a branch conv's fan-in.
  On a chain (no biases, no BatchNorm shifts) every path crosses every layer, so the scores only change
  by one common factor; the ranking inside a layer stays PX's. The score of a weight is its path value in
  the rescaled kernel. ``"none"`` (default) is the computation above.

``kernel_bn`` and ``kernel_scale`` change the kernel copy only, which does not depend on the data: the
scores stay sums over the scoring batches, so sharded data-parallel scoring stays exact (``bn_warmup`` is
what makes it inexact). On the Digits ResNet-8 neither beats SynFlow: ``mean_square`` gets SynFlow's
per-layer allocation and equals it within noise, ``squared`` is 3 points below it at d=0.005
(``benchmarks/README.md``, Quality).

Options from the connectivity study (all off by default):

- ``data_bn="identity"``: the data-path copy's BatchNorm layers pass their input unchanged (eval mode with
  identity statistics and affine parameters) instead of the published ``train()`` mode, which rescales
  every channel by the scoring batch's statistics. It changes ``z1`` only, so it hardly moves the masks
  (measured: the same active width and path count on the Digits ResNet-8). Needs BatchNorm running
  statistics. ``"train"`` (default) is the published computation.
- ``kernel_power=1``: the kernel copy's weights and biases are ``|w|`` instead of ``w ** 2`` and the score is
  ``|d(z1 . z2)/d|w|| * |w|``: SynFlow's path values weighted by the data path's per-output ``z1``. The
  data enter PX's scores only through ``z1`` (one number per output unit) and the BatchNorm statistics
  (``bn_warmup``), so the kernel decides which weights a layer keeps; squared weights favour large single
  weights over weights in well-connected channels (a reading, from what follows): PX's masks spread over
  about twice SynFlow's active channels with 100 to 1000 times fewer input-output paths, and with
  ``kernel_power=1`` they have SynFlow's width and path count (``benchmarks/connectivity.py``). ``2``
  (default) is the published computation. Takes ``kernel_bn="affine"`` and ``kernel_scale="none"``.
- ``output_weighting="uniform"``: ``z1`` replaced by its mean over the output units, so the kernel paths
  into every output unit (class) count alike. From the second round the published ``z1`` (``"data"``,
  default) counts the data paths into each class through the current masks, which feeds back: a class
  whose head weights are pruned gets a smaller ``z1`` and loses more (measured: some classes of the Digits
  CNN keep 0 or 1 head weights at d=0.005, against 6 to 9 with SynFlow; uniform: 5 to 10). The data then
  enter the scores only through the BatchNorm statistics (``bn_warmup``); with ``kernel_power=1`` and
  ``head="body"`` the scores are SynFlow's up to one factor. It ties SynFlow on the Digits CNN and loses
  5 to 8 points on the ResNet-8 (``benchmarks/README.md``, Quality).

Example:
    >>> find_masks(model, "px", batches, density=0.01, rounds=20, dense_head=True, bn_warmup=True)
    >>> find_masks(model, "px", batches, density=0.005, rounds=10, head="body", layer_norm="sum")
    >>> find_masks(model, "px", batches, density=0.005, rounds=10, head="body", bn_warmup=True,
    ...            kernel_bn="squared")
    >>> find_masks(model, "px", batches, density=0.005, rounds=10, head="body", kernel_power=1)
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..masks import plain_copy
from ..targets import PRUNABLE_TYPES
from .base import Scorer, batch_inputs, model_output

_ACTIVATIONS = {
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    Tensor.relu,
    Tensor.relu_,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardtanh,
    F.softplus,
    # Saturating activations too, as DESIGN.md states (a squeeze-excitation gate becomes linear in the
    # kernel path, like every other activation).
    torch.tanh,
    torch.tanh_,
    F.tanh,
    Tensor.tanh,
    Tensor.tanh_,
    torch.sigmoid,
    torch.sigmoid_,
    F.sigmoid,
    Tensor.sigmoid,
    Tensor.sigmoid_,
    F.hardsigmoid,
    F.logsigmoid,
    F.softsign,
}
_INPLACE = {F.relu_, torch.relu_, Tensor.relu_, torch.tanh_, Tensor.tanh_, torch.sigmoid_, Tensor.sigmoid_}


def _is_inplace(func, args, kwargs) -> bool:
    return func in _INPLACE or bool(kwargs.get("inplace")) or any(a is True for a in args[1:])


class _GateMode(TorchFunctionMode):
    """Records activation gates (``gates is None`` → new list), replays them, or makes activations identity."""

    def __init__(self, action: str, gates: list[Tensor] | None = None) -> None:
        super().__init__()
        self.action, self.gates, self.index = action, ([] if gates is None else gates), 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _ACTIVATIONS:
            return func(*args, **kwargs)
        x = args[0]
        if self.action == "record":
            self.gates.append(x > 0)
            return func(*args, **kwargs)
        if self.action == "identity":
            return x
        if self.index >= len(self.gates):
            raise RuntimeError("PX: the data-path pass called more activations than the activation pass")
        gate = self.gates[self.index]
        self.gates[self.index] = None  # used once: free it now rather than after the whole pass
        self.index += 1
        return x.mul_(gate) if _is_inplace(func, args, kwargs) else x * gate


def _head(model: nn.Module) -> str:
    # The head: the last prunable layer in module order (a parametrized model gives the same names).
    return [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)][-1]


def _set_modes(net: nn.Module, norm_train: bool) -> None:
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            m.train(norm_train)
        elif isinstance(m, nn.modules.dropout._DropoutNd | nn.Dropout):
            m.eval()


def _warm_up_statistics(net: nn.Module, real: dict, buffers: dict, batches, ref: Tensor) -> dict[str, Tensor]:
    """BatchNorm running statistics of the masked network, averaged over the scoring batches (copies)."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return buffers
    warm = {k: v.clone() for k, v in buffers.items()}
    saved = [(m, m.momentum) for m in norms]
    try:
        for m in norms:
            m.momentum = None  # cumulative moving average: the plain mean over the batches
        for k, value in warm.items():
            if k.endswith("num_batches_tracked"):
                value.zero_()
        _set_modes(net, norm_train=True)
        with torch.no_grad():
            for batch in batches:
                x, _ = batch_inputs(batch, ref)
                torch.func.functional_call(net, {**real, **warm}, (x,), strict=False)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
    return warm


def _mean_squares(layers, weights: dict, real: dict, real_head: str | None) -> dict[str, Tensor]:
    """``kernel_scale="mean_square"``: each squared path layer's mean squared weight over the whole tensor,
    unmasked (``weights`` holds the unmasked pruned tensors; ``real`` the others)."""
    out = {}
    with torch.no_grad():
        for n, _ in layers:
            if n == real_head:
                continue  # the published head keeps its real weights: it is not a squared layer
            w = f"{n}.weight"
            scale = (weights[w] if w in weights else real[w]).double().pow(2).mean()
            if scale > 0:  # an all-zero layer carries no path: leave it as it is
                out[n] = scale.to(real[w].dtype)
    return out


def _norms_with_statistics(net: nn.Module, option: str, remedy: str) -> list[tuple[str, nn.Module]]:
    """The BatchNorm layers of ``net``, for an ``option`` that needs their running statistics (``remedy``
    ends the error message when one lacks them)."""
    norms = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for name, m in norms:
        if m.running_var is None:
            raise ValueError(
                f"{option} needs BatchNorm running statistics, but {name!r} has "
                f"track_running_stats=False{remedy}"
            )
    return norms


def _squared_norms(net: nn.Module, buffers: dict) -> dict[str, Tensor]:
    """``kernel_bn="squared"``: parameters and buffers that turn each eval-mode BatchNorm of the kernel copy
    into ``x * (gamma / sqrt(running_var + eps))^2`` (no shift), the squared network's counterpart of the
    per-channel affine map ``gamma * (x - mean) / sigma + beta``."""
    out = {}
    for name, m in _norms_with_statistics(
        net, "kernel_bn='squared'", "; use kernel_bn='affine' for this model"
    ):
        var, mean = buffers[f"{name}.running_var"], buffers[f"{name}.running_mean"]
        root = (var + m.eps).sqrt()
        out[f"{name}.running_mean"] = torch.zeros_like(mean)
        if m.affine:
            # eval BatchNorm computes (x - 0) / root * weight + bias: weight = gamma^2 / root gives the factor.
            out[f"{name}.weight"] = m.weight.detach() ** 2 / root
            out[f"{name}.bias"] = torch.zeros_like(m.bias)
        else:
            out[f"{name}.running_var"] = root**4 - m.eps  # 1 / sqrt(this + eps) = 1 / (var + eps)
    return out


def _power_(t: Tensor, power: int) -> Tensor:
    """``t ** 2`` (published) or ``|t|`` (``kernel_power=1``), in place."""
    return t.pow_(2) if power == 2 else t.abs_()


def _identity_norms(
    net: nn.Module, option: str = "data_bn='identity'", remedy: str = "; use data_bn='train' for this model"
) -> dict[str, Tensor]:
    """Parameters and buffers that make each eval-mode BatchNorm of ``net`` pass ``x`` unchanged
    (``data_bn="identity"``; ``effective_masks``' connectivity copy)."""
    out = {}
    for name, m in _norms_with_statistics(net, option, remedy):
        out[f"{name}.running_mean"] = torch.zeros_like(m.running_mean)
        out[f"{name}.running_var"] = torch.full_like(m.running_var, 1 - m.eps)  # 1 / sqrt(var + eps) = 1
        if m.affine:
            out[f"{name}.weight"] = torch.ones_like(m.weight)
            out[f"{name}.bias"] = torch.zeros_like(m.bias)
    return out


class PXScorer(Scorer):
    name = "px"
    one_shot = False

    def __init__(
        self,
        kernel_norm: str = "eval",
        head: str = "published",
        dense_head: bool = False,
        layer_floor: float = 0.0,
        bn_warmup: bool = False,
        layer_norm: str = "none",
        kernel_bn: str = "affine",
        kernel_scale: str = "none",
        data_bn: str = "train",
        kernel_power: int = 2,
        output_weighting: str = "data",
    ) -> None:
        if kernel_norm not in ("eval", "train"):
            raise ValueError(f"kernel_norm must be 'eval' or 'train', got {kernel_norm!r}")
        if head not in ("published", "body"):
            raise ValueError(f"head must be 'published' or 'body', got {head!r}")
        if not isinstance(dense_head, bool):
            raise TypeError(f"dense_head must be True or False, got {dense_head!r}")
        if (
            isinstance(layer_floor, bool)
            or not isinstance(layer_floor, (int, float))
            or not 0 <= layer_floor <= 1
        ):
            raise ValueError(
                f"layer_floor must be a number in [0, 1] (a fraction of the density), got {layer_floor!r}"
            )
        if not isinstance(bn_warmup, bool):
            raise TypeError(f"bn_warmup must be True or False, got {bn_warmup!r}")
        if layer_norm not in ("none", "sum"):
            raise ValueError(f"layer_norm must be 'none' or 'sum', got {layer_norm!r}")
        if kernel_bn not in ("affine", "squared"):
            raise ValueError(f"kernel_bn must be 'affine' or 'squared', got {kernel_bn!r}")
        if kernel_bn == "squared" and kernel_norm != "eval":
            raise ValueError(
                "kernel_bn='squared' replaces each BatchNorm of the eval-mode kernel copy by its squared "
                f"per-channel factor; it needs kernel_norm='eval', got kernel_norm={kernel_norm!r}"
            )
        if kernel_scale not in ("none", "mean_square"):
            raise ValueError(f"kernel_scale must be 'none' or 'mean_square', got {kernel_scale!r}")
        if data_bn not in ("train", "identity"):
            raise ValueError(f"data_bn must be 'train' or 'identity', got {data_bn!r}")
        if kernel_power not in (1, 2) or isinstance(kernel_power, bool):
            raise ValueError(f"kernel_power must be 2 (published) or 1, got {kernel_power!r}")
        if kernel_power == 1 and (kernel_bn != "affine" or kernel_scale != "none"):
            raise ValueError(
                "kernel_power=1 takes the kernel copy's default kernel_bn='affine' and kernel_scale='none' "
                f"(both are defined for squared weights), got kernel_bn={kernel_bn!r}, kernel_scale={kernel_scale!r}"
            )
        self.kernel_bn, self.kernel_scale, self.data_bn = kernel_bn, kernel_scale, data_bn
        if output_weighting not in ("data", "uniform"):
            raise ValueError(f"output_weighting must be 'data' or 'uniform', got {output_weighting!r}")
        self.kernel_power, self.output_weighting = kernel_power, output_weighting
        self.kernel_norm, self.head, self.dense_head = kernel_norm, head, dense_head
        self.layer_norm = layer_norm
        self.layer_floor, self.bn_warmup = float(layer_floor), bn_warmup

    @property
    def additive(self) -> bool:
        """PX's scores sum over batches, except when BatchNorm is warmed up on all of them (a share would see
        other statistics) or each layer's scores are normalised by their sum (``layer_norm="sum"``)."""
        return not self.bn_warmup and self.layer_norm != "sum"

    def thresholding(self, weights: dict[str, Tensor], model: nn.Module) -> dict:
        """Constraints for ``threshold_masks``: the head kept dense and/or a per-layer floor.

        Known before any scoring (``find_masks`` checks the final density against them first).
        """
        out: dict = {}
        if self.dense_head:
            head = f"{_head(model)}.weight"
            if head not in weights:
                raise ValueError(
                    f"dense_head=True but the head {head!r} (the last prunable layer) is not "
                    "among the pruned tensors: it is dense already; drop dense_head or include it"
                )
            out["dense"] = [head]
        if self.layer_floor:
            out["layer_floor"] = self.layer_floor
        return out

    def score(self, model, weights, masks, batches, loss_fn=None) -> dict[str, Tensor]:
        net = plain_copy(model)
        layers = [(n, m) for n, m in net.named_modules() if isinstance(m, PRUNABLE_TYPES)]
        head = _head(net)
        # "published" leaves the head's real weights in both paths; "body" treats it like every other layer.
        real_head = head if self.head == "published" else None
        has_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        if self.kernel_norm == "train" and has_norm:
            warnings.warn(
                "PX kernel_norm='train' (the published code) on a model with BatchNorm: scores of the "
                "weights before the last normalisation are float round-off; use kernel_norm='eval'",
                stacklevel=4,
            )
        ref = next(iter(weights.values()))
        # The masked weights are written into the copy's own tensors (no second full-size copy); the copy's
        # prunable weights are read nowhere else, and the kernel pass squares them in place below.
        with torch.no_grad():
            for n in weights:
                torch.mul(weights[n], masks[n], out=net.get_parameter(n).detach())
        real = {f"{n}.weight": m.weight.detach() for n, m in layers}
        biases = {f"{n}.bias": m.bias.detach() for n, m in layers if getattr(m, "bias", None) is not None}
        buffers = dict(net.named_buffers())

        if self.bn_warmup:
            buffers = _warm_up_statistics(net, real, buffers, batches, ref)

        def fresh_buffers():  # train-mode BatchNorm updates statistics: give it throwaway copies
            return {k: v.clone() for k, v in buffers.items()}

        data_path = {}
        for n, _ in layers:
            w, b = f"{n}.weight", f"{n}.bias"
            if n == real_head:
                data_path[w] = real[w]
                continue
            data_path[w] = masks[w].to(ref.dtype) if w in masks else torch.ones_like(real[w])
            if b in biases:
                data_path[b] = torch.ones_like(biases[b])

        # data_bn="identity": the data path's BatchNorm layers pass it unchanged (eval mode, statistics and
        # affine parameters of an identity map) instead of normalising each channel by the batch.
        identity_norms = _identity_norms(net) if self.data_bn == "identity" else None
        z1_sums: dict[tuple, Tensor] = {}
        with torch.no_grad():
            for batch in batches:
                x, _ = batch_inputs(batch, ref)
                net.eval()
                with _GateMode("record") as recorder:
                    torch.func.functional_call(net, {**real, **buffers}, (x,), strict=False)
                _set_modes(net, norm_train=identity_norms is None)
                state = {**data_path, **fresh_buffers(), **(identity_norms or {})}
                with _GateMode("replay", recorder.gates):
                    out = torch.func.functional_call(net, state, (x**2,), strict=False)
                z1 = model_output(out).sum(0)
                key = tuple(x.shape[1:])
                z1_sums[key] = z1_sums[key] + z1 if key in z1_sums else z1
                del recorder, out
        del data_path  # a full-size float copy of the masks: not needed by the kernel pass

        # Kernel copy: the weights (already masked above) squared in place, so the leaves are the copy's own
        # tensors and the kernel pass needs no further full-size copy. The masks are applied to the gradient
        # afterwards, which gives the same values as multiplying them in the graph (a factor 1 or 0).
        leaves = {}
        kernel = {}
        # kernel_scale="mean_square": each squared layer's 1 / mean(w^2) over all its weights (unmasked, so the
        # same in every round). Computed before the in-place squaring below.
        unit = {} if self.kernel_scale == "none" else _mean_squares(layers, weights, real, real_head)
        with torch.no_grad():
            for n, _ in layers:
                w, b = f"{n}.weight", f"{n}.bias"
                value = real[w] if n == real_head else _power_(real[w], self.kernel_power)
                if w in masks:
                    leaves[w] = value.requires_grad_(True)
                kernel[w] = value
                if b in biases:
                    kernel[b] = biases[b] if n == real_head else _power_(biases[b].clone(), self.kernel_power)
        del real
        if unit:
            # Outside no_grad: the leaves stay the squared weights, so score = w^2 * d(z1.z2)/d(w^2) is the
            # path value through w in the rescaled kernel network.
            for n, scale in unit.items():
                kernel[f"{n}.weight"] = kernel[f"{n}.weight"] / scale
                if f"{n}.bias" in kernel:
                    kernel[f"{n}.bias"] = kernel[f"{n}.bias"] / scale
        norm_kernel = _squared_norms(net, buffers) if self.kernel_bn == "squared" else {}
        _set_modes(net, norm_train=self.kernel_norm == "train")
        total = 0
        for shape, z1 in z1_sums.items():
            ones = torch.ones((1, *shape), dtype=ref.dtype, device=ref.device)
            with _GateMode("identity"):
                out = torch.func.functional_call(
                    net, {**kernel, **fresh_buffers(), **norm_kernel}, (ones,), strict=False
                )
            if self.output_weighting == "uniform":  # every output unit's kernel paths count alike
                z1 = z1.mean().expand_as(z1)
            total = total + (z1 * model_output(out)[0]).sum()
        total.backward()
        del total, out, kernel
        scores = {}
        for n in weights:
            # In place on the gradient, one layer at a time: no second full-size set of temporaries.
            grad = leaves.pop(n).grad
            scores[n] = grad.mul_(masks[n]).abs_().mul_(_power_(weights[n].clone(), self.kernel_power))
        if self.layer_norm == "sum":
            # A layer whose scores are all zero (fully pruned) stays zero rather than dividing by zero.
            scores = {n: s / s.sum() if bool(s.any()) else s for n, s in scores.items()}
        return scores

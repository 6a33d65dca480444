"""PX with the research options of ``benchmarks/`` (layer collapse and connectivity studies).

``PXResearchScorer`` is ``PXScorer`` (a 2025 variant) with six more options, each off by default (the
plain 2025 computation); what they measure is in ``benchmarks/README.md``. Not exported by
``px_lightning.pruning``: pass an instance to ``find_masks`` / ``compute_scores``.

- ``layer_norm="sum"``: each tensor's scores divided by their sum (every layer the same total score).
- ``kernel_bn="squared"``: each eval-mode BatchNorm of the kernel copy is the per-channel factor
  ``(gamma / sqrt(running_var + eps)) ** 2`` with no shift (needs ``kernel_norm="eval"``).
- ``kernel_scale="mean_square"``: each squared kernel layer divided by its mean squared (unmasked) weight.
- ``data_bn="identity"``: the data path's BatchNorm layers pass their input unchanged.
- ``kernel_power=1``: the kernel copy holds ``|w|`` instead of ``w ** 2`` (SynFlow's path values weighted
  by ``z1``); takes ``kernel_bn="affine"`` and ``kernel_scale="none"``.
- ``output_weighting="uniform"``: ``z1`` replaced by its mean over the output units.

Example:
    >>> from px_lightning.pruning.scorers.px_research import PXResearchScorer
    >>> find_masks(model, PXResearchScorer(head="body", layer_norm="sum"), batches, density=0.005, rounds=10)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..copies import identity_norms, norms_with_statistics
from .px import PXScorer

_CHOICES = {
    "layer_norm": ("none", "sum"),
    "kernel_bn": ("affine", "squared"),
    "kernel_scale": ("none", "mean_square"),
    "data_bn": ("train", "identity"),
    "output_weighting": ("data", "uniform"),
}


class PXResearchScorer(PXScorer):
    """``PXScorer`` (2025 variants) with the research options of the module docstring; every other keyword
    argument (``variant``, ``head``, ``bn_warmup``, ...) goes to ``PXScorer`` as it is.

    Example:
        >>> PXResearchScorer(head="body", bn_warmup=True, kernel_bn="squared")
    """

    def __init__(
        self,
        *,
        layer_norm: str = "none",
        kernel_bn: str = "affine",
        kernel_scale: str = "none",
        data_bn: str = "train",
        kernel_power: int = 2,
        output_weighting: str = "data",
        **px_options,
    ) -> None:
        options = {
            "layer_norm": layer_norm,
            "kernel_bn": kernel_bn,
            "kernel_scale": kernel_scale,
            "data_bn": data_bn,
            "output_weighting": output_weighting,
        }
        for option, value in options.items():
            if value not in _CHOICES[option]:
                raise ValueError(
                    f"{option} must be {' or '.join(map(repr, _CHOICES[option]))}, got {value!r}"
                )
        if kernel_power not in (1, 2) or isinstance(kernel_power, bool):
            raise ValueError(f"kernel_power must be 2 (published) or 1, got {kernel_power!r}")
        changed = [o for o, v in options.items() if v != _CHOICES[o][0]] + ["kernel_power"] * (
            kernel_power != 2
        )
        if changed and px_options.get("variant") is None and px_options.get("kernel_norm") is None:
            # The options are defined on the 2025 computation, whatever the default variant.
            px_options["variant"] = "2025-eval"
        super().__init__(**px_options)
        if self.variant == "cvpr2024" and changed:
            raise ValueError(
                f"PX variant='cvpr2024' does not take the research option{'s' * (len(changed) > 1)} "
                f"{', '.join(changed)} (they modify the 2025 computation): pass variant='2025-eval' or '2025'"
            )
        if kernel_bn == "squared" and self.kernel_norm != "eval":
            raise ValueError(
                "kernel_bn='squared' replaces each BatchNorm of the eval-mode kernel copy by its squared "
                f"per-channel factor; it needs kernel_norm='eval', got kernel_norm={self.kernel_norm!r}"
            )
        if kernel_power == 1 and (kernel_bn != "affine" or kernel_scale != "none"):
            raise ValueError(
                "kernel_power=1 takes the kernel copy's default kernel_bn='affine' and kernel_scale='none' "
                f"(both are defined for squared weights), got kernel_bn={kernel_bn!r}, kernel_scale={kernel_scale!r}"
            )
        self.layer_norm, self.kernel_bn, self.kernel_scale = layer_norm, kernel_bn, kernel_scale
        self.data_bn, self.kernel_power, self.output_weighting = data_bn, kernel_power, output_weighting

    def _power(self, t: Tensor) -> Tensor:
        return t.pow_(2) if self.kernel_power == 2 else t.abs_()

    def _data_norms(self, net: nn.Module) -> dict[str, Tensor] | None:
        if self.data_bn == "train":
            return None
        return identity_norms(net, "data_bn='identity'", "; use data_bn='train' for this model")

    def _kernel_norms(self, net: nn.Module, buffers: dict[str, Tensor]) -> dict[str, Tensor]:
        return _squared_norms(net, buffers) if self.kernel_bn == "squared" else {}

    def _weight_outputs(self, z1: Tensor) -> Tensor:
        # "uniform": every output unit's kernel paths count alike.
        return z1.mean().expand_as(z1) if self.output_weighting == "uniform" else z1

    def _normalise(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.layer_norm == "none":
            return scores
        # A layer whose scores are all zero (fully pruned) stays zero rather than dividing by zero.
        return {n: s / s.sum() if bool(s.any()) else s for n, s in scores.items()}

    def _kernel_state(self, layers, weights, masks, real, biases, real_head) -> tuple[dict, dict]:
        kernel, leaves = super()._kernel_state(layers, weights, masks, real, biases, real_head)
        if self.kernel_scale == "none":
            return kernel, leaves
        # Outside no_grad: the leaves stay the squared weights, so score = w^2 * d(z1.z2)/d(w^2) is the path
        # value through w in the rescaled kernel network.
        for (w, b), scale in _mean_squares(layers, weights, kernel, real_head).items():
            kernel[w] = kernel[w] / scale
            if b in kernel:
                kernel[b] = kernel[b] / scale
        return kernel, leaves


def _mean_squares(layers, weights: dict, kernel: dict, real_head: str | None) -> dict[tuple, Tensor]:
    """``kernel_scale="mean_square"``: each squared path layer's mean squared weight over the whole tensor,
    unmasked (``weights`` holds the unmasked pruned tensors; ``kernel`` the others, already squared)."""
    out = {}
    with torch.no_grad():
        for layer, w, b in layers:
            if layer == real_head:
                continue  # the published head keeps its real weights: it is not a squared layer
            scale = weights[w].double().pow(2).mean() if w in weights else kernel[w].double().mean()
            if scale > 0:  # an all-zero layer carries no path: leave it as it is
                out[w, b] = scale.to(kernel[w].dtype)
    return out


def _squared_norms(net: nn.Module, buffers: dict) -> dict[str, Tensor]:
    """``kernel_bn="squared"``: parameters and buffers that turn each eval-mode BatchNorm of the kernel copy
    into ``x * (gamma / sqrt(running_var + eps))^2`` (no shift), the squared network's counterpart of the
    per-channel affine map ``gamma * (x - mean) / sigma + beta``."""
    out = {}
    for name, m in norms_with_statistics(
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


__all__ = ["PXResearchScorer"]

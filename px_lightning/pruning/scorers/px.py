"""PX (Path eXclusion; Iurada, Ciccone, Tommasi, CVPR 2024): a data-dependent path-kernel score.

Each weight's score is its share of ``R = sum(z1 * z2)``, where ``z1`` is the output of a data path
(the network's data flow through its current masks) and ``z2`` the output of a kernel copy whose weights are
squared and whose activations are the identity. Three variants (``VARIANTS``; steps in
``shared/conformance/README.md``; measured differences in ``benchmarks/README.md``):

- ``"cvpr2024"``: the code published with the paper (April 2024), which produced its tables. Every copy in
  ``train()`` mode; data path = the masked network itself on the batch ``x``; kernel copy = every
  convolution/linear weight and bias squared (the classifier too), activations the identity, on the same
  ``x``; ``score = |dR/d(w^2)| * |w|^5`` for a kept weight. Per batch one forward without gradients and one
  kernel forward-backward. Options: ``dense_head``, ``layer_floor``.
- ``"2025"``: the authors' 2025 rewrite as published. An ``eval()``-mode activation copy records each
  activation's gate on ``x``; a ``train()``-mode data path with kept weights and biases set to 1 runs on
  ``x ** 2`` with each activation replaced by its gate (``z1``); the kernel copy (squared weights and
  biases, normalisation layers in ``train()`` mode) runs on all-ones (``z2``, computed once per input shape
  and round); ``score = |dR/d(w^2)| * w^2``. The classifier keeps its real weights in both paths. On
  BatchNorm networks its scores before the last normalisation are float round-off.
- ``"2025-eval"``: the same with the kernel copy's normalisation layers in ``eval()`` mode: a linear path
  network, well-posed. ``kernel_norm="eval"`` / ``"train"`` select ``"2025-eval"`` / ``"2025"``.
  Options: ``head``, ``dense_head``, ``layer_floor``, ``bn_warmup``.

Options: ``head="body"`` scores the classifier on the body's scale (set to 1 / squared like every other
layer; ``"published"`` keeps its real weights). ``dense_head=True`` keeps the last prunable layer whole
within the same total budget. ``layer_floor=f`` keeps at least ``f * round density`` of every tensor.
``bn_warmup=True`` estimates the scoring copies' BatchNorm statistics on the scoring batches before each
round. The model is left untouched, dropout is off while scoring, and a pruned weight scores 0. Research
options live in ``px_research.PXResearchScorer``.

Example:
    >>> find_masks(model, "px", batches, density=0.01, rounds=100, variant="cvpr2024")
    >>> find_masks(model, "px", batches, density=0.01, rounds=20, head="body", bn_warmup=True)
    >>> compute_scores(model, "px", batches, kernel_norm="train")  # the 2025 code as published
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..copies import ActivationGates, has_batchnorm, scoring_copy, set_modes
from ..factors import GATES, FrozenFactors, sample_sums
from ..targets import PRUNABLE_TYPES, linear_maps
from ..zero_init import at_default_init
from .base import Scorer, batch_inputs, model_output

VARIANTS = ("cvpr2024", "2025", "2025-eval")
# The variant of PXScorer() with neither variant nor kernel_norm given; find_masks(model, "px") uses it.
DEFAULT_VARIANT = "cvpr2024"
# The options each variant takes besides ``variant`` (PXScorer's keyword arguments).
VARIANT_OPTIONS = {
    "cvpr2024": ("dense_head", "layer_floor"),
    "2025": ("kernel_norm", "head", "dense_head", "layer_floor", "bn_warmup"),
    "2025-eval": ("kernel_norm", "head", "dense_head", "layer_floor", "bn_warmup"),
}
_KERNEL_NORMS = {"2025": "train", "2025-eval": "eval"}


def head_layer(model: nn.Module) -> str:
    """The head: the name of the last prunable layer in module order (a parametrized model gives the same).

    Example:
        >>> head_layer(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
        '2'
    """
    return [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)][-1]


def resolve_variant(variant: str | None, kernel_norm: str | None, given: tuple[str, ...] = ()) -> str:
    """The PX variant named by ``variant``, else by the 2025 code's ``kernel_norm``, else ``DEFAULT_VARIANT``.

    Calls written for the 2025 code keep their meaning whatever the default variant is: without
    ``variant``, ``kernel_norm`` selects ``"2025-eval"`` / ``"2025"``, and ``given`` (the names of the other
    options passed) naming an option the default variant does not take selects ``"2025-eval"`` (the 2025
    code's default kernel mode).

    Example:
        >>> resolve_variant(None, "train")
        '2025'
    """
    if kernel_norm is not None and kernel_norm not in ("eval", "train"):
        raise ValueError(f"kernel_norm must be 'eval' or 'train', got {kernel_norm!r}")
    if variant is None:
        if kernel_norm is not None:
            return "2025-eval" if kernel_norm == "eval" else "2025"
        if any(option not in VARIANT_OPTIONS[DEFAULT_VARIANT] for option in given):
            return "2025-eval"
        return DEFAULT_VARIANT
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
    if kernel_norm is not None and variant in _KERNEL_NORMS and _KERNEL_NORMS[variant] != kernel_norm:
        raise ValueError(
            f"variant={variant!r} runs the kernel copy with kernel_norm={_KERNEL_NORMS[variant]!r}, but "
            f"kernel_norm={kernel_norm!r} was given: drop kernel_norm, or pass variant="
            f"{'2025-eval' if kernel_norm == 'eval' else '2025'!r}"
        )
    return variant


def refuse_options(variant: str, given: tuple[str, ...]) -> None:
    """``ValueError`` naming ``variant`` and the first option of ``given`` (names) that it does not take.

    Example:
        >>> refuse_options("cvpr2024", ("dense_head",))  # taken: no error
    """
    for option in given:
        if option not in VARIANT_OPTIONS[variant]:
            raise ValueError(
                f"PX variant={variant!r} does not take the option {option}; it takes "
                f"{', '.join(VARIANT_OPTIONS[variant])}. Drop {option}, or choose a variant that takes it "
                f"({', '.join(repr(v) for v, o in VARIANT_OPTIONS.items() if option in o)})"
            )


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
        set_modes(net, norm_train=True)
        with torch.no_grad():
            for batch in batches:
                x, _ = batch_inputs(batch, ref)
                torch.func.functional_call(net, {**real, **warm}, (x,), strict=False)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
    return warm


def _add(a: Tensor | tuple, b: Tensor | tuple) -> Tensor | tuple:
    return tuple(x + y for x, y in zip(a, b, strict=True)) if isinstance(a, tuple) else a + b


def _scale(a: Tensor | tuple, factor: float) -> Tensor | tuple:
    return tuple(x * factor for x in a) if isinstance(a, tuple) else a * factor


def _fresh(buffers: dict[str, Tensor]) -> dict[str, Tensor]:
    # Train-mode BatchNorm updates its statistics: each pass gets throwaway copies, so every pass sees the
    # same statistics and none of them reaches the caller.
    return {k: v.clone() for k, v in buffers.items()}


class PXScorer(Scorer):
    """PX scores, in one of ``VARIANTS`` (see the module docstring).

    ``variant``: ``"cvpr2024"``, ``"2025"`` or ``"2025-eval"``; ``None``: as ``resolve_variant`` (the variant
    ``kernel_norm`` names, else ``DEFAULT_VARIANT``). An option the variant does not take is refused naming
    both.

    Example:
        >>> PXScorer(variant="cvpr2024", dense_head=True)
        >>> PXScorer(kernel_norm="train")  # the same as PXScorer(variant="2025")
    """

    name = "px"
    one_shot = False

    def __init__(
        self,
        variant: str | None = None,
        kernel_norm: str | None = None,
        head: str | None = None,
        dense_head: bool = False,
        layer_floor: float = 0.0,
        bn_warmup: bool | None = None,
    ) -> None:
        given = tuple(o for o, v in {"head": head, "bn_warmup": bn_warmup}.items() if v is not None)
        self.variant = resolve_variant(variant, kernel_norm, given)
        refuse_options(self.variant, given + (("kernel_norm",) if kernel_norm is not None else ()))
        if head is not None and head not in ("published", "body"):
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
        if bn_warmup is not None and not isinstance(bn_warmup, bool):
            raise TypeError(f"bn_warmup must be True or False, got {bn_warmup!r}")
        # cvpr2024 has no kernel_norm and no head option: its kernel copy is in train mode and squares the
        # head like every other layer.
        self.kernel_norm = _KERNEL_NORMS.get(self.variant)
        self.head = None if self.variant == "cvpr2024" else (head or "published")
        self.dense_head, self.layer_floor, self.bn_warmup = dense_head, float(layer_floor), bool(bn_warmup)
        # How the caller chose the variant, for messages: only what they set is named.
        self._chosen = (
            f"variant={variant!r}"
            if variant is not None
            else (f"kernel_norm={kernel_norm!r}" if kernel_norm is not None else None)
        )

    def zero_scores_advice(self) -> str:
        if self.variant == "2025" and self._chosen is not None:
            return (
                f"with {self._chosen} (the 2025 code as published) the kernel copy normalises one all-ones "
                "sample by its own statistics, so on BatchNorm networks its scores are float round-off: use "
                "variant='2025-eval' (well-posed) or variant='cvpr2024'"
            )
        return super().zero_scores_advice()

    @property
    def shardable(self) -> bool:
        """Whether ``gradient_sums`` is a sum over the batches alone (PX's scores are not: a score is the
        absolute value of a gradient summed over batches), so ranks may each compute it on a share of the
        batches, sum the shares, and call ``scores_from_sums``: True unless ``bn_warmup`` (whose statistics
        pool all the batches)."""
        return not self.bn_warmup

    def partial_scores(self, model, weights, masks, batches, loss_fn=None) -> dict[str, Tensor]:
        return self.gradient_sums(model, weights, masks, batches)

    def finish_scores(self, partial, weights, masks) -> dict[str, Tensor]:
        return self.scores_from_sums(partial, weights, masks)

    def thresholding(self, weights: dict[str, Tensor], model: nn.Module) -> dict:
        """Constraints for ``threshold_masks``: the head kept dense and/or a per-layer floor.

        Known before any scoring (``find_masks`` checks the final density against them first).

        Example:
            >>> PXScorer(dense_head=True).thresholding(weights, model)
            {'dense': ['fc.weight']}
        """
        out: dict = {}
        if self.dense_head:
            head = f"{head_layer(model)}.weight"
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
        return self.scores_from_sums(self.gradient_sums(model, weights, masks, batches), weights, masks)

    def gradient_sums(self, model, weights, masks, batches) -> dict[str, Tensor]:
        """The signed ``dR/d(w^2)`` of each pruned tensor, summed over ``batches``: the additive part of one
        round (arguments as ``score``'s).

        Example:
            >>> sums = scorer.gradient_sums(model, weights, masks, my_share_of_the_batches)
            >>> scores = scorer.scores_from_sums(all_reduce_sum(sums), weights, masks)
        """
        # A tensor zero by construction (a ViT's head) is scored as if at its default init (zero_init.py).
        weights = at_default_init(weights, masks)
        net = self._masked_copy(model, weights, masks)
        if self.variant == "cvpr2024":
            return self._gradients_cvpr2024(net, weights, batches)
        return self._gradients_2025(net, linear_maps(net), weights, masks, batches)

    def scores_from_sums(self, sums, weights, masks) -> dict[str, Tensor]:
        """The scores from ``gradient_sums`` (summed over every batch): ``|sum| * |w|^5`` (cvpr2024) or
        ``|sum| * w^2`` (2025) for a kept weight, 0 for a pruned one; ``sums`` is left as it is.

        Example:
            >>> scores = scorer.scores_from_sums(sums, weights, masks)
        """
        scores, weights = {}, at_default_init(weights, masks)
        for n, g in sums.items():
            # One temporary per tensor, one tensor at a time. cvpr2024: |dR/d(w^2)| * w^2 * |w| * w^2.
            w = weights[n] * masks[n]
            scores[n] = g.abs().mul_(w.abs_().pow_(5) if self.variant == "cvpr2024" else self._power(w))
        return self._normalise(scores)

    # --- shared -----------------------------------------------------------------------------------------

    @staticmethod
    def _masked_copy(model, weights, masks) -> nn.Module:
        """A plain copy of ``model`` with the masked weights written into its own tensors (no second
        full-size copy)."""
        net = scoring_copy(model)
        with torch.no_grad():
            for n in weights:
                torch.mul(weights[n], masks[n], out=net.get_parameter(n).detach())
        return net

    # --- cvpr2024 ---------------------------------------------------------------------------------------

    def _gradients_cvpr2024(self, net, weights, batches) -> dict[str, Tensor]:
        set_modes(net, norm_train=True)
        # Only the squared pruned tensors are differentiated: the copy's own parameters (normalisation
        # affine parameters among them) need no gradient, which spares the backward their reductions.
        net.requires_grad_(False)
        # Every weight matrix and bias of a linear map is squared in the kernel copy, the head's too.
        names = [t for _, w, b in linear_maps(net) for t in (w, b) if t is not None]
        real = {t: net.get_parameter(t).detach() for t in names}
        ref = real[next(iter(weights))]
        squared = {k: v.square() for k, v in real.items()}
        leaves = {n: squared[n].requires_grad_(True) for n in weights}
        # Every normalisation layer runs on batch statistics (train mode), so the running statistics that
        # each pass updates in the copy are never read: no throwaway buffers are needed.
        for batch in batches:
            x, _ = batch_inputs(batch, ref)
            # The data path is the masked network itself: it is the activation pass. Every activation is
            # read as a ReLU (gate = pre-activation > 0), as in the 2025 variants; on ReLU networks that is
            # the published computation.
            # Attention probabilities are frozen at their values in it for the kernel copy (factors.py);
            # normalisation layers normalise each copy on its own input, as its BatchNorm layers do, and
            # gates are activations like any other.
            with (
                torch.no_grad(),
                FrozenFactors("record", norms=False, gates=False) as factors,
                ActivationGates("relu"),
            ):
                z1 = model_output(net(x))
            with (
                FrozenFactors("replay", factors.factors, norms=False, gates=False),
                ActivationGates("identity"),
            ):
                z2 = model_output(torch.func.functional_call(net, squared, (x,), strict=False))
            (z1 * z2).sum().backward()  # gradients with respect to w^2 add up over the batches
            del z1, z2
        return {
            n: torch.zeros_like(real[n]) if leaf.grad is None else leaf.grad for n, leaf in leaves.items()
        }

    # --- 2025 / 2025-eval -------------------------------------------------------------------------------

    def _gradients_2025(self, net, layers, weights, masks, batches) -> dict[str, Tensor]:
        # "published" leaves the head's real weights in both paths; "body" treats it like every other layer.
        real_head = head_layer(net) if self.head == "published" else None
        if self.kernel_norm == "train" and has_batchnorm(net):
            warnings.warn(
                "PX kernel_norm='train' (the published 2025 code) on a model with BatchNorm: scores of the "
                "weights before the last normalisation are float round-off; use kernel_norm='eval'",
                stacklevel=6,
            )
        ref = next(iter(weights.values()))
        real = {w: net.get_parameter(w).detach() for _, w, _ in layers}
        biases = {b: net.get_parameter(b).detach() for _, _, b in layers if b is not None}
        buffers = dict(net.named_buffers())
        if self.bn_warmup:
            buffers = _warm_up_statistics(net, real, buffers, batches, ref)
        z1_sums, factors = self._data_path_sums(net, layers, real, biases, buffers, masks, batches, real_head)
        kernel, leaves = self._kernel_state(layers, weights, masks, real, biases, real_head)
        del real
        total = self._kernel_product(net, kernel, buffers, z1_sums, factors, ref)
        total.backward()
        del total, kernel
        return {n: torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for n, leaf in leaves.items()}

    def _data_path_sums(
        self, net, layers, real, biases, buffers, masks, batches, real_head
    ) -> tuple[dict, dict]:
        """``z1`` summed over the batches and samples, per input shape: the activation copy (eval mode,
        real weights) records the gates and the input-dependent factors (``factors.py``) on ``x``, the data
        path (kept weights and biases 1) replays them on ``x ** 2``; and per input shape the factors of the
        mean sample, for the kernel copy."""
        ref = next(iter(real.values()))
        data_path = {}
        for layer, w, b in layers:
            if layer == real_head:
                data_path[w] = real[w]
                continue
            data_path[w] = masks[w].to(ref.dtype) if w in masks else torch.ones_like(real[w])
            if b in biases:
                data_path[b] = torch.ones_like(biases[b])
        data_norms = self._data_norms(net)
        z1_sums: dict[tuple, Tensor] = {}
        factor_sums: dict[tuple, tuple[int, list]] = {}
        with torch.no_grad():
            for batch in batches:
                x, _ = batch_inputs(batch, ref)
                net.eval()
                with FrozenFactors("record") as factors, ActivationGates("record", exclude=GATES) as recorder:
                    torch.func.functional_call(net, {**real, **buffers}, (x,), strict=False)
                set_modes(net, norm_train=data_norms is None)
                state = {**data_path, **_fresh(buffers), **(data_norms or {})}
                # Its weights are all 1: every channel of a layer carries the same signal, which a LayerNorm
                # on its own statistics would cut to its shift; frozen statistics keep the paths.
                with (
                    FrozenFactors("replay", factors.factors),
                    ActivationGates("replay", recorder.gates, exclude=GATES),
                ):
                    out = torch.func.functional_call(net, state, (x**2,), strict=False)
                z1 = model_output(out).sum(0)
                key = tuple(x.shape[1:])
                z1_sums[key] = z1_sums[key] + z1 if key in z1_sums else z1
                sums = sample_sums(factors.factors, len(x))
                if key in factor_sums:
                    count, before = factor_sums[key]
                    sums = [_add(a, b) for a, b in zip(before, sums, strict=True)]
                    factor_sums[key] = (count + len(x), sums)
                else:
                    factor_sums[key] = (len(x), sums)
                del recorder, factors, out
        means = {key: [_scale(f, 1 / count) for f in sums] for key, (count, sums) in factor_sums.items()}
        return z1_sums, means

    def _kernel_state(self, layers, weights, masks, real, biases, real_head) -> tuple[dict, dict]:
        """The kernel copy's weights and biases (``_power`` of the masked ones, in place: the copy's own
        tensors, no further full-size copy) and the leaves to differentiate (the pruned tensors). The masks
        are applied to the gradient afterwards, which gives the same values as multiplying them in the
        graph (a factor 1 or 0)."""
        leaves, kernel = {}, {}
        with torch.no_grad():
            for layer, w, b in layers:
                value = real[w] if layer == real_head else self._power(real[w])
                if w in masks:
                    leaves[w] = value.requires_grad_(True)
                kernel[w] = value
                if b in biases:
                    kernel[b] = biases[b] if layer == real_head else self._power(biases[b].clone())
        return kernel, leaves

    def _kernel_product(self, net, kernel, buffers, z1_sums, factors, ref) -> Tensor:
        """``sum(z1 * z2)`` over the input shapes, ``z2`` the kernel copy's output on all-ones, its
        input-dependent factors those of the activation pass's mean sample."""
        set_modes(net, norm_train=self.kernel_norm == "train")
        norms = self._kernel_norms(net, buffers)
        total = 0
        for shape, z1 in z1_sums.items():
            ones = torch.ones((1, *shape), dtype=ref.dtype, device=ref.device)
            with FrozenFactors("replay", factors[shape]), ActivationGates("identity", exclude=GATES):
                out = torch.func.functional_call(
                    net, {**kernel, **_fresh(buffers), **norms}, (ones,), strict=False
                )
            total = total + (self._weight_outputs(z1) * model_output(out)[0]).sum()
        return total

    # --- hooks (the research options of px_research.PXResearchScorer override these) --------------------

    def _power(self, t: Tensor) -> Tensor:
        """The kernel copy's value of a weight or bias tensor, in place: ``t ** 2``."""
        return t.pow_(2)

    def _data_norms(self, net: nn.Module) -> dict[str, Tensor] | None:
        """State replacing the data path's normalisation layers in eval mode; ``None``: train mode."""
        return None

    def _kernel_norms(self, net: nn.Module, buffers: dict[str, Tensor]) -> dict[str, Tensor]:
        """State replacing the kernel copy's normalisation parameters or statistics (none)."""
        return {}

    def _weight_outputs(self, z1: Tensor) -> Tensor:
        """The data path's output as it weights the kernel's output units (as it is)."""
        return z1

    def _normalise(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        """The scores as returned (as computed)."""
        return scores

"""The scorer interface: a policy that maps (model, current masks, data) to one score per weight."""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def check_seed(seed: object, method: str) -> int | None:
    """``seed`` as an ``int`` (or ``None``), checked when the scorer is made rather than at scoring time.

    Example:
        >>> self.seed = check_seed(seed, "random")
    """
    if seed is None:
        return None
    try:
        if isinstance(seed, bool):
            raise TypeError
        value = operator.index(seed)  # int and integer-like (numpy) seeds; not floats or strings
    except TypeError:
        raise ValueError(f"{method}: seed must be an integer or None, got {seed!r}") from None
    try:
        torch.Generator().manual_seed(value)
    except (RuntimeError, ValueError, OverflowError) as err:
        raise ValueError(f"{method}: seed {value} is out of range for torch's generator ({err})") from None
    return value


@contextlib.contextmanager
def differentiable_attention() -> Iterator[None]:
    """Inside the ``with`` block, ``F.scaled_dot_product_attention`` runs its math implementation.

    The fused kernels (flash, memory-efficient; on the CPU too) have no second derivative, which GraSP's
    Hessian-gradient product needs; the math implementation is made of differentiable operations and
    computes the same function.

    Example:
        >>> with differentiable_attention():
        ...     torch.autograd.grad(z, weights)
    """
    with sdpa_kernel(SDPBackend.MATH):
        yield


def batch_inputs(batch, like: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(inputs, targets)`` of a pair or a bare input tensor, on ``like``'s device, float inputs in its dtype."""
    x, y = (
        (batch[0], batch[1] if len(batch) > 1 else None)
        if isinstance(batch, (tuple, list))
        else (batch, None)
    )
    x = x.to(like.device, like.dtype if x.is_floating_point() else x.dtype)
    return x, (None if y is None else y.to(like.device))


def labelled_batch(batch, like: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """``batch_inputs`` for the methods that need targets for their loss."""
    x, y = batch_inputs(batch, like)
    if y is None:
        raise ValueError(f"batches must hold (inputs, targets) pairs: {method} needs targets for its loss")
    return x, y


def grad_or_zeros(leaf: Tensor) -> Tensor:
    """``leaf.grad`` after a backward pass, or zeros where the output did not depend on ``leaf`` at all (a
    tensor on no path: GoogLeNet's auxiliary heads, unused in ``eval()`` and outside ``model_output``)."""
    return torch.zeros_like(leaf) if leaf.grad is None else leaf.grad


def model_output(out) -> Tensor:
    """The prediction tensor of a model output: a tensor, ``.logits``, ``["out"]`` or the first of a tuple."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict) and "out" in out:
        return out["out"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find the prediction tensor in a model output of type {type(out).__name__}")


class Scorer:
    """Base class of scoring methods: the one extension point of the pruning layer.

    ``score`` receives the plain model, the prunable tensors' current (unmasked) values by name, the
    current masks (same names, bool) and the scoring batches, and returns ``{name: Tensor}`` of
    non-negative-or-signed scores, higher is kept. It must leave ``model`` as it found it.

    What callers need to know about a method it declares here, rather than callers testing for its class:
    ``one_shot`` (a single round by default, ``default_rounds``), ``needs_data`` (whether ``batches`` may
    be empty), ``shardable`` (whether data-parallel ranks may score shares of the batches: the sums of
    ``partial_scores`` then finish into the one-process scores) and
    ``thresholding`` (constraints the method asks of the threshold).

    Example:
        >>> class RowIndex(Scorer):
        ...     name, needs_data = "row", False
        ...     def score(self, model, weights, masks, batches, loss_fn=None):
        ...         return {n: torch.arange(w.numel(), dtype=w.dtype).view_as(w) for n, w in weights.items()}
        >>> find_masks(model, RowIndex(), density=0.5)
    """

    name: str = "scorer"
    one_shot: bool = True
    needs_data: bool = True

    @property
    def shardable(self) -> bool:
        """Whether ``partial_scores`` of shares of the batches, summed, equal ``partial_scores`` of all of
        them (up to float round-off), so data-parallel ranks can each score a share, sum, and finish with
        ``finish_scores``: exact sharded scoring. False unless a scorer declares it."""
        return False

    def partial_scores(self, model, weights, masks, batches, loss_fn=None) -> dict[str, Tensor]:
        """The part of one round's scoring that sums over batches (arguments as ``score``'s); by default
        the scores themselves. ``finish_scores`` turns the (summed) parts into scores."""
        return self.score(model, weights, masks, batches, loss_fn)

    def finish_scores(
        self, partial: dict[str, Tensor], weights: dict[str, Tensor], masks: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """The scores from ``partial_scores`` summed over every batch; by default ``partial`` as it is."""
        return partial

    def thresholding(self, weights: dict[str, Tensor], model: nn.Module) -> dict:
        """Keyword arguments for ``threshold_masks`` (``dense``, ``layer_floor``) this scorer asks for.

        Known before any scoring, so ``find_masks`` can refuse an infeasible request first. None by default.
        """
        return {}

    def zero_scores_advice(self) -> str:
        """What to check when every score of this scorer is zero (ends ``ZeroScoresError``'s message)."""
        advice = (
            "check that the scoring data is not all zeros and that the model's output depends on its weights"
        )
        if not type(self).__module__.startswith(__package__):
            # A scorer written elsewhere: name the known cause, which a built-in scorer's own advice covers.
            advice += (
                "; a kernel copy normalised by its own statistics on one all-ones sample (PX's "
                "kernel_norm='train') gives exactly this on BatchNorm networks"
            )
        return advice

    @property
    def default_rounds(self) -> int:
        """Rounds when the caller gives none: 1 for one-shot methods, 100 (the published PX and SynFlow runs)
        otherwise; a scorer whose authors publish another count overrides this."""
        return 1 if self.one_shot else 100

    def score(
        self,
        model: nn.Module,
        weights: dict[str, Tensor],
        masks: dict[str, Tensor],
        batches: Iterable,
        loss_fn: nn.Module | None = None,
    ) -> dict[str, Tensor]:
        """One round's scores (see the class docstring): the one method every scorer implements."""
        raise NotImplementedError

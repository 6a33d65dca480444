"""The algorithm layer: pure PyTorch, no Lightning. Works on any ``nn.Module``.

Example:
    >>> masks = find_masks(model, "magnitude", batches, density=0.05)
    >>> apply_masks(model, masks)
    >>> sparsity_report(model)["density"]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .connectivity import effective_masks
from .errors import ZeroScoresError
from .masks import (
    WeightMask,
    _module_and_attr,
    apply_masks,
    get_masks,
    remove_masks,
    sparsity_report,
    warn_collapsed,
)
from .reports import density_table
from .schedule import _check_dense_budget, _check_scope, _threshold, density_schedule, threshold_masks
from .scorers import (
    GraSPScorer,
    MagnitudeScorer,
    NTKSAPScorer,
    PXScorer,
    RandomScorer,
    Scorer,
    SNIPScorer,
    SynFlowScorer,
    get_scorer,
)
from .targets import prunable_parameters


def _effective_weights(model: nn.Module, names: Sequence[str]) -> dict[str, Tensor]:
    # getattr on a parametrized module gives the masked value; detach so nothing reaches the caller's graph.
    return {name: getattr(*_module_and_attr(model, name)).detach().clone() for name in names}


def _start_masks(model: nn.Module, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    existing = get_masks(model)
    return {n: existing.get(n, torch.ones_like(w, dtype=torch.bool)).to(w.device) for n, w in weights.items()}


def _scoring_batches(batches: Iterable, scorer: Scorer) -> list:
    # Read once, in order: every round sees the same batches even when a generator is given.
    batches = list(batches)
    if scorer.needs_data and not batches:
        raise ValueError(f"batches is empty: {scorer.name} needs at least one batch of scoring data")
    return batches


def _on_device(batches: list, device: torch.device) -> list:
    """The batches' tensors moved to ``device`` once, for scoring rounds that would each copy them again.

    Measured on an H200: PX in the callback took 0.38 s a round on ResNet-50 with 10 x 64 images at 224
    read from the host (385 MB over PCIe each round, and a BatchNorm warm-up pass) against 0.25 s for
    ``compute_scores`` with them on the GPU. Only where they fit comfortably: on a CUDA device, a quarter
    of its free memory; otherwise each use copies as before.
    """
    if device.type == "cpu":
        return batches

    def tensors(batch) -> list[Tensor]:
        if isinstance(batch, Tensor):
            return [batch]
        return [t for t in batch if isinstance(t, Tensor)] if isinstance(batch, (tuple, list)) else []

    size = sum(t.numel() * t.element_size() for b in batches for t in tensors(b) if t.device != device)
    if size == 0 or (device.type == "cuda" and size > torch.cuda.mem_get_info(device)[0] // 4):
        return batches

    def move(batch):
        if isinstance(batch, Tensor):
            return batch.to(device)
        if isinstance(batch, (tuple, list)):
            items = [t.to(device) if isinstance(t, Tensor) else t for t in batch]
            return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)  # namedtuples
        return batch

    return [move(b) for b in batches]


def _signed(scores: dict[str, Tensor]) -> bool:
    # A pruned weight scores 0; with signed scores (GraSP) 0 can rank above kept weights' negative scores
    # and the pruned weight would come back, so it then ranks last (-inf). Non-negative scores are
    # thresholded as they are (published threshold).
    return any(bool((s < 0).any()) for s in scores.values())


def _check_scores(scores: dict[str, Tensor], method: str) -> None:
    for n, s in scores.items():
        if not torch.isfinite(s).all():
            raise ValueError(f"{method} produced NaN or infinite scores for {n!r}; check the model and data")


def compute_scores(
    model: nn.Module,
    method: str | Scorer,
    batches: Iterable = (),
    loss_fn: nn.Module | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    **options,
) -> dict[str, Tensor]:
    """One scoring pass of ``method``: ``{param_name: Tensor}`` with the weights' shapes.

    The model is left as it was; on a masked model the scores see the masked network.

    Example:
        >>> scores = compute_scores(model, "magnitude")
    """
    scorer = get_scorer(method, **options)
    batches = _scoring_batches(batches, scorer)
    targets = prunable_parameters(model, include, exclude)
    weights = _effective_weights(model, list(targets))
    masks = _start_masks(model, weights)
    with torch.enable_grad():  # scorers differentiate, also when the caller is inside torch.no_grad()
        scores = scorer.score(model, weights, masks, batches, loss_fn)
    _check_scores(scores, scorer.name)
    return scores


def find_masks(
    model: nn.Module,
    method: str | Scorer,
    batches: Iterable = (),
    density: float = 0.018,
    rounds: int | None = None,
    scope: str = "global",
    schedule: str = "exponential",
    loss_fn: nn.Module | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    reduce_scores: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
    **options,
) -> dict[str, Tensor]:
    """Iteratively prune to ``density``: each round scores the masked network and thresholds.

    ``rounds`` defaults to the scorer's ``default_rounds``: 1 for one-shot methods, 20 for NTK-SAP (its
    authors' CIFAR runs), 100 otherwise. Continues from masks already on
    the model. Returns ``{param_name: bool Tensor}``; the model is left untouched.
    ``progress(done, rounds)`` is called after each round; ``reduce_scores`` maps each round's scores
    before thresholding (the Lightning callback sums them across data-parallel ranks with it). With more
    than one round, batches on the host are copied to the model's accelerator once for all rounds when they
    fit in a quarter of its free memory.

    Example:
        >>> masks = find_masks(model, "random", density=0.1, seed=0)
    """
    if not isinstance(density, (int, float)) or isinstance(density, bool) or not (0 < density <= 1):
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    scorer = get_scorer(method, **options)
    batches = _scoring_batches(batches, scorer)
    if rounds is None:
        rounds = scorer.default_rounds
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    _check_scope(scope)
    densities = density_schedule(density, rounds, schedule)
    targets = prunable_parameters(model, include, exclude)
    weights = _effective_weights(model, list(targets))
    masks = _start_masks(model, weights)
    start_kept = {n: int(m.sum()) for n, m in masks.items()}
    # Each tensor's share (local) or all of them (global): what is kept now against what ``density`` keeps.
    groups = [[n] for n in masks] if scope == "local" else [list(masks)]
    current = [sum(start_kept[n] for n in g) / sum(masks[n].numel() for n in g) for g in groups]
    if density == 1.0 or all(c <= density for c in current):
        # Nothing to prune: no scoring. Masks already at or below the target stay as they are (pruned
        # weights never come back), which a caller asking for more weights than that should hear about.
        if any(c < density for c in current):
            warnings.warn(
                f"the model's masks already keep less than density {density:g} ({scope} scope; kept now: "
                f"{min(current):.4g} at the lowest): nothing pruned, the current masks are returned "
                "(remove_masks first to prune afresh)",
                stacklevel=2,
            )
        return masks
    # A scorer may ask for constrained thresholding (PX's dense_head / layer_floor options); an infeasible
    # one fails here, before any scoring, not in the round that runs out of budget.
    constraints = scorer.thresholding(weights, model) if hasattr(scorer, "thresholding") else {}
    if constraints.get("dense"):
        _check_dense_budget(masks, density, constraints["dense"])
    if rounds > 1 and weights:
        batches = _on_device(batches, next(iter(weights.values())).device)
    for done, round_density in enumerate(densities, start=1):
        with torch.enable_grad():  # scorers differentiate, also when the caller is inside torch.no_grad()
            scores = scorer.score(model, weights, masks, batches, loss_fn)
        if reduce_scores is not None:
            scores = reduce_scores(scores)
        _check_scores(scores, scorer.name)
        if all(not bool(s.any()) for s in scores.values()):
            raise ZeroScoresError(
                f"{scorer.name} scores are all zero, so every weight would be pruned; with PX this is what "
                "kernel_norm='train' gives on BatchNorm networks (float round-off): use kernel_norm='eval', "
                "or check that the scoring data is not all zeros",
                scorer.name,
            )
        # ``pruned``: pruned weights rank last without a copy of the scores (each tensor's is made in turn).
        new = _threshold(
            scores, round_density, scope, pruned=masks if _signed(scores) else None, **constraints
        )
        del scores  # not alive during the next round's scoring
        # Continue from the current masks: a pruned weight never comes back, whatever a scorer returns.
        for n, m in new.items():
            m &= masks[n].to(m.device)
        masks = new
        if progress is not None:
            progress(done, rounds)
    warn_collapsed(masks, scorer.name)
    _warn_short(masks, density, scope, scorer.name, start_kept)
    return masks


def _warn_short(
    masks: dict[str, Tensor], density: float, scope: str, method: str, start_kept: dict[str, int]
) -> None:
    # Scores tied at the threshold are pruned together (as published: kept = strictly above the k-th
    # smallest), so a scorer that gives many weights the same score (zeros on dead paths, magnitude on
    # quantised weights) keeps fewer than asked. Say so when it is more than a rounding difference; a
    # tensor already below the density when pruning started cannot give more than it kept.
    def asked_of(n: int) -> int:
        return n - int((1.0 - density) * n)

    if scope == "local":
        asked = sum(min(start_kept[n], asked_of(m.numel())) for n, m in masks.items())
    else:
        asked = min(sum(start_kept.values()), asked_of(sum(m.numel() for m in masks.values())))
    kept = sum(int(m.sum()) for m in masks.values())
    if asked - kept > max(1, 0.01 * asked):
        warnings.warn(
            f"{method} kept {kept} weights where density {density:g} asks for {asked}: {asked - kept} "
            "scores tied at the threshold were pruned together (many equal scores, e.g. zeros on dead "
            "paths); the density is a ceiling here",
            stacklevel=3,
        )


__all__ = [
    "GraSPScorer",
    "MagnitudeScorer",
    "NTKSAPScorer",
    "PXScorer",
    "RandomScorer",
    "SNIPScorer",
    "Scorer",
    "SynFlowScorer",
    "WeightMask",
    "ZeroScoresError",
    "apply_masks",
    "compute_scores",
    "density_schedule",
    "density_table",
    "effective_masks",
    "find_masks",
    "get_masks",
    "prunable_parameters",
    "remove_masks",
    "sparsity_report",
    "threshold_masks",
]

"""The search: score a model with a method and threshold the scores, round after round.

``compute_scores`` runs one scoring pass; ``find_masks`` prunes iteratively to a density, continuing from
masks already on the model. Neither changes the model.

Example:
    >>> scores = compute_scores(model, "synflow", batches)
    >>> masks = find_masks(model, "px", batches, density=0.05, rounds=20)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .errors import ZeroScoresError
from .masks import get_masks, module_and_attr
from .nm import nm_masks, parse_pattern
from .reports import warn_collapsed, warn_short
from .schedule import dense_budget, density_schedule, threshold_masks
from .scorers import Scorer, get_scorer
from .targets import prunable_parameters
from .validation import check_density, check_rounds, check_schedule, check_scope


def _effective_weights(model: nn.Module, names: Sequence[str]) -> dict[str, Tensor]:
    # getattr on a parametrized module gives the masked value; detach so nothing reaches the caller's graph.
    return {name: getattr(*module_and_attr(model, name)).detach().clone() for name in names}


def _start_masks(model: nn.Module, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    existing = get_masks(model)
    return {n: existing.get(n, torch.ones_like(w, dtype=torch.bool)).to(w.device) for n, w in weights.items()}


def _scoring_batches(batches: Iterable, scorer: Scorer) -> list:
    # Read once, in order: every round sees the same batches even when a generator is given.
    batches = list(batches)
    if scorer.needs_data and not batches:
        raise ValueError(f"batches is empty: {scorer.name} needs at least one batch of scoring data")
    return batches


def _small_batch_advice(batches: list, scorer: Scorer) -> str:
    """The likely cause of a layer collapse when the scoring batches hold 2 images or fewer, else ''."""
    inputs = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
    smallest = min((x.shape[0] for x in inputs if isinstance(x, Tensor) and x.dim() > 0), default=None)
    if not scorer.needs_data or smallest is None or smallest > 2:
        return ""
    # A train()-mode BatchNorm over a 1x1 feature map (the last stage of a CNN on 32x32 inputs) normalises
    # 2 values per channel to +-1 whatever they are: the layers before it get no gradient (zoo benchmark).
    return (
        f"; or score with more images per batch: with batches of {smallest}, a BatchNorm in train() mode "
        f"over a 1x1 feature map normalises {smallest} values per channel to constants, so the layers "
        "before it score 0"
    )


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
            hint = ""
            if s.dtype in (torch.float32, torch.float16, torch.bfloat16):
                # Products over many layers overflow float32 first (PX's 2025 variants on a ConvNeXt-T reach
                # 1e37, on a Swin-T 1e125): the same scores exist in float64.
                hint = (
                    f"; if both are finite, the scores overflowed {s.dtype}: score a float64 copy "
                    "(copy.deepcopy(model).double(), batches in float64) and apply its masks"
                )
            raise ValueError(
                f"{method} produced NaN or infinite scores for {n!r}; check the model and data" + hint
            )


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
    reshuffle: bool = False,
    invert: bool = False,
    generator: torch.Generator | None = None,
    pattern: str | tuple[int, int] | None = None,
    **options,
) -> dict[str, Tensor]:
    """Iteratively prune to ``density``: each round scores the masked network and thresholds.

    ``rounds`` defaults to the scorer's ``default_rounds``: 1 for one-shot methods, 20 for NTK-SAP (its
    authors' CIFAR runs), 100 otherwise. Continues from masks already on
    the model. Returns ``{param_name: bool Tensor}``; the model is left untouched.
    ``progress(done, rounds)`` is called after each round; ``reduce_scores`` maps each round's
    ``Scorer.partial_scores`` before ``Scorer.finish_scores`` makes them scores (the Lightning callback sums
    them across data-parallel ranks with it: exact where the scorer is ``shardable``). With more
    than one round, batches on the host are copied to the model's accelerator once for all rounds when they
    fit in a quarter of its free memory.

    The sanity checks of the pruning-at-initialisation literature (Frankle et al., ICLR 2021) keep each
    tensor's number of kept weights and change which ones: ``reshuffle=True`` permutes each tensor's mask
    at random (``generator`` seeds it), ``invert=True`` keeps each tensor's lowest-scored weights instead
    of its highest, ranked by the first round's scores (those of the masks the search starts from). A
    method whose masks survive these without losing accuracy has learnt per-layer densities, not weights.

    ``pattern="2:4"`` (N:M masks): every round keeps at most N of every M consecutive weights along each
    output's input dimension, inside the same budget (``nm_masks``); tensors whose input dimension is not a
    multiple of M, and tensors kept dense, stay unconstrained and are named in a warning. It needs a
    density below 1.

    Example:
        >>> masks = find_masks(model, "random", density=0.1, seed=0)
        >>> shuffled = find_masks(model, "px", batches, density=0.05, reshuffle=True)
        >>> semi_structured = find_masks(model, "magnitude", density=0.4, pattern="2:4")
    """
    density = check_density(density)
    rounds = check_rounds(rounds, allow_none=True)
    check_scope(scope)
    check_schedule(schedule)
    for argument, value in (("reshuffle", reshuffle), ("invert", invert)):
        if not isinstance(value, bool):
            raise TypeError(f"{argument} must be True or False, got {value!r}")
    if reshuffle and invert:
        raise ValueError("reshuffle and invert are two different sanity checks: set one of them, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    nm = None if pattern is None else parse_pattern(pattern)
    if nm is not None and density == 1.0:
        raise ValueError(f"pattern={pattern!r} needs a density below 1: density 1 keeps every weight")
    scorer = get_scorer(method, **options)
    batches = _scoring_batches(batches, scorer)
    densities = density_schedule(density, scorer.default_rounds if rounds is None else rounds, schedule)
    rounds = len(densities)
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
    constraints = scorer.thresholding(weights, model)
    if constraints.get("dense"):
        dense_budget(masks, density, constraints["dense"])
    if rounds > 1 and weights:
        batches = _on_device(batches, next(iter(weights.values())).device)
    start_masks, first_scores = masks, None
    for done, round_density in enumerate(densities, start=1):
        with torch.enable_grad():  # scorers differentiate, also when the caller is inside torch.no_grad()
            if reduce_scores is None:
                scores = scorer.score(model, weights, masks, batches, loss_fn)
            else:  # the summable part is reduced (across ranks), then finished into scores
                partial = reduce_scores(scorer.partial_scores(model, weights, masks, batches, loss_fn))
                scores = scorer.finish_scores(partial, weights, masks)
                del partial
        _check_scores(scores, scorer.name)
        if all(not bool(s.any()) for s in scores.values()):
            emptied = [n for n, m in masks.items() if not bool(m.any())]
            if emptied:  # every path crosses a layer that keeps nothing: scores that follow paths vanish
                by = "the earlier rounds" if all(start_kept[n] for n in emptied) else "the model's masks"
                raise ZeroScoresError(
                    f"{scorer.name} scores are all zero in round {done} of {rounds}: {by} pruned "
                    f"{', '.join(emptied[:8])}{f' and {len(emptied) - 8} more' if len(emptied) > 8 else ''} "
                    "entirely (layer collapse), which cuts every input-output path; "
                    f"prune in more rounds than rounds={rounds} or to a higher density than {density:g}"
                    + _small_batch_advice(batches, scorer),
                    scorer.name,
                )
            raise ZeroScoresError(
                f"{scorer.name} scores are all zero on every one of the {len(scores)} pruned tensors of this "
                f"model (round {done} of {rounds}), so every weight would be pruned; "
                f"{scorer.zero_scores_advice()}",
                scorer.name,
            )
        # ``pruned``: pruned weights rank last without a copy of the scores (each tensor's is made in turn).
        if nm is None:
            new = threshold_masks(
                scores, round_density, scope, pruned=masks if _signed(scores) else None, **constraints
            )
        else:  # within a group the best kept weights are chosen, so the pruned ones always rank last
            result = nm_masks(scores, round_density, nm, scope, pruned=masks, **constraints)
            new = result.masks
        if invert and first_scores is None:
            first_scores = scores  # kept for the inversion: the ranking of the starting masks
        del scores  # not alive during the next round's scoring
        # Continue from the current masks: a pruned weight never comes back, whatever a scorer returns.
        for n, m in new.items():
            m &= masks[n].to(m.device)
        masks = new
        if progress is not None:
            progress(done, rounds)
    if nm is not None and result.unconstrained:
        warnings.warn(
            f"pattern {pattern!r}: left unconstrained (input dimension not a multiple of {nm[1]}, or kept "
            f"dense): {', '.join(result.unconstrained)}",
            stacklevel=2,
        )
    if reshuffle:
        masks = {n: _shuffled(m, start_masks[n], generator) for n, m in masks.items()}
    if invert:
        masks = {n: _lowest(first_scores[n], start_masks[n], int(m.sum())) for n, m in masks.items()}
    warn_collapsed(masks, scorer.name)
    warn_short(masks, density, scope, scorer.name, start_kept)
    return masks


def _shuffled(mask: Tensor, start: Tensor, generator: torch.Generator | None) -> Tensor:
    # The kept count moved to random positions among the weights the search could keep (a weight pruned
    # before it started stays pruned, as in every other search).
    allowed = start.to(mask.device).flatten().nonzero().flatten()
    order = torch.randperm(allowed.numel(), generator=generator).to(mask.device)
    out = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    out[allowed[order[: int(mask.sum())]]] = True
    return out.view_as(mask)


def _lowest(scores: Tensor, start: Tensor, kept: int) -> Tensor:
    # The ``kept`` lowest-scored weights among those the search could keep.
    ranked = scores.flatten().masked_fill(~start.to(scores.device).flatten(), float("inf"))
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    out[torch.topk(ranked, kept, largest=False).indices] = True
    return out.view_as(scores)

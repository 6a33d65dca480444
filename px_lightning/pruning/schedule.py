"""Density schedules and thresholds."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from .validation import check_density, check_rounds, check_schedule, check_scope, pruned_count


def density_schedule(density: float, rounds: int, kind: str = "exponential") -> list[float]:
    """Density after each round: ``density ** ((r + 1) / rounds)`` (published) or linear.

    ``density`` in (0, 1], ``rounds`` an integer >= 1, ``kind`` ``"exponential"`` or ``"linear"``.

    Example:
        >>> density_schedule(0.01, 2)
        [0.1, 0.01]
    """
    density = check_density(density)
    rounds = check_rounds(rounds)
    check_schedule(kind)
    if kind == "exponential":
        return [density ** ((r + 1) / rounds) for r in range(rounds)]
    return [1.0 - (1.0 - density) * (r + 1) / rounds for r in range(rounds)]


def _keep_above(scores: Tensor, density: float) -> Tensor:
    # As published: k = int((1 - d) * n), threshold = k-th smallest score, keep scores strictly above it.
    k = pruned_count(scores.numel(), density)
    if k < 1:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores.flatten(), k).values
    return scores > threshold


def flatten_named(tensors: dict[str, Tensor]) -> Tensor:
    """The tensors of ``tensors`` as one flat tensor, in the dict's order (undone by ``split_like``).

    Example:
        >>> split_like(flatten_named(scores), scores)  # equal to scores
    """
    return torch.cat([t.flatten() for t in tensors.values()])


def split_like(flat: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """Views of ``flat`` shaped as the tensors of ``like``, in its order (the inverse of ``flatten_named``)."""
    out, start = {}, 0
    for n, t in like.items():
        out[n] = flat[start : start + t.numel()].view_as(t)
        start += t.numel()
    return out


def threshold_masks(
    scores: dict[str, Tensor],
    density: float,
    scope: str = "global",
    *,
    dense: Sequence[str] = (),
    layer_floor: float = 0.0,
    pruned: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Boolean masks keeping the top ``density`` of ``scores`` globally or per layer (on the scores' device).

    ``dense``: tensors kept whole, inside the same total budget (global: the others share
    ``density * total - kept dense``; local: the others keep ``density`` each). ``layer_floor``
    (global scope): every other tensor keeps at least ``ceil(layer_floor * density * size)`` of its
    positive-scored weights, its best ones, again inside the same total budget.

    The global threshold is the published one (the k-th smallest of all scores, ``k = int((1 - d) * n)``,
    scores strictly above it kept) found without concatenating all scores: extra memory is a few times
    the largest tensor, not the whole model's scores.

    ``pruned`` (bool masks by name, False = already pruned) ranks the pruned weights last whatever they
    score: with signed scores (GraSP) a pruned weight's 0 can rank above kept weights' negative scores.

    Example:
        >>> threshold_masks(scores, 0.01, dense=["fc.weight"], layer_floor=0.2)
    """
    density = check_density(density)
    check_scope(scope)
    if (
        isinstance(layer_floor, bool)
        or not isinstance(layer_floor, (int, float))
        or not 0 <= layer_floor <= 1
    ):
        raise ValueError(f"layer_floor must be in [0, 1] (a fraction of the density), got {layer_floor!r}")
    # Each tensor's effective scores are made when read and dropped after: no full-size copy of them all.
    views = {n: _view(s, None if pruned is None else pruned[n]) for n, s in scores.items()}
    if dense or layer_floor:
        return _threshold_with_constraints(scores, views, density, scope, dense, layer_floor)
    if scope == "local":
        return {n: _keep_above(view(), density) for n, view in views.items()}
    return _global_keep_above(scores, views, density)


def _view(scores: Tensor, kept: Tensor | None) -> Callable[[], Tensor]:
    if kept is None:
        return lambda: scores
    # A pruned weight scores 0; with signed scores (GraSP) 0 can rank above kept weights' negative scores
    # and the pruned weight would come back, so it ranks last.
    return lambda: scores.masked_fill(~kept.to(scores.device), float("-inf"))


def _global_keep_above(
    like: Mapping[str, Tensor], views: Mapping[str, Callable[[], Tensor]], density: float
) -> dict[str, Tensor]:
    # ``_keep_above`` of all scores as one vector (``like`` gives the shapes, dtypes and devices).
    n = sum(t.numel() for t in like.values())
    k = pruned_count(n, density)
    dtypes = {t.dtype for t in like.values()}
    devices = {t.device for t in like.values()}
    if len(dtypes) != 1 or len(devices) != 1 or next(iter(dtypes)) not in _BITS_AS_INT:
        # Mixed or non-float dtypes: the published concatenation (its type promotion included).
        flat = torch.cat([view().flatten() for view in views.values()])
        return split_like(_keep_above(flat, density), like)
    if k < 1:
        return {name: torch.ones_like(t, dtype=torch.bool) for name, t in like.items()}
    sizes = [t.numel() for t in like.values()]
    chunk = max(max(sizes), _CHUNK)
    parts = list(zip(sizes, views.values()))
    # Gathering at most half a chunk keeps the extra memory within that of a pass.
    threshold = _kth_smallest(
        lambda: _flat_chunks(parts, chunk), k, next(iter(dtypes)), next(iter(devices)), chunk // 2
    )
    return {name: view() > threshold for name, view in views.items()}


# The signed integer type of each float type's bit pattern, for ``_kth_smallest``.
_BITS_AS_INT = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
_DIGIT = 16  # key bits resolved per pass: 1 pass for 16-bit floats, 2 for float32, 4 for float64
_CHUNK = 1 << 20  # values per chunk at least (see ``_flat_chunks``): 4 MiB of float32 scores


def _flat_chunks(parts: Sequence[tuple[int, Callable[[], Tensor]]], limit: int) -> Iterator[Tensor]:
    # The values of the (size, tensor maker) parts, flat: a part of at least ``limit // 8`` values alone,
    # the smaller ones concatenated, at most ``limit`` values a chunk. A pass then costs a few operations
    # per chunk, not per tensor (on a small model many tiny operations cost more than the work, with
    # several threads on a busy CPU above all), and copies only the small tensors. The order of the values
    # is not kept: the k-th smallest does not depend on it.
    group, size = [], 0
    for numel, part in parts:
        if numel >= limit // 8:
            yield part().reshape(-1)
            continue
        if size + numel > limit:
            yield torch.cat(group)
            group, size = [], 0
        group.append(part().reshape(-1))
        size += numel
    if group:
        yield torch.cat(group) if len(group) > 1 else group[0]


def _order_keys(x: Tensor) -> Tensor:
    # ``x`` flat as signed integers in the order of its values (-0.0 just below +0.0; every NaN above
    # +inf, where ``torch.kthvalue`` ranks it). 16-bit keys are widened to int32 for the digit arithmetic.
    bits = torch.finfo(x.dtype).bits
    raw = x.reshape(-1).view(_BITS_AS_INT[x.dtype])
    if bits == 16:
        raw = raw.to(torch.int32)  # sign-extended: the same signed value
    # Read as a signed integer, a float's bit pattern orders the non-negative floats like their values and
    # the negative ones in reverse; flipping a negative float's magnitude bits puts those in order too.
    magnitude = (1 << (bits - 1)) - 1
    key = raw >> (bits - 1)  # -1 (all bits set) for a negative float, 0 otherwise
    key &= magnitude
    key ^= raw
    # A NaN with its sign bit set comes out below -inf: put it with the other NaNs, above +inf.
    neg_inf = torch.tensor(float("-inf"), dtype=x.dtype).view(_BITS_AS_INT[x.dtype]).item() ^ magnitude
    key.masked_fill_(key < neg_inf, magnitude)
    return key


def _kth_smallest(
    chunks: Callable[[], Iterable[Tensor]], k: int, dtype: torch.dtype, device: torch.device, gather: int
) -> Tensor:
    """The k-th smallest (1-based) of all values of the tensors ``chunks()`` yields, as ``torch.kthvalue``
    of their concatenation gives it, as a 0-dim tensor on ``device``; each pass calls ``chunks()`` and
    holds one chunk at a time.

    A radix select on the values' order keys: each pass histograms the next 16 bits of the keys that share
    the bits found so far (``bincount`` of 65536 bins, on the scores' device) and picks the bin holding
    the k-th. Once that bin holds at most ``gather`` keys, they are gathered and ``torch.kthvalue`` picks
    among them (float64 then needs 2 passes, not 4). Exact, ties included (equal values have equal keys);
    extra memory a few times the largest chunk or ``gather``. Every value is counted, so the k-th is the
    same value (``-0.0`` may come out for ``+0.0``, which compares equal).
    """
    bits = torch.finfo(dtype).bits
    lo = hi = None  # the range of keys known to hold the k-th smallest (None: all of them)
    for shift in range(bits - _DIGIT, -1, -_DIGIT):
        hist = torch.zeros(1 << _DIGIT, dtype=torch.int64, device=device)
        for chunk in chunks():
            if lo is None:
                digit = (_order_keys(chunk) >> shift) + (1 << (_DIGIT - 1))  # signed top bits, to 0..65535
            else:
                digit = (_keys_between(chunk, lo, hi) >> shift) & ((1 << _DIGIT) - 1)
            hist += torch.bincount(digit, minlength=1 << _DIGIT)
            del chunk, digit  # before the next chunk is made
        below = hist.cumsum(0)
        b = int(torch.searchsorted(below, k))  # the first bin whose cumulative count reaches k
        if b:
            k -= int(below[b - 1])
        lo = ((b - (1 << (_DIGIT - 1))) << shift) if lo is None else lo + (b << shift)
        hi = lo + (1 << shift) - 1
        if shift and int(hist[b]) <= gather:
            # k is now the rank inside the range [lo, hi]: the k-th smallest of the keys in it.
            inside = torch.cat([_keys_between(chunk, lo, hi) for chunk in chunks()])
            lo = int(torch.kthvalue(inside, k).values)
            break
    magnitude = (1 << (bits - 1)) - 1
    raw = lo ^ magnitude if lo < 0 else lo  # the inverse of ``_order_keys``
    return torch.tensor(raw, dtype=_BITS_AS_INT[dtype], device=device).view(dtype)


def _keys_between(x: Tensor, lo: int, hi: int) -> Tensor:
    key = _order_keys(x)
    return key[(key >= lo) & (key <= hi)]


def _threshold_with_constraints(
    scores: Mapping[str, Tensor],
    views: dict[str, Callable[[], Tensor]],
    density: float,
    scope: str,
    dense: Sequence[str],
    layer_floor: float,
) -> dict[str, Tensor]:
    unknown = [n for n in dense if n not in scores]
    if unknown:
        raise ValueError(f"dense names {unknown} are not scored tensors; scored: {sorted(scores)[:20]}")
    out = {n: torch.ones_like(scores[n], dtype=torch.bool) for n in dense}
    rest = {n: s for n, s in scores.items() if n not in out}
    if not rest:
        return out
    if scope == "local":
        out.update({n: _keep_above(views[n](), density) for n in rest})
        return {n: out[n] for n in scores}
    size = sum(s.numel() for s in rest.values())
    budget = dense_budget(scores, density, dense)
    rest_views = {n: views[n] for n in rest}
    if layer_floor:
        # Reserve each tensor's best positive-scored weights (pruned weights score 0 and stay pruned), by
        # giving them an infinite score, then threshold globally within the same budget. Only their
        # positions are kept; the infinite scores are written into each tensor's copy when it is read.
        for n, s in rest.items():
            view = views[n]
            effective = view()
            want = min(math.ceil(layer_floor * density * s.numel()), int((effective > 0).sum()))
            if want:
                top = torch.topk(effective.flatten(), want).indices
                rest_views[n] = _with_inf(view, top)
            del effective
    out.update(_global_keep_above(rest, rest_views, min(1.0, budget / size)))
    return {n: out[n] for n in scores}


def dense_budget(like: Mapping[str, Tensor], density: float, dense: Sequence[str]) -> float:
    """The weights left to the other tensors of ``like`` when ``dense`` are kept whole at ``density``.

    Raises a ``ValueError`` when none are left (``find_masks`` checks it before any scoring).

    Example:
        >>> dense_budget(scores, 0.05, ["fc.weight"])
    """
    total = sum(t.numel() for t in like.values())
    budget = density * total - sum(like[n].numel() for n in dense)
    if budget < 1:
        raise ValueError(
            f"density {density:g} keeps {density * total:.0f} weights, not more than the dense tensors "
            f"{list(dense)} hold: raise the density or keep fewer tensors dense (e.g. dense_head=False)"
        )
    return budget


def _with_inf(view: Callable[[], Tensor], positions: Tensor) -> Callable[[], Tensor]:
    def read() -> Tensor:
        s = view()
        return s.flatten().index_fill(0, positions, float("inf")).view_as(s)

    return read

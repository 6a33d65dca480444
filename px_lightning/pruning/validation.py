"""Argument checks shared by the pruning functions and the callback that fails early with the same words.

Each check returns the value (as the type the caller works with) or raises a ``ValueError`` (a value out
of range) or ``TypeError`` (a value of the wrong type) naming the argument, what is allowed and the value.
``bool`` is refused where a number is asked for: ``True`` is an ``int`` to Python, never a density.
"""

from __future__ import annotations

from numbers import Real

SCOPES = ("global", "local")
SCHEDULES = ("exponential", "linear")


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_density(value: object, argument: str = "density") -> float:
    """``value`` as a float in (0, 1]: the fraction of weights kept.

    Example:
        >>> check_density(0.1)
        0.1
    """
    if not _is_number(value):
        raise TypeError(f"{argument} must be a number in (0, 1] (the fraction kept), got {value!r}")
    if not 0 < value <= 1:
        raise ValueError(f"{argument} must be in (0, 1] (the fraction kept), got {value!r}")
    return float(value)


def check_sparsity(value: object) -> float:
    """``value`` as a float in [0, 1): the fraction of weights pruned.

    Example:
        >>> check_sparsity(0.9)
        0.9
    """
    if not _is_number(value):
        raise TypeError(f"sparsity must be a number in [0, 1) (the fraction pruned), got {value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction pruned), got {value!r}")
    return float(value)


def check_positive_int(value: object, argument: str) -> int:
    """``value`` as an ``int`` >= 1.

    Example:
        >>> check_positive_int(10, "num_batches")
        10
    """
    if not _is_int(value):
        raise TypeError(f"{argument} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{argument} must be an integer >= 1, got {value!r}")
    return value


def check_rounds(value: object, argument: str = "rounds", allow_none: bool = False) -> int | None:
    """``value`` as a round count >= 1 (or ``None`` where ``allow_none``: the method's default).

    Example:
        >>> check_rounds(None, allow_none=True) is None
        True
    """
    if value is None and allow_none:
        return None
    allowed = "an integer >= 1 or None" if allow_none else "an integer >= 1"
    if not _is_int(value):
        raise TypeError(f"{argument} must be {allowed}, got {value!r}")
    if value < 1:
        raise ValueError(f"{argument} must be {allowed}, got {value!r}")
    return value


def _check_choice(value: object, argument: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{argument} must be {' or '.join(map(repr, allowed))}, got {value!r}")
    return value


def check_scope(value: object) -> str:
    """``value`` as a thresholding scope: ``"global"`` (one threshold) or ``"local"`` (each layer).

    Example:
        >>> check_scope("local")
        'local'
    """
    return _check_choice(value, "scope", SCOPES)


def check_schedule(value: object) -> str:
    """``value`` as a density schedule: ``"exponential"`` (published) or ``"linear"``.

    Example:
        >>> check_schedule("linear")
        'linear'
    """
    return _check_choice(value, "schedule", SCHEDULES)

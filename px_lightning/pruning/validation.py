"""The argument checks of the pruning layer, one per kind of argument.

Each public function that reads an argument checks it with these (the lowest one that reads it), and the
Lightning callback's constructor calls the same checks so that a bad value fails when the callback is built.
Every check raises a ``TypeError`` for a value of the wrong type and a ``ValueError`` for one out of range,
each naming the argument, saying what is allowed and showing the value.

Example:
    >>> check_density(0.05)
    0.05
    >>> pruned_count(1000, 0.05)
    950
"""

from __future__ import annotations

import numbers

SCOPES = ("global", "local")
SCHEDULES = ("exponential", "linear")


def _is_real(value: object) -> bool:
    # bool is an int to Python, but True is no density and no round count.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_density(value: object, argument: str = "density") -> float:
    """``value`` as a float in (0, 1]: the fraction of weights kept.

    Example:
        >>> check_density(0.018)
        0.018
    """
    if not _is_real(value) or not 0 < value <= 1:
        raise (ValueError if _is_real(value) else TypeError)(f"{argument} must be in (0, 1], got {value!r}")
    return float(value)


def check_sparsity(value: object, argument: str = "sparsity") -> float:
    """``value`` as a float in [0, 1): the fraction of weights pruned.

    Example:
        >>> check_sparsity(0.98)
        0.98
    """
    if not _is_real(value) or not 0 <= value < 1:
        raise (ValueError if _is_real(value) else TypeError)(f"{argument} must be in [0, 1), got {value!r}")
    return float(value)


def check_positive_int(value: object, argument: str) -> int:
    """``value`` as an ``int`` >= 1 (``True`` is refused: it is no count).

    Example:
        >>> check_positive_int(10, "num_batches")
        10
    """
    if not _is_int(value) or value < 1:
        raise (ValueError if _is_int(value) else TypeError)(
            f"{argument} must be an integer >= 1, got {value!r}"
        )
    return int(value)


def check_rounds(value: object, argument: str = "rounds", allow_none: bool = False) -> int | None:
    """``value`` as a round count (an ``int`` >= 1), or ``None`` where ``allow_none`` (the method's default).

    Example:
        >>> check_rounds(100)
        100
    """
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 1:
        allowed = "an integer >= 1 or None (the method's default)" if allow_none else "an integer >= 1"
        raise (ValueError if _is_int(value) else TypeError)(f"{argument} must be {allowed}, got {value!r}")
    return int(value)


def check_scope(value: object, argument: str = "scope") -> str:
    """``value`` must be ``"global"`` (one threshold over all layers) or ``"local"`` (each layer alone).

    Example:
        >>> check_scope("global")
        'global'
    """
    return _check_choice(value, argument, SCOPES)


def check_schedule(value: object, argument: str = "schedule") -> str:
    """``value`` must be ``"exponential"`` (the published schedule) or ``"linear"``.

    Example:
        >>> check_schedule("exponential")
        'exponential'
    """
    return _check_choice(value, argument, SCHEDULES)


def _check_choice(value: object, argument: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
        raise ValueError(f"{argument} must be {allowed}, got {value!r}")
    return value


def pruned_count(n: int, density: float) -> int:
    """How many of ``n`` weights a density prunes: the published ``int((1 - density) * n)``.

    Example:
        >>> pruned_count(10, 0.25)
        7
    """
    return int((1.0 - density) * n)

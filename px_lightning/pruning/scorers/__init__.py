"""One file per scoring method; ``get_scorer`` resolves a method name or passes a scorer object through.

Example:
    >>> from px_lightning.pruning.scorers import PXScorer, get_scorer
    >>> scorer = get_scorer("px", kernel_norm="eval")  # the same as PXScorer(kernel_norm="eval")
"""

from __future__ import annotations

import difflib
import inspect

from ..errors import UnknownOptionError
from .base import Scorer
from .grasp import GraSPScorer
from .magnitude import MagnitudeScorer
from .ntksap import NTKSAPScorer
from .px import PXScorer
from .random import RandomScorer
from .snip import SNIPScorer
from .synflow import SynFlowScorer

SCORERS: dict[str, type[Scorer]] = {
    "grasp": GraSPScorer,
    "magnitude": MagnitudeScorer,
    "ntksap": NTKSAPScorer,
    "px": PXScorer,
    "random": RandomScorer,
    "snip": SNIPScorer,
    "synflow": SynFlowScorer,
}


def scorer_options(cls: type[Scorer]) -> list[str] | None:
    """The keyword options ``cls`` accepts (its ``__init__`` parameters); ``None`` when it takes ``**kwargs``."""
    if cls.__init__ is object.__init__:
        return []
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _check_options(method: str, cls: type[Scorer], options: dict) -> None:
    # Up front, with the method's accepted options listed: the scorer's own constructor would only say
    # "takes no arguments" or "unexpected keyword argument", with no list and no hint of a typo.
    accepted = scorer_options(cls)
    if accepted is None:
        return
    unknown = sorted(set(options) - set(accepted))
    if not unknown:
        return
    close = {u: difflib.get_close_matches(u, accepted, n=1) for u in unknown}
    hints = [f"{u!r} -> {c[0]!r}" for u, c in close.items() if c]
    raise UnknownOptionError(
        f"method {method!r} got unknown option{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
        + (f"its options are: {', '.join(accepted)}" if accepted else f"{method} takes no options")
        + (f" (did you mean {', '.join(hints)}?)" if hints else "")
        + ". compute_scores/find_masks pass every keyword argument they do not take themselves to the scorer"
    )


def get_scorer(method: str | Scorer, **options) -> Scorer:
    """A scorer instance for ``method`` (case-insensitive name, or a ``Scorer`` passed through).

    ``options`` are the method's own keyword arguments (its class's ``__init__`` parameters); an unknown
    option raises ``UnknownOptionError`` (a ``ValueError`` and a ``TypeError``) naming it and listing the accepted ones.

    Example:
        >>> scorer = get_scorer("random", seed=0)
    """
    if isinstance(method, Scorer):
        if options:
            raise ValueError(f"method options {sorted(options)} given with a scorer object; set them on it")
        return method
    if not isinstance(method, str) or method.lower() not in SCORERS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(sorted(SCORERS))}")
    cls = SCORERS[method.lower()]
    _check_options(method.lower(), cls, options)
    return cls(**options)


__all__ = ["SCORERS", "Scorer", "UnknownOptionError", "get_scorer", "scorer_options"]
# One class a method, named once: in SCORERS.
__all__ += [cls.__name__ for cls in SCORERS.values()]

"""One file per scoring method; ``get_scorer`` resolves a method name or passes a scorer object through."""

from __future__ import annotations

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


def get_scorer(method: str | Scorer, **options) -> Scorer:
    """A scorer instance for ``method`` (case-insensitive name, or a ``Scorer`` passed through)."""
    if isinstance(method, Scorer):
        if options:
            raise ValueError(f"method options {sorted(options)} given with a scorer object; set them on it")
        return method
    if not isinstance(method, str) or method.lower() not in SCORERS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(sorted(SCORERS))}")
    return SCORERS[method.lower()](**options)


__all__ = [
    "SCORERS",
    "GraSPScorer",
    "MagnitudeScorer",
    "NTKSAPScorer",
    "PXScorer",
    "RandomScorer",
    "SNIPScorer",
    "Scorer",
    "SynFlowScorer",
    "get_scorer",
]

"""Lightning callbacks: the pruning callback and diagnostics logging."""

from .foresight import ForesightPruningCallback

__all__ = ["ForesightPruningCallback"]

"""Lightning callbacks: the pruning callback and diagnostics logging."""

from .diagnostics import PruningDiagnosticsCallback
from .foresight import ForesightPruningCallback

__all__ = ["ForesightPruningCallback", "PruningDiagnosticsCallback"]

"""Lightning callbacks: the pruning callback (and ``restore_masks`` for its checkpoints), diagnostics logging."""

from .diagnostics import PruningDiagnosticsCallback
from .foresight import ForesightPruningCallback, restore_masks

__all__ = ["ForesightPruningCallback", "PruningDiagnosticsCallback", "restore_masks"]

"""Lightning callbacks: the pruning callback (and ``restore_masks`` for its checkpoints), diagnostics logging.

The modules: ``foresight`` (the pruning callback's lifecycle), ``diagnostics`` (TensorBoard diagnostics);
private helpers: ``_checkpoint`` (plain checkpoint keys, ``restore_masks``, dense resumes), ``_distributed``
(rank agreement through the strategy), ``_scoring_data`` (the fit's scoring batches and loss), ``_options``
(``method_options`` and the PX policy), ``_masked`` (a masked module's parts by tensor name).
"""

from ._checkpoint import restore_masks
from .diagnostics import PruningDiagnosticsCallback
from .foresight import ForesightPruningCallback

__all__ = ["ForesightPruningCallback", "PruningDiagnosticsCallback", "restore_masks"]

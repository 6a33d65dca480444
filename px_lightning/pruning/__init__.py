"""The algorithm layer: pure PyTorch, no Lightning. Works on any ``nn.Module``.

Read top-down: ``targets`` (which tensors are prunable), ``masks`` (the mask parametrization),
``scorers`` (one file per method), ``schedule`` (density schedules and thresholds), ``search``
(``compute_scores``, ``find_masks``), ``reports`` and ``connectivity`` (what the masks keep),
``validation`` and ``errors`` (the checks and exception types every layer shares).

Example:
    >>> masks = find_masks(model, "magnitude", batches, density=0.05)
    >>> apply_masks(model, masks)
    >>> sparsity_report(model)["density"]
"""

from .connectivity import effective_masks
from .errors import UnknownOptionError, ZeroScoresError
from .masks import WeightMask, apply_masks, get_masks, remove_masks
from .nm import NMMasks, nm_masks, parse_pattern, satisfies_nm, semi_structured_linears
from .reports import density_table, sparsity_report
from .savings import format_savings, savings_report
from .schedule import density_schedule, threshold_masks
from .scorers import (
    GraSPScorer,
    MagnitudeScorer,
    NTKSAPScorer,
    PXScorer,
    RandomScorer,
    Scorer,
    SNIPScorer,
    SynFlowScorer,
    get_scorer,
)
from .search import compute_scores, find_masks
from .sparse_io import load_sparse, save_sparse
from .targets import prunable_parameters

__all__ = [
    "GraSPScorer",
    "MagnitudeScorer",
    "NMMasks",
    "NTKSAPScorer",
    "PXScorer",
    "RandomScorer",
    "SNIPScorer",
    "Scorer",
    "SynFlowScorer",
    "UnknownOptionError",
    "WeightMask",
    "ZeroScoresError",
    "apply_masks",
    "compute_scores",
    "density_schedule",
    "density_table",
    "effective_masks",
    "find_masks",
    "format_savings",
    "get_masks",
    "get_scorer",
    "load_sparse",
    "nm_masks",
    "parse_pattern",
    "prunable_parameters",
    "remove_masks",
    "satisfies_nm",
    "save_sparse",
    "savings_report",
    "semi_structured_linears",
    "sparsity_report",
    "threshold_masks",
]

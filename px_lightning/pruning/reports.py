"""Human-readable reports of what pruning did to a model."""

from __future__ import annotations

from torch import nn

from .masks import get_masks, sparsity_report
from .targets import prunable_parameters


def density_table(model: nn.Module) -> str:
    """A per-layer density table of ``model``: kept / total weights of each prunable tensor.

    Reads the masks when the model carries them; on a model without masks (dense, or masks made
    permanent) it counts the non-zero entries of each prunable weight instead, so the table always
    says what the model really is. The callback prints it after pruning; ``px-lightning`` after ``test``.

    Example:
        >>> print(density_table(model))
    """
    if get_masks(model):
        report = sparsity_report(model)
        rows = [(n, r["kept"], r["total"]) for n, r in report["layers"].items()]
        source = "masks"
    else:
        rows = []
        for name, (module, attr) in prunable_parameters(model).items():
            weight = getattr(module, attr)
            rows.append((name, int((weight != 0).sum()), weight.numel()))
        source = "non-zero weights (no masks on the model)"
    width = max([len("layer")] + [len(n) for n, _, _ in rows])
    lines = [
        f"Per-layer density ({source})",
        f"{'layer':<{width}}  {'kept':>10}  {'total':>10}  {'density':>8}",
    ]
    for name, kept, total in rows:
        lines.append(f"{name:<{width}}  {kept:>10}  {total:>10}  {kept / total:>8.4f}")
    kept = sum(r[1] for r in rows)
    total = sum(r[2] for r in rows)
    lines.append(f"{'total':<{width}}  {kept:>10}  {total:>10}  {kept / max(total, 1):>8.4f}")
    return "\n".join(lines)

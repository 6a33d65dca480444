"""What a set of masks keeps: per-layer counts, the density table, and the warnings of a search.

Example:
    >>> report = sparsity_report(model)
    >>> report["density"], report["layers"]["conv1.weight"]["kept"]
    >>> print(density_table(model))
"""

from __future__ import annotations

import warnings

from torch import Tensor, nn

from .connectivity import effective_masks
from .masks import get_masks
from .targets import prunable_parameters
from .validation import pruned_count


def sparsity_report(model: nn.Module, example_input: Tensor | None = None) -> dict:
    """Per-layer and total kept/total counts of the masked tensors.

    Returns ``{"layers": {name: {"kept", "total", "density", "collapsed"}}, "kept", "total", "density"}``;
    a layer with no weight kept is flagged ``collapsed``. With ``example_input`` (a batch of the model's
    inputs, for its shape), each layer also gets ``"effective"``, its kept weights on an input-to-output
    path, and the report ``"effective"`` and ``"effective_density"`` (``effective_masks``).

    Example:
        >>> report = sparsity_report(model); report["density"]
        >>> sparsity_report(model, x)["effective_density"]
    """
    masks = get_masks(model)
    layers = {}
    for name, mask in masks.items():
        kept, total = int(mask.sum()), mask.numel()
        layers[name] = {"kept": kept, "total": total, "density": kept / total, "collapsed": kept == 0}
    kept = sum(v["kept"] for v in layers.values())
    total = sum(v["total"] for v in layers.values())
    report = {"layers": layers, "kept": kept, "total": total, "density": kept / total if total else 1.0}
    if example_input is not None:
        for name, effective in effective_masks(model, example_input).items():
            layers[name]["effective"] = int(effective.sum())
        report["effective"] = sum(v["effective"] for v in layers.values())
        report["effective_density"] = report["effective"] / total
    return report


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


def warn_collapsed(masks: dict[str, Tensor], method: str) -> list[str]:
    """Warn, naming them, about layers whose mask keeps nothing (layer collapse); return their names.

    Example:
        >>> warn_collapsed(find_masks(model, "snip", batches, density=0.001), "snip")
        ['layer3.1.conv2.weight']
    """
    collapsed = [n for n, m in masks.items() if not bool(m.any())]
    if collapsed:
        warnings.warn(
            f"{method} pruned these layers entirely (layer collapse): {', '.join(collapsed)}", stacklevel=3
        )
    return collapsed


def warn_short(
    masks: dict[str, Tensor], density: float, scope: str, method: str, start_kept: dict[str, int]
) -> None:
    """Warn when ``masks`` keep over 1% fewer weights than ``density`` asks of the masks it started from.

    Scores tied at the threshold are pruned together (as published: kept = strictly above the k-th
    smallest), so a scorer that gives many weights the same score (zeros on dead paths, magnitude on
    quantised weights) keeps fewer than asked. A tensor already below the density when pruning started
    cannot give more than it kept.

    Example:
        >>> warn_short(masks, 0.05, "global", "magnitude", {n: m.numel() for n, m in masks.items()})
    """

    def asked_of(n: int) -> int:
        return n - pruned_count(n, density)

    if scope == "local":
        asked = sum(min(start_kept[n], asked_of(m.numel())) for n, m in masks.items())
    else:
        asked = min(sum(start_kept.values()), asked_of(sum(m.numel() for m in masks.values())))
    kept = sum(int(m.sum()) for m in masks.values())
    if asked - kept > max(1, 0.01 * asked):
        warnings.warn(
            f"{method} kept {kept} weights where density {density:g} asks for {asked}: {asked - kept} "
            "scores tied at the threshold were pruned together (many equal scores, e.g. zeros on dead "
            "paths); the density is a ceiling here",
            stacklevel=3,
        )

"""Which tensors of a model are prunable.

By default: the ``.weight`` of every ``nn.Conv1d/2d/3d`` and ``nn.Linear``. Names are those of
``model.named_parameters()`` on the plain model (``"layer1.0.conv1.weight"``); on a model that already
carries masks the ``.parametrizations.weight.original`` part is folded back to ``.weight``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    # A pattern matches the full name (glob) or any dotted prefix of it, so "fc" selects "fc.weight".
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p.rstrip(".") + ".") for p in patterns)


def prunable_parameters(
    model: nn.Module, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> dict[str, tuple[nn.Module, str]]:
    """Map each prunable tensor's plain name to ``(module, attribute)``.

    ``include``: glob patterns or module-name prefixes; when given, only matching tensors of the
    prunable layer types are kept. ``exclude``: patterns removed afterwards. Each ``include`` pattern
    must match something, else ``ValueError`` names it.

    Example:
        >>> targets = prunable_parameters(model, exclude=["fc"])
    """
    found: dict[str, tuple[nn.Module, str]] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            name = f"{module_name}.weight" if module_name else "weight"
            found[name] = (module, "weight")
    if include:
        for pattern in include:
            if not any(_matches(n, [pattern]) for n in found):
                raise ValueError(
                    f"include pattern {pattern!r} matches no prunable tensor; prunable tensors are: "
                    f"{sorted(found)[:20]}{' ...' if len(found) > 20 else ''}"
                )
        found = {n: v for n, v in found.items() if _matches(n, include)}
    if exclude:
        found = {n: v for n, v in found.items() if not _matches(n, exclude)}
    if not found:
        raise ValueError(
            f"model {type(model).__name__} has no prunable tensor (the .weight of a Conv1d/2d/3d or Linear) "
            "after include/exclude; check the model or the include/exclude arguments"
        )
    return found

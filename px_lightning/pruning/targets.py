"""Which tensors of a model are prunable.

By default: every weight matrix of a linear map: the ``.weight`` of every ``nn.Conv1d/2d/3d`` and
``nn.Linear``, and ``nn.MultiheadAttention``'s input projections (its packed ``in_proj_weight``, or
``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight`` when keys and values have their own sizes; its
``out_proj`` is an ``nn.Linear``). Names are those of
``model.named_parameters()`` on the plain model (``"layer1.0.conv1.weight"``); on a model that already
carries masks the ``.parametrizations.weight.original`` part is folded back to ``.weight``.

Pattern semantics of ``include`` / ``exclude``: a pattern selects a tensor when it matches the tensor's
full name as a glob (``fnmatch``, case-sensitive: ``"layer1.*"``, ``"*.conv1.weight"``) or when it is a
dotted module prefix of it (``"fc"`` selects ``"fc.weight"``, ``"layer1"`` every tensor under ``layer1``).
Names are anchored at the root of the model given: inside a LightningModule that holds the network as
``self.model`` the classifier is ``"model.fc"``, not ``"fc"``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from torch import nn

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# nn.MultiheadAttention's input projections, packed or separate (the ones that are not None are held).
ATTENTION_PROJECTIONS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def weight_attributes(module: nn.Module) -> tuple[str, ...]:
    """The attributes of ``module`` holding the weight matrices of its own linear maps (not its children's):
    ``("weight",)`` for a convolution or linear layer, the input projections of an ``nn.MultiheadAttention``,
    ``()`` for any other module.

    Example:
        >>> weight_attributes(nn.MultiheadAttention(32, 4))
        ('in_proj_weight',)
    """
    if isinstance(module, PRUNABLE_TYPES):
        return ("weight",)
    if isinstance(module, nn.MultiheadAttention):
        return tuple(a for a in ATTENTION_PROJECTIONS if getattr(module, a, None) is not None)
    return ()


def linear_maps(model: nn.Module) -> list[tuple[str, str, str | None]]:
    """``(layer name, weight name, bias name or None)`` of every weight matrix of ``model``'s linear maps,
    in module order, prunable or not (``weight_attributes``); a packed bias shared by several matrices
    (``nn.MultiheadAttention``'s ``in_proj_bias`` with separate projections) is named once, with the first.

    Example:
        >>> linear_maps(nn.Sequential(nn.Linear(4, 3, bias=False)))
        [('0', '0.weight', None)]
    """
    out = []
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        bias = "in_proj_bias" if isinstance(module, nn.MultiheadAttention) else "bias"
        for i, attr in enumerate(weight_attributes(module)):
            has_bias = i == 0 and getattr(module, bias, None) is not None  # a shared bias: with the first
            out.append((module_name, prefix + attr, prefix + bias if has_bias else None))
    return out


def _matches(name: str, patterns: Sequence[str]) -> bool:
    # A pattern matches the full name (glob) or any dotted prefix of it, so "fc" selects "fc.weight".
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p.rstrip(".") + ".") for p in patterns)


def as_patterns(patterns: str | Iterable[str] | None, argument: str) -> list[str]:
    """``patterns`` as a list of name patterns: ``None`` is none, a ``str`` is one pattern (iterating it
    would give one pattern per character); anything else must be an iterable of non-empty ``str``.

    Example:
        >>> as_patterns("layer1", "include")
        ['layer1']
    """
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    if isinstance(patterns, (bytes, dict)) or not isinstance(patterns, Iterable):
        raise TypeError(
            f"{argument} must be a list of name patterns (or one pattern as a str), "
            f"got {type(patterns).__name__}"
        )
    patterns = list(patterns)
    bad = [p for p in patterns if not isinstance(p, str) or not p]
    if bad:
        raise TypeError(f"{argument} must hold non-empty str name patterns, got {bad[0]!r}")
    return patterns


def _prefixed_hint(pattern: str, names: Iterable[str]) -> str:
    # The pattern matches nothing from the root but would below some module (a LightningModule's
    # "model." prefix, say): suggest the anchored patterns, so that a wrong name is not silently kept.
    suggestions: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        for k in range(1, len(parts)):
            if _matches(".".join(parts[k:]), [pattern]):
                suggestions.setdefault(".".join(parts[:k]) + "." + pattern.rstrip("."), []).append(name)
                break
    if not suggestions:
        return ""
    shown = sorted(suggestions)[:5]
    listed = "; ".join(f"{s!r} (matches {', '.join(suggestions[s][:3])})" for s in shown)
    return f"; names are full names from the model's root: did you mean {listed}?"


def _check_matches(argument: str, patterns: list[str], names: list[str]) -> None:
    for pattern in patterns:
        if not any(_matches(n, [pattern]) for n in names):
            hint = _prefixed_hint(pattern, names)
            listing = (
                "" if hint else f"; prunable tensors are: {sorted(names)[:20]}{' ...' * (len(names) > 20)}"
            )
            raise ValueError(f"{argument} pattern {pattern!r} matches no prunable tensor{hint}{listing}")


def prunable_parameters(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, tuple[nn.Module, str]]:
    """Map each prunable tensor's plain name to ``(module, attribute)``.

    ``include``: glob patterns or module-name prefixes (see the module docstring); when given, only
    matching tensors of the prunable layer types are kept. ``exclude``: patterns removed afterwards.
    Either may be a list of patterns or a single pattern as a ``str``. Every pattern, of ``include`` and
    of ``exclude``, must match some prunable tensor of the model, else a ``ValueError`` names it (and,
    when the pattern matches below some module, e.g. ``"fc"`` for ``"model.fc.weight"``, the full names
    it probably means): a mistyped ``exclude`` would otherwise prune the layer it meant to protect.

    Example:
        >>> targets = prunable_parameters(model, exclude=["fc"])
        >>> targets = prunable_parameters(model, include="layer1")  # one pattern as a str
    """
    include, exclude = as_patterns(include, "include"), as_patterns(exclude, "exclude")
    found: dict[str, tuple[nn.Module, str]] = {}
    for module_name, module in model.named_modules():
        for attr in weight_attributes(module):
            found[f"{module_name}.{attr}" if module_name else attr] = (module, attr)
    names = list(found)
    # exclude is checked against every prunable tensor, not only the included ones: a pattern that names
    # a real tensor is no typo, even where include already left that tensor out.
    _check_matches("include", include, names)
    _check_matches("exclude", exclude, names)
    if include:
        found = {n: v for n, v in found.items() if _matches(n, include)}
    if exclude:
        found = {n: v for n, v in found.items() if not _matches(n, exclude)}
    if not found:
        raise ValueError(
            f"model {type(model).__name__} has no prunable tensor (the .weight of a Conv1d/2d/3d or Linear, "
            "the input projections of a MultiheadAttention) "
            "after include/exclude; check the model or the include/exclude arguments"
        )
    return found

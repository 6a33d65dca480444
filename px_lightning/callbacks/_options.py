"""The callback's scoring options: ``method_options`` flat or keyed by method.

The callback adds no options of its own: ``ForesightPruningCallback(method="px")`` runs the scorer that
``find_masks(model, "px")`` runs, with the same defaults.
"""

from __future__ import annotations

from typing import Any

from ..pruning.scorers import SCORERS, Scorer


def options_for(method: str | Scorer, options: dict[str, Any]) -> dict[str, Any]:
    """The options of ``method`` from ``method_options``, flat (``{head: body}``) or per method.

    The per-method form (``{px: {head: body}, snip: {}}``: every key a method name) lets a config state
    PX's options and still switch ``method`` with one override: the options of the other methods are not
    passed to the chosen one.

    Example:
        >>> options_for("snip", {"px": {"head": "body"}, "snip": {}})
        {}
    """
    per_method = [k for k in options if isinstance(k, str) and k.lower() in SCORERS]
    if not options or not per_method:
        return dict(options)
    if len(per_method) != len(options):
        flat = [k for k in options if k not in per_method]
        raise ValueError(
            f"method_options mixes per-method keys ({', '.join(map(str, per_method))}) with options "
            f"({', '.join(map(str, flat))}): use one form, either {{option: value}} or {{method: {{option: value}}}}"
        )
    for key, value in options.items():
        if value is not None and not isinstance(value, dict):
            raise ValueError(
                f"method_options[{key!r}] must be a mapping of {key}'s options (method_options keyed by method "
                f"name), got {value!r}"
            )
    name = method.lower() if isinstance(method, str) else getattr(method, "name", "")
    chosen = {k.lower(): v for k, v in options.items()}.get(name)
    return dict(chosen or {})

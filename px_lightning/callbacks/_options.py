"""The callback's scoring options: ``method_options`` in either form, and PX's callback policy.

The PX policy (``PX_CALLBACK_DEFAULTS`` and the fit-start ``bn_warmup`` rule) sits in ``callback_options``
and ``decide_bn_warmup`` alone, so that one PX everywhere (issue 13) replaces it here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..pruning.scorers import SCORERS, Scorer

#: PX options the callback uses unless ``method_options`` sets them. The published scoring (``head="published"``,
#: no BatchNorm warm-up, no floor) collapses layers at low density; together these three were the best PX
#: of the quality benchmark (benchmarks/README.md, "Quality": the floor never binds on the plain CNN and
#: keeps the ResNet's last branch alive). ``compute_scores``/``find_masks`` keep the published defaults.
#: ``bn_warmup`` is a default only for a network at initialisation: when ``method_options`` does not set it,
#: the callback turns it off at fit start if any BatchNorm layer holds statistics other than the initial
#: ones (a pre-trained backbone, a trained checkpoint), so PX scores with those statistics.
PX_CALLBACK_DEFAULTS: dict[str, Any] = {"head": "body", "bn_warmup": True, "layer_floor": 0.2}


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


def callback_options(method: str | Scorer, options: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The options the callback builds ``method``'s scorer with, and whether ``bn_warmup`` is left open.

    For ``method="px"``: ``PX_CALLBACK_DEFAULTS`` under the user's ``options`` (the user's win); a
    ``bn_warmup`` the user does not set is decided at fit start by ``decide_bn_warmup``. Other methods
    and scorer objects: the options as given.

    Example:
        >>> callback_options("px", {"layer_floor": 0.1})
        ({'head': 'body', 'bn_warmup': True, 'layer_floor': 0.1}, True)
    """
    if not (isinstance(method, str) and method.lower() == "px"):
        return dict(options), False
    return {**PX_CALLBACK_DEFAULTS, **options}, "bn_warmup" not in options


def decide_bn_warmup(initial_statistics: bool | None) -> bool:
    """PX's ``bn_warmup`` when left open: on only if every BatchNorm has its initial statistics.

    Warming BatchNorm up replaces the running statistics of the scoring copies with the scoring data's;
    on a network at initialisation (all 0/1) that is the measured improvement, but trained statistics
    (a pre-trained backbone, a dense checkpoint) are what PX should score with. ``initial_statistics``
    is ``initial_bn_statistics`` of the module (``None``: no BatchNorm layer, so no warm-up).

    Example:
        >>> decide_bn_warmup(initial_bn_statistics(module))
    """
    return initial_statistics is True


def initial_bn_statistics(module: nn.Module) -> bool | None:
    """Whether every BatchNorm layer still has its initial running statistics (None: no such layer).

    Initial: no batch tracked, running mean exactly 0 and variance exactly 1. A pre-trained file often
    carries ``num_batches_tracked == 0`` with trained statistics, hence the value check.

    Example:
        >>> initial_bn_statistics(torchvision.models.resnet18())
        True
    """
    found = False
    for m in module.modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.running_mean is None:
            continue
        found = True
        tracked = m.num_batches_tracked
        if tracked is not None and int(tracked) != 0:
            return False
        if not (bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all())):
            return False
    return True if found else None

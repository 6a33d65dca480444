"""The scorers' functional copies of a network: a de-parametrized copy, activation gates, BatchNorm modes.

Imported by the scorers, ``connectivity.py`` and ``px_lightning.diagnostics``; imports nothing else of
``pruning`` (so no import circle can go through it).

Example:
    >>> net = plain_copy(model)  # masked weights at their effective values, no parametrizations
    >>> set_modes(net, norm_train=True)  # BatchNorm on batch statistics, dropout off
    >>> with ActivationGates("identity"):
    ...     out = net(x)  # every activation is the identity
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

# The activations ActivationGates recognises. Saturating ones too, as DESIGN.md states (a
# squeeze-excitation gate becomes linear in the kernel path, like every other activation).
ACTIVATIONS = frozenset(
    {
        F.relu,
        F.relu_,
        torch.relu,
        torch.relu_,
        Tensor.relu,
        Tensor.relu_,
        F.relu6,
        F.leaky_relu,
        F.elu,
        F.selu,
        F.celu,
        F.gelu,
        F.silu,
        F.mish,
        F.hardswish,
        F.hardtanh,
        F.softplus,
        torch.tanh,
        torch.tanh_,
        F.tanh,
        Tensor.tanh,
        Tensor.tanh_,
        torch.sigmoid,
        torch.sigmoid_,
        F.sigmoid,
        Tensor.sigmoid,
        Tensor.sigmoid_,
        F.hardsigmoid,
        F.logsigmoid,
        F.softsign,
    }
)
_INPLACE = {F.relu_, torch.relu_, Tensor.relu_, torch.tanh_, Tensor.tanh_, torch.sigmoid_, Tensor.sigmoid_}


def _is_inplace(func, args, kwargs) -> bool:
    return func in _INPLACE or bool(kwargs.get("inplace")) or any(a is True for a in args[1:])


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without parametrizations, each tensor at its effective (masked) value.

    ``remove_parametrizations`` on a deep copy fails (the copy shares the parametrized class with the
    original), so the copy is de-parametrized by hand: its class set back to the original one and each
    parametrized tensor registered as a plain Parameter.

    Example:
        >>> net = plain_copy(model).eval()
    """
    net = copy.deepcopy(model)
    for module in net.modules():
        if not parametrize.is_parametrized(module):
            continue
        values = {attr: getattr(module, attr).detach().clone() for attr in module.parametrizations}
        # The tensor is trainable if its original is; a multi-input parametrization (weight_norm) holds
        # original0, original1, ... instead of original.
        requires = {
            attr: any(t.requires_grad for t in module.parametrizations[attr].parameters(recurse=False))
            for attr in values
        }
        module.__class__ = type(module).__bases__[0]
        del module._modules["parametrizations"]
        for attr, value in values.items():
            module._parameters[attr] = nn.Parameter(value, requires_grad=requires[attr])
    return net


_SCALED_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def scoring_copy(model: nn.Module) -> nn.Module:
    """``plain_copy`` for a scorer: a normalisation layer whose scale is zero in every entry (zero by
    construction: the last BatchNorm of each residual branch under torchvision's ``zero_init_residual`` and
    timm's default ``zero_init_last``) is read at 1, as ``zero_init`` reads a zero-initialised weight. At
    zero every path through the branch has weight 0, so every scorer would find nothing there and prune the
    branch whole, whatever the data.

    Example:
        >>> net = scoring_copy(model).eval()
    """
    net = plain_copy(model)
    with torch.no_grad():
        for module in net.modules():
            weight = getattr(module, "weight", None)
            scaled = isinstance(module, _SCALED_NORMS) and isinstance(weight, Tensor) and weight.numel() > 0
            if scaled and not bool(weight.any()):
                weight.fill_(1.0)
    return net


class ActivationGates(TorchFunctionMode):
    """Inside the ``with`` block every activation function (``ACTIVATIONS``) is intercepted.

    ``action="record"``: runs as usual and appends its gate ``input > 0`` to ``gates`` (a new list when
    ``gates`` is None). ``"replay"``: is replaced by multiplication with the gate recorded at the same call
    (each gate is used once and freed). ``"identity"``: returns its input. ``"relu"``: is replaced by its
    gate applied at once, ``input * (input > 0)``: every activation read as a ReLU. The functions in
    ``exclude`` run as usual (PX hands squeeze-excitation gates to ``factors.FrozenFactors``).

    Example:
        >>> with ActivationGates("record") as recorder:
        ...     net(x)
        >>> with ActivationGates("replay", recorder.gates):
        ...     z = net(x**2)
    """

    def __init__(
        self, action: str, gates: list[Tensor] | None = None, exclude: frozenset = frozenset()
    ) -> None:
        if action not in ("record", "replay", "identity", "relu"):
            raise ValueError(f"action must be 'record', 'replay', 'identity' or 'relu', got {action!r}")
        super().__init__()
        self.action, self.gates, self.index = action, ([] if gates is None else gates), 0
        self.exclude = exclude

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in ACTIVATIONS or func in self.exclude:
            return func(*args, **kwargs)
        x = args[0]
        if self.action == "record":
            self.gates.append(x > 0)
            return func(*args, **kwargs)
        if self.action == "identity":
            return x
        if self.action == "relu":
            # The value x * (x > 0), computed by the ReLU kernel: one pass, no boolean temporary.
            return torch.relu_(x) if _is_inplace(func, args, kwargs) else torch.relu(x)
        if self.index >= len(self.gates):
            raise RuntimeError("the replaying pass called more activations than the recording pass")
        gate = self.gates[self.index]
        self.gates[self.index] = None  # used once: free it now rather than after the whole pass
        self.index += 1
        return x.mul_(gate) if _is_inplace(func, args, kwargs) else x * gate


# Stochastic depth: torchvision's ``StochasticDepth`` and timm's ``DropPath``/``DropBlock2d``, matched by
# class name so that the pruning layer need not import timm. Each drops whole residual branches at random
# in ``train()`` mode, as dropout drops units.
STOCHASTIC_LAYER_NAMES = frozenset({"StochasticDepth", "DropPath", "DropBlock2d"})


def without_randomness(net: nn.Module) -> nn.Module:
    """``net`` with every dropout and stochastic-depth layer in ``eval()`` mode, the rest as it is; returns
    ``net``. Scores are then a function of the weights and the data alone (a ``train()``-mode copy of a
    ConvNeXt, an EfficientNet or a Swin would otherwise drop random residual branches).

    Example:
        >>> net = without_randomness(plain_copy(model).train())
    """
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ in STOCHASTIC_LAYER_NAMES:
            m.eval()
    return net


def set_modes(net: nn.Module, norm_train: bool) -> nn.Module:
    """``net``'s normalisation layers in ``train(norm_train)``, every other module in ``eval()`` mode, and
    dropout and stochastic depth off (scores are deterministic). Returns ``net``.

    Only normalisation layers change with a scorer's copy: every other module computes as in ``eval()``, so
    that all copies of one scorer run the same graph (GoogLeNet's and Inception-v3's auxiliary heads run in
    ``train()`` mode only, and PX replays its activation pass's gates call by call).

    Example:
        >>> set_modes(net, norm_train=False)  # BatchNorm on running statistics
    """
    net.eval()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            m.train(norm_train)
    return without_randomness(net)


def has_batchnorm(net: nn.Module) -> bool:
    """Whether ``net`` holds a BatchNorm layer.

    Example:
        >>> has_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
        True
    """
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def norms_with_statistics(net: nn.Module, option: str, remedy: str = "") -> list[tuple[str, nn.Module]]:
    """The ``(name, layer)`` BatchNorm layers of ``net``, for an ``option`` (named in the error) that needs
    their running statistics; ``remedy`` ends the error message when one lacks them.

    Example:
        >>> norms_with_statistics(net, "kernel_bn='squared'", "; use kernel_bn='affine' for this model")
    """
    norms = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for name, m in norms:
        if m.running_var is None:
            raise ValueError(
                f"{option} needs BatchNorm running statistics, but {name!r} has "
                f"track_running_stats=False{remedy}"
            )
    return norms


def identity_norms(net: nn.Module, option: str, remedy: str = "") -> dict[str, Tensor]:
    """Parameters and buffers that make each eval-mode BatchNorm of ``net`` pass ``x`` unchanged
    (``option`` and ``remedy`` as in ``norms_with_statistics``).

    Example:
        >>> net.load_state_dict(identity_norms(net, "effective_masks"), strict=False)
    """
    out = {}
    for name, m in norms_with_statistics(net, option, remedy):
        out[f"{name}.running_mean"] = torch.zeros_like(m.running_mean)
        out[f"{name}.running_var"] = torch.full_like(m.running_var, 1 - m.eps)  # 1 / sqrt(var + eps) = 1
        if m.affine:
            out[f"{name}.weight"] = torch.ones_like(m.weight)
            out[f"{name}.bias"] = torch.zeros_like(m.bias)
    return out


__all__ = [
    "ACTIVATIONS",
    "ActivationGates",
    "has_batchnorm",
    "identity_norms",
    "norms_with_statistics",
    "plain_copy",
    "scoring_copy",
    "set_modes",
    "without_randomness",
]

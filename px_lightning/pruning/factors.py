"""Input-dependent factors of a network, frozen at their values in PX's activation pass.

PX scores paths: its data path and kernel copy are meant to be *linear path networks*, in which every
output is a sum over input-output paths of products of weights. Convolution, BatchNorm in ``eval()`` mode
and ReLU gates fit that view; three kinds of layer of modern networks multiply a signal by a factor that
is itself computed from the input, and do not:

- gates ``x * s(x)`` (squeeze-excitation in MobileNetV3, EfficientNet, RegNet-Y): the output of every
  ``sigmoid`` / ``hardsigmoid`` (``GATES``);
- attention probabilities ``softmax(q k^T / sqrt(d))`` (``nn.MultiheadAttention``,
  ``F.scaled_dot_product_attention``, timm's and torchvision's explicit ``softmax``);
- statistics of normalisation layers without running statistics (``LayerNorm``, timm's ``LayerNorm2d``,
  ``GroupNorm``, ``InstanceNorm`` on input statistics): each sample's mean and ``1 / std``.

``FrozenFactors("record")`` runs them as usual and keeps each factor; ``FrozenFactors("replay", factors)``
replaces each one, call by call, by the kept value: a gate becomes a constant per-channel scale, attention
a constant mixing of the values, a normalisation layer an affine map with fixed statistics (what
``eval()``-mode BatchNorm is). The copies stay linear in their weights' paths, whatever their input
(squared inputs, all-ones). ``sample_means`` turns recorded factors into one sample's (for the 2025
kernel copy, which runs on one all-ones sample); ``norms=False`` leaves normalisation layers to their own
statistics (the cvpr2024 variant normalises every copy on its own input, as its BatchNorm does), and
``gates=False`` leaves gates to ``copies.ActivationGates`` (cvpr2024 reads every activation, gates too,
as a ReLU in its data path and as the identity in its kernel copy, as published for ReLU networks).
``nn.MultiheadAttention`` ends in one fused call that hides its probabilities: it is written out
(``attention.written_out``) so that they are frozen too, except for the calls it cannot restate (learned
``bias_k`` / ``bias_v``, ``add_zero_attn``, static keys or values), which run as they are.

Replaying also gives train-mode BatchNorm on one value per channel (a squeeze-excitation layer of a
kernel copy that runs on a single all-ones sample) its limit, the layer's shift, where PyTorch refuses it.

Example:
    >>> with FrozenFactors("record") as recorder:
    ...     net(x)
    >>> with FrozenFactors("replay", recorder.factors):
    ...     z = net(x**2)  # gates, attention and LayerNorm statistics as they were on x
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from . import attention

# The gate functions of squeeze-excitation layers. They are not read as activations (ReLU gates) by PX.
GATES = frozenset({torch.sigmoid, torch.sigmoid_, F.sigmoid, Tensor.sigmoid, Tensor.sigmoid_, F.hardsigmoid})
_SOFTMAX = frozenset({F.softmax, torch.softmax, Tensor.softmax})
_NORMS = frozenset({F.layer_norm, F.group_norm, F.instance_norm})


def _attention_probabilities(
    q: Tensor, k: Tensor, v: Tensor, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_
) -> Tensor:
    """``F.scaled_dot_product_attention``'s probabilities (its arguments; dropout off), written out."""
    if k.shape[-3] != q.shape[-3]:  # grouped-query attention: each key head serves several query heads
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    logits = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        logits = (
            logits.masked_fill(~attn_mask, float("-inf"))
            if attn_mask.dtype == torch.bool
            else logits + attn_mask
        )
    return logits.softmax(-1)


def _norm_statistics(func, args, kwargs) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Per-sample ``(mean, 1 / std)`` of a normalisation call, shaped to broadcast against its input
    (GroupNorm: per group, as ``(N, G, 1)``), and the shape its input is viewed as."""
    x = args[0]
    if func is F.layer_norm:
        shape, eps = args[1] if len(args) > 1 else kwargs["normalized_shape"], kwargs.get("eps", 1e-5)
        eps = args[4] if len(args) > 4 else eps
        dims, view = tuple(range(x.dim() - len(shape), x.dim())), tuple(x.shape)
    elif func is F.group_norm:
        groups = args[1] if len(args) > 1 else kwargs["num_groups"]
        eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
        view, dims = (x.shape[0], groups, -1), (2,)
        x = x.reshape(view)
    else:  # instance_norm: per sample and channel, over the spatial dimensions
        eps = args[7] if len(args) > 7 else kwargs.get("eps", 1e-5)
        dims, view = tuple(range(2, x.dim())), tuple(x.shape)
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    return mean, (var + eps).rsqrt(), view


def _affine(func, args, kwargs, x: Tensor) -> Tensor:
    """The normalisation layer's affine parameters applied to the normalised ``x``."""
    if func is F.layer_norm:
        weight = args[2] if len(args) > 2 else kwargs.get("weight")
        bias = args[3] if len(args) > 3 else kwargs.get("bias")
        shape = (1,) * (x.dim() - (weight.dim() if weight is not None else 0))
    else:  # group_norm (weight at 2, bias at 3), instance_norm (weight at 3, bias at 4): per channel
        at = 2 if func is F.group_norm else 3
        weight = args[at] if len(args) > at else kwargs.get("weight")
        bias = args[at + 1] if len(args) > at + 1 else kwargs.get("bias")
        shape = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        x = x * (weight if func is F.layer_norm else weight.reshape(shape))
    if bias is not None:
        x = x + (bias if func is F.layer_norm else bias.reshape(shape))
    return x


def _batch_sum(value: Tensor, samples: int) -> Tensor:
    """The sum over ``samples`` of a factor whose leading dimension is ``samples`` times the per-sample
    count (windows of a Swin block folded into the batch), keeping one sample. A factor whose leading
    dimension is not a multiple of ``samples`` is computed from no input (Swin V2's ``16 * sigmoid`` of its
    position-bias table): the same for every sample, so its sum is ``samples`` times it. (Such a factor
    whose leading dimension happens to be a multiple of ``samples`` is averaged over that dimension.)"""
    if value.dim() == 0 or value.shape[0] % samples:
        return value * samples
    return value.reshape(samples, -1, *value.shape[1:]).sum(0)


class FrozenFactors(TorchFunctionMode):
    """Inside the ``with`` block the input-dependent factors (module docstring) are recorded or replayed.

    ``action``: ``"record"`` (run as usual, append each factor to ``factors``) or ``"replay"`` (use the
    recorded factors in call order). ``norms`` / ``gates``: include normalisation statistics / gates
    (otherwise those run as usual).

    Example:
        >>> with FrozenFactors("record") as recorder:
        ...     net(x)
        >>> with FrozenFactors("replay", sample_means(recorder.factors, len(x))):
        ...     z2 = net(torch.ones(1, *x.shape[1:]))
    """

    def __init__(
        self, action: str, factors: list[Tensor | tuple] | None = None, norms: bool = True, gates: bool = True
    ) -> None:
        if action not in ("record", "replay"):
            raise ValueError(f"action must be 'record' or 'replay', got {action!r}")
        super().__init__()
        self.action, self.norms, self.gates = action, norms, gates
        self.factors: list = [] if factors is None else factors
        self.index = 0
        # Every torch call of the pass comes through __torch_function__: the functions it acts on are
        # tested first, in one set lookup, and every other call goes straight through.
        self._watched = (
            {F.multi_head_attention_forward, F.scaled_dot_product_attention, *_SOFTMAX}
            | (GATES if gates else set())
            | (_NORMS if norms else set())
            | ({F.batch_norm} if action == "replay" else set())
        )

    def _next(self) -> Tensor | tuple:
        if self.index >= len(self.factors):
            raise RuntimeError(
                "the replaying pass computed more input-dependent factors than the recording pass"
            )
        value = self.factors[self.index]
        self.index += 1
        return value

    def _attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Attention inside a written-out ``nn.MultiheadAttention``, its probabilities recorded or replayed."""
        return self.__torch_function__(F.scaled_dot_product_attention, (), (q, k, v), {"attn_mask": mask})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self._watched:
            return func(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            arguments = attention.bind(args, kwargs)
            if attention.restatable(arguments):
                return attention.written_out(arguments, self._attention)
            return func(*args, **kwargs)
        if func is F.batch_norm and self.action == "replay":
            x = args[0]
            training = args[5] if len(args) > 5 else kwargs.get("training", False)
            if training and x.numel() == x.shape[1]:  # one value per channel: (x - mean) = 0, the shift
                bias = args[4] if len(args) > 4 else kwargs.get("bias")
                zero = torch.zeros_like(x)
                return zero if bias is None else zero + bias.reshape(1, -1, *(1,) * (x.dim() - 2))
            return func(*args, **kwargs)
        is_norm = func in _NORMS and self.norms
        if func is F.instance_norm:
            is_norm = is_norm and (args[5] if len(args) > 5 else kwargs.get("use_input_stats", True))
        is_gate = func in GATES and self.gates
        if not (is_gate or func in _SOFTMAX or func is F.scaled_dot_product_attention or is_norm):
            return func(*args, **kwargs)
        if self.action == "record":
            if is_norm:
                mean, rstd, _ = _norm_statistics(func, args, kwargs)
                self.factors.append((mean, rstd))
            elif func is F.scaled_dot_product_attention:
                self.factors.append(_attention_probabilities(*args, **kwargs).detach())
            out = func(*args, **kwargs)
            if is_gate or func in _SOFTMAX:
                self.factors.append(out.detach())
            return out
        value = self._next()
        if is_norm:
            x, (mean, rstd) = args[0], value
            view = x.shape if func is not F.group_norm else (x.shape[0], mean.shape[1], -1)
            normalised = ((x.reshape(view) - mean) * rstd).reshape(x.shape)
            return _affine(func, args, kwargs, normalised)
        if func is F.scaled_dot_product_attention:
            v = args[2] if len(args) > 2 else kwargs["value"]
            if v.shape[-3] != value.shape[-3]:
                v = v.repeat_interleave(value.shape[-3] // v.shape[-3], dim=-3)
            return value @ v
        return value  # a gate (broadcast by the product it enters) or attention probabilities


def sample_sums(factors: list[Tensor | tuple], samples: int) -> list[Tensor | tuple]:
    """Recorded ``factors`` of a pass over ``samples`` samples, each summed over the samples (one sample's
    shape): divided by the total count, sums over several batches give ``sample_means``'s.

    Example:
        >>> totals = [a + b for a, b in zip(sample_sums(f1, 8), sample_sums(f2, 8))]
    """
    return [
        tuple(_batch_sum(v, samples) for v in f) if isinstance(f, tuple) else _batch_sum(f, samples)
        for f in factors
    ]


def sample_means(factors: list[Tensor | tuple], samples: int) -> list[Tensor | tuple]:
    """``sample_sums`` divided by ``samples``: the factors of the mean sample.

    Example:
        >>> with FrozenFactors("replay", sample_means(recorder.factors, len(x))):
        ...     z2 = net(torch.ones(1, *x.shape[1:]))
    """
    return [
        tuple(v / samples for v in f) if isinstance(f, tuple) else f / samples
        for f in sample_sums(factors, samples)
    ]


__all__ = ["GATES", "FrozenFactors", "sample_means", "sample_sums"]

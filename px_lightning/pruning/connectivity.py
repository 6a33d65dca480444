"""Effective sparsity: which kept weights lie on a path from the network's input to its output.

At extreme sparsity pruning elsewhere can cut a kept weight off: nothing from the input reaches it (it is
fed only by biases and normalisation shifts, a constant), or nothing it feeds reaches the output. Such a
weight costs budget and computes nothing that depends on the input. Vysogorets and Kempe (JMLR 2023,
"Connectivity matters") call the density of the others the effective density; at d = 0.005 on a small
ResNet, 95% of SynFlow's and PX's kept weights are effective, 1.4% of SNIP's (``benchmarks/README.md``).

How: a copy of the network with every masked tensor replaced by its mask and every other weight by its
non-zero pattern, biases, normalisation shifts and other additive parameters (class tokens, position
embeddings) 0, BatchNorm the identity, max pooling read as average
pooling (every position of a window is connected), activations the identity, and a gate (``sigmoid``,
``hardsigmoid``: a squeeze-excitation's) ``1 + its input``: a sigmoid is never zero, so what it scales
stays connected even where the gate's own layers are all pruned. A normalisation over its own input
(LayerNorm, LayerNorm2d, GroupNorm, InstanceNorm, RMSNorm) subtracts its group's mean or divides by its
spread, so each of its outputs depends on every unit of its group: it is read as the group's sum times the
weight's non-zero pattern (an output is reached if any unit of its group is, and a unit reaches the output
if any output of its group with a non-zero weight does). Attention probabilities are never zero and each
depends on every score of its row: a query's output is reached if a value it reads or a score of its row
is (``nn.MultiheadAttention`` is written out to see its attention, where ``attention.restatable``; an
explicit ``softmax`` followed by a product with the values only passes the scores' reach on through values
that are themselves reached). A forward pass on all-ones
marks each unit reached from the input (each layer's output is cut back to 0/1, so nothing overflows
however deep the network), the backward pass marks each unit that reaches the output the same way, and a
kept weight is effective iff its gradient is positive.
"""

from __future__ import annotations

from collections.abc import Mapping
from inspect import signature

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import attention
from .copies import ActivationGates, identity_norms, plain_copy
from .factors import GATES
from .masks import get_masks
from .scorers.base import model_output

_MAX_TO_AVG = {
    nn.MaxPool1d: nn.AvgPool1d,
    nn.MaxPool2d: nn.AvgPool2d,
    nn.MaxPool3d: nn.AvgPool3d,
    nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d,
}


class _Reached(torch.autograd.Function):
    """0/1 in both directions: forward, whether a unit is reached; backward, whether it reaches the output."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return (grad > 0).to(grad.dtype)


class _GatesPassThrough(TorchFunctionMode):
    """Every gate ``sigmoid(z)`` read as ``1 + z``: positive whatever ``z`` (as a sigmoid is), so the product
    it scales is reached through its other factor, and still carrying ``z``'s reach."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in GATES:
            return func(*args, **kwargs)
        x = args[0]
        in_place = func in (torch.sigmoid_, Tensor.sigmoid_) or kwargs.get("inplace") or args[1:2] == (True,)
        return x.add_(1) if in_place else x + 1


def _average_pool(pool: nn.Module) -> nn.Module:
    if isinstance(pool, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        return _MAX_TO_AVG[type(pool)](pool.output_size)
    return _MAX_TO_AVG[type(pool)](pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode)


_NORM_SIGNATURES = {f: signature(f) for f in (F.layer_norm, F.rms_norm, F.group_norm, F.instance_norm)}


def _group_sum(func, args: tuple, kwargs: dict) -> Tensor:
    """A normalisation's output read as its group's sum times the weight's 0/1 pattern (no shift)."""
    bound = _NORM_SIGNATURES[func].bind(*args, **kwargs)
    bound.apply_defaults()
    x, weight = bound.arguments["input"], bound.arguments.get("weight")
    if func in (F.layer_norm, F.rms_norm):
        dims = tuple(range(x.dim() - len(bound.arguments["normalized_shape"]), x.dim()))
        out = x.sum(dims, keepdim=True).expand_as(x)
        return out if weight is None else out * weight
    if func is F.group_norm:
        groups = bound.arguments["num_groups"]
        out = x.reshape(x.shape[0], groups, -1).sum(-1, keepdim=True)
        out = out.expand(x.shape[0], groups, x[0].numel() // groups).reshape(x.shape)
    elif bound.arguments["use_input_stats"]:  # instance_norm over each sample's channel
        out = x.sum(tuple(range(2, x.dim())), keepdim=True).expand_as(x)
    else:  # instance_norm with running statistics: a per-channel scale, as eval-mode BatchNorm
        out = x
    return out if weight is None else out * weight.reshape(1, -1, *([1] * (x.dim() - 2)))


def _reach_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention on 0/1 reach: each query's probabilities depend on every score of its row (they are never
    zero, as a gate's), so its output is reached if a value it reads or a score of its row is."""
    allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=q.dtype, device=q.device)
    if mask is not None:
        allowed = (mask > float("-inf")).to(q.dtype).expand(*q.shape[:-2], *allowed.shape)
    if k.shape[-3] != q.shape[-3]:  # grouped-query attention: each key head serves several query heads
        repeat = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(repeat, dim=-3), v.repeat_interleave(repeat, dim=-3)
    row = (allowed * _Reached.apply(q @ k.transpose(-2, -1))).sum(-1, keepdim=True)
    return _Reached.apply((allowed * (1 + row)) @ v + allowed.sum(-1, keepdim=True) * row)


class _MixingAsReach(TorchFunctionMode):
    """Every operation that mixes units through input-dependent statistics or probabilities, on 0/1 reach:
    normalisations (``_group_sum``), attention (``_reach_attention``; ``nn.MultiheadAttention`` written
    out by ``attention.written_out`` where it can be) and an explicit ``softmax`` (each probability
    ``1 + its row's reach``, never zero)."""

    _SOFTMAX = (F.softmax, torch.softmax, Tensor.softmax)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _NORM_SIGNATURES:
            return _Reached.apply(_group_sum(func, args, kwargs))
        if func in self._SOFTMAX:
            x = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else -1)
            dim = -1 if dim is None else dim
            allowed = (x > float("-inf")).to(x.dtype)
            return allowed * (1 + (allowed * _Reached.apply(x)).sum(dim, keepdim=True))
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            if kwargs.get("is_causal", args[5] if len(args) > 5 else False):
                mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
            # F.scaled_dot_product_attention's boolean masks say where a query may read (True).
            mask = None if mask is None else attention.additive(mask, q.dtype, masked=False)
            return _reach_attention(q, k, v, mask)
        if func is F.multi_head_attention_forward:
            arguments = attention.bind(args, kwargs)
            if attention.restatable(arguments):
                out, _ = attention.written_out(arguments, _reach_attention)
                return _Reached.apply(out), None
        return func(*args, **kwargs)


# Parameters added to a signal, not multiplying it, carry nothing from the input: biases (attention's
# in_proj_bias, bias_k / bias_v), a ViT's class / distillation / register tokens and position embeddings,
# Swin's relative-position bias table. Read by their attribute names, which every torchvision and timm
# model of the zoo follows.
_ADDITIVE = ("bias", "token", "pos_emb", "pos_embed", "position", "table")


def _is_additive_constant(attr: str) -> bool:
    return any(word in attr for word in _ADDITIVE)


def _connectivity_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    net = plain_copy(model).to(dtype).eval()
    for name, module in list(net.named_modules()):
        if type(module) in _MAX_TO_AVG:
            parent, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, attr, _average_pool(module))
    identity = identity_norms(net, "effective_masks", "")  # BatchNorm statistics and affine parameters
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue  # the identity, loaded below
            for attr, p in module.named_parameters(recurse=False):
                p.copy_(torch.zeros_like(p) if _is_additive_constant(attr) else (p != 0).to(dtype))
        # Copied tensor by tensor: load_state_dict would run modules' own loaders, which some refuse
        # without the checkpoint's version metadata (torchvision's MNASNet).
        state = net.state_dict(keep_vars=True)
        for name, value in identity.items():
            state[name].copy_(value)
    return net


def effective_masks(
    model: nn.Module, example_input: Tensor, masks: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """The kept weights that lie on at least one input-to-output path: ``{name: bool Tensor}``.

    ``masks``: the masks to examine (e.g. from ``find_masks``); by default the ones installed on ``model``.
    ``example_input``: a batch of inputs, used for its shape only (an all-ones input of batch 1 runs). The
    answer depends on it: a 3x3 convolution on a 1x1 feature map reads only its centre tap, so ImageNet
    ResNets on 32x32 images leave 8/9 of their last stage's weights on no path. Tensors of the model
    without a mask count as dense. The model is left unchanged.

    Example:
        >>> masks = find_masks(model, "snip", batches, density=0.005)
        >>> effective = effective_masks(model, batches[0][0], masks)
        >>> sum(int(m.sum()) for m in effective.values()) / sum(int(m.sum()) for m in masks.values())
    """
    if masks is None:
        masks = get_masks(model)
        if not masks:
            raise ValueError(
                "effective_masks: the model has no masks installed; pass masks= (e.g. from find_masks) or "
                "apply_masks first"
            )
    if not isinstance(example_input, Tensor) or not example_input.is_floating_point():
        raise TypeError(
            "effective_masks: example_input must be a floating-point tensor (a batch of the model's inputs), "
            f"got {type(example_input).__name__}"
            + (f" of dtype {example_input.dtype}" if isinstance(example_input, Tensor) else "")
        )
    known = {n for n, _ in model.named_parameters()} | set(get_masks(model))
    unknown = [n for n in masks if n not in known]
    if unknown:
        raise ValueError(f"effective_masks: masks name tensors the model does not have: {unknown}")
    device = next(iter(masks.values())).device
    # float64: a unit's 0/1 reach times a layer's fan-in stays exact whatever the dtype, but float16 or
    # bfloat16 models would round large fan-ins.
    net = _connectivity_copy(model, torch.float64).to(device)
    leaves = {n: m.to(device, torch.float64).requires_grad_(True) for n, m in masks.items()}
    hooks = [
        module.register_forward_hook(
            lambda mod, args, out: (
                _Reached.apply(out) if isinstance(out, Tensor) and out.is_floating_point() else out
            )
        )
        for module in net.modules()
        if not list(module.children())
    ]
    try:
        ones = torch.ones((1, *example_input.shape[1:]), dtype=torch.float64, device=device)
        with ActivationGates("identity", exclude=GATES), _GatesPassThrough(), _MixingAsReach():
            out = torch.func.functional_call(net, leaves, (ones,), strict=False)
        model_output(out).sum().backward()
    finally:
        for hook in hooks:
            hook.remove()
    # A tensor the output does not depend on at all (GoogLeNet's auxiliary heads in eval()) has no gradient.
    return {
        n: masks[n].to(device).bool() & (leaves[n].grad is not None and leaves[n].grad > 0) for n in masks
    }

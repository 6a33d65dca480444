"""``nn.MultiheadAttention`` written out, so that a torch-function mode sees the attention inside it.

``nn.MultiheadAttention.forward`` ends in one call of ``F.multi_head_attention_forward``: a
``TorchFunctionMode`` sees that call's arguments, never the projections or the softmax inside it.
``written_out`` computes the same output from the same arguments, the projections as ``F.linear`` and
the attention itself by a callable the mode supplies (``attention(q, k, v, mask)`` on ``(N, heads, L, d)``
tensors, ``mask`` additive: 0 where a query may read a key, ``-inf`` where not, or ``None``), for the
calls it restates exactly (``restatable``): no ``bias_k`` / ``bias_v``, no ``add_zero_attn``, no
``static_k`` / ``static_v``, no dropout. It returns no attention weights (``None``), as with
``need_weights=False``.

Example:
    >>> arguments = bind(args, kwargs)  # inside a mode's __torch_function__ for F.multi_head_attention_forward
    >>> if restatable(arguments):
    ...     out, _ = written_out(arguments, my_attention)
"""

from __future__ import annotations

from collections.abc import Callable
from inspect import signature

import torch
import torch.nn.functional as F
from torch import Tensor

_SIGNATURE = signature(F.multi_head_attention_forward)

Attention = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]


def bind(args: tuple, kwargs: dict) -> dict:
    """The arguments of a ``F.multi_head_attention_forward`` call by name, defaults filled in."""
    bound = _SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def restatable(arguments: dict) -> bool:
    """Whether ``written_out`` computes this call exactly (see the module docstring)."""
    a = arguments
    return (
        a["bias_k"] is None
        and a["bias_v"] is None
        and not a["add_zero_attn"]
        and a["static_k"] is None
        and a["static_v"] is None
        and (not a["training"] or a["dropout_p"] == 0)
    )


def additive(mask: Tensor, dtype: torch.dtype, masked: bool = True) -> Tensor:
    """A boolean ``mask`` as an additive one: ``-inf`` where it is ``masked`` (True: the convention of
    ``nn.MultiheadAttention``; pass ``masked=False`` for ``F.scaled_dot_product_attention``'s, where True
    means "may read"), 0 elsewhere; a float mask as it is, in ``dtype``.

    Example:
        >>> additive(torch.tensor([True, False]), torch.float32)
        tensor([-inf, 0.])
    """
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask == masked, float("-inf"))


def _additive_mask(a: dict, batch: int, heads: int, dtype: torch.dtype) -> Tensor | None:
    """``attn_mask`` and ``key_padding_mask`` (True or -inf: not read) as one additive ``(N, H, L, S)``."""
    total = None
    for mask, shape in ((a["attn_mask"], None), (a["key_padding_mask"], (batch, 1, 1, -1))):
        if mask is None:
            continue
        additive_mask = additive(mask, dtype)
        if shape is None:  # attn_mask: (L, S) for every sample and head, or (N * H, L, S)
            shape = (
                (batch, heads, *additive_mask.shape[-2:]) if additive_mask.dim() == 3 else additive_mask.shape
            )
        additive_mask = additive_mask.reshape(shape)
        total = additive_mask if total is None else total + additive_mask
    if total is None and a["is_causal"]:
        raise ValueError("is_causal needs attn_mask in F.multi_head_attention_forward, as torch requires")
    return total


def written_out(arguments: dict, attention: Attention) -> tuple[Tensor, None]:
    """``F.multi_head_attention_forward``'s output for ``arguments`` (``bind``), ``attention`` computing
    ``softmax(q k^T / sqrt(d) + mask) v`` or what the caller puts in its place; weights ``None``."""
    a = arguments
    query, key, value = a["query"], a["key"], a["value"]
    unbatched = query.dim() == 2
    if unbatched:  # (L, E) -> (L, 1, E)
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    length, batch, embed = query.shape
    heads = a["num_heads"]
    if a["use_separate_proj_weight"]:
        wq, wk, wv = a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"]
    else:
        wq, wk, wv = a["in_proj_weight"].chunk(3)
    bq = bk = bv = None
    if a["in_proj_bias"] is not None:
        bq, bk, bv = a["in_proj_bias"].chunk(3)

    def split(t: Tensor) -> Tensor:  # (L, N, E) -> (N, H, L, E / H)
        return t.reshape(t.shape[0], batch, heads, -1).permute(1, 2, 0, 3)

    q, k, v = split(F.linear(query, wq, bq)), split(F.linear(key, wk, bk)), split(F.linear(value, wv, bv))
    out = attention(q, k, v, _additive_mask(a, batch, heads, q.dtype))
    out = F.linear(
        out.permute(2, 0, 1, 3).reshape(length, batch, embed), a["out_proj_weight"], a["out_proj_bias"]
    )
    return (out.squeeze(1) if unbatched else out), None


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """The attention ``nn.MultiheadAttention`` computes: ``softmax(q k^T / sqrt(d) + mask) v``."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


__all__ = ["Attention", "additive", "bind", "restatable", "softmax_attention", "written_out"]

"""What a masked network saves: parameters, FLOPs and bytes, dense against kept and effective.

FLOPs are two per multiply-accumulate, per example, of one inference forward pass (``eval()`` mode: what a
shipped model runs), counted from the layers' real output sizes:

- a prunable tensor (``targets.prunable_parameters``: convolution and linear weights, attention's input
  projections) does ``weights * output positions`` multiply-accumulates dense and ``kept weights * output
  positions`` sparse, row by row (a row's output positions: the output's elements over its output
  channels, or the tokens through it: a packed ``in_proj_weight``'s query, key and value rows see the
  query, key and value tokens; a conv's dense count is thus ``out_elements * in_channels / groups *
  kernel volume``); ``effective`` counts only the kept weights on an input-to-output path
  (``effective_masks``);
- unprunable work is counted apart and added to all three totals: attention's activation-activation
  products (``q @ k^T`` and ``attn @ v``, ``L * S * E`` each, in ``nn.MultiheadAttention`` or
  ``F.scaled_dot_product_attention``), and matrix products or linear/conv calls made outside the prunable
  modules (``torch.matmul``, ``@``, ``bmm``, ...).

Biases, normalisation, activations, pooling and other elementwise work are not counted (the usual
convention: they are a few percent of a CNN's or a transformer's work and no mask changes them).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .connectivity import effective_masks
from .masks import get_masks
from .sparse_io import encoded_nbytes
from .targets import prunable_parameters


def _product_macs(func: Callable, args: tuple, kwargs: dict, out: object) -> tuple[str, int] | None:
    """``(category, multiply-accumulates)`` of one torch call counted outside the prunable modules."""
    if func is F.scaled_dot_product_attention:
        q, k, v = args[:3]
        rows = q.numel() // q.shape[-1]  # batch * heads * L
        return "attention", rows * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    if not isinstance(out, Tensor):
        return None
    if func in _MATMULS:
        a = args[1] if func in (torch.baddbmm, torch.addmm, torch.addbmm) else args[0]
        return "other", out.numel() * a.shape[-1]
    if func is F.linear:
        return "other", out.numel() * args[1].shape[-1]
    if func in (F.conv1d, F.conv2d, F.conv3d):
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        return "other", out.numel() * (weight.numel() // weight.shape[0])
    return None


_MATMULS = (torch.matmul, Tensor.__matmul__, Tensor.matmul, torch.bmm, torch.mm, torch.baddbmm, torch.addmm)


class _Counter(TorchFunctionMode):
    """Counts the unprunable products of one forward pass; ``inside`` > 0 while a counted module runs."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.macs = {"attention": 0, "other": 0}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # the mode is off inside: nested calls are not seen twice
        if not self.inside:
            counted = _product_macs(func, args, kwargs, out)
            if counted is not None:
                self.macs[counted[0]] += counted[1]
        return out


def _mha_tokens(mha: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[int, int, int, int]:
    """``(query, key, value tokens, attention MACs)`` of one call of ``mha`` (whole batch)."""
    names = ("query", "key", "value")
    query, key, value = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names))
    batch_first = mha.batch_first and query.dim() == 3
    length = query.shape[1] if batch_first else query.shape[0]
    sources = key.shape[1] if batch_first else key.shape[0]
    sources += int(mha.bias_k is not None) + int(mha.add_zero_attn)
    batch = query.numel() // (length * query.shape[-1])
    tokens = [t.numel() // t.shape[-1] for t in (query, key, value)]
    return *tokens, 2 * batch * length * sources * mha.embed_dim


@contextmanager
def _inference_mode_of(model: nn.Module):
    # eval() for the pass (no BatchNorm statistics updated, the network a shipped model runs), then every
    # module's own mode back; MultiheadAttention's fused fast path would bypass the modules' hooks.
    modes = {m: m.training for m in model.modules()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for module, training in modes.items():
            module.training = training


def _count_positions(model: nn.Module, targets: dict[str, tuple[nn.Module, str]], example_input: Tensor):
    """Each prunable tensor's output positions per row (one count per output channel or row: a packed
    attention projection's query, key and value rows see different token counts) over one forward pass of
    ``example_input``, and the unprunable MACs by category (whole batch)."""
    positions = {
        name: torch.zeros(getattr(module, attr).shape[0], dtype=torch.float64)
        for name, (module, attr) in targets.items()
    }
    by_tensor = {(module, attr): name for name, (module, attr) in targets.items()}
    counter = _Counter()
    handles = []
    layers = {m for m, _ in targets.values() if not isinstance(m, nn.MultiheadAttention)}
    attentions = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]

    def enter(module, args, kwargs=None):
        counter.inside += 1

    def leave_layer(module, args, out):
        counter.inside -= 1
        if isinstance(out, Tensor):
            rows = module.weight.shape[0]
            positions[by_tensor[module, "weight"]] += out.numel() // rows

    def leave_mha(module, args, kwargs, out):
        counter.inside -= 1
        q_tokens, k_tokens, v_tokens, attention = _mha_tokens(module, args, kwargs)
        counter.macs["attention"] += attention
        E = module.embed_dim
        # (tensor, its rows, the tokens through them): the packed projection has three row blocks.
        if module.in_proj_weight is not None:
            tokens = (q_tokens, k_tokens, v_tokens)
            parts = [((module, "in_proj_weight"), slice(i * E, (i + 1) * E), t) for i, t in enumerate(tokens)]
        else:
            parts = [
                ((module, f"{p}_proj_weight"), slice(None), t)
                for p, t in zip("qkv", (q_tokens, k_tokens, v_tokens))
            ]
        parts.append(
            ((module.out_proj, "weight"), slice(None), q_tokens)
        )  # used through F.linear, never called
        for tensor, rows, tokens in parts:
            positions[by_tensor[tensor]][rows] += tokens

    try:
        for module in layers:
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave_layer))
        for module in attentions:
            handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))
            handles.append(module.register_forward_hook(leave_mha, with_kwargs=True))
        with _inference_mode_of(model), torch.no_grad(), counter:
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return positions, counter.macs


def _ratio(a: float, b: float) -> float:
    return a / b if b else 1.0


def savings_report(model: nn.Module, example_input: Tensor, *, effective: bool = True) -> dict:
    """Parameters, FLOPs and bytes of the masked ``model``: dense against kept and effective.

    ``example_input``: a batch of the model's inputs (its first dimension the batch); one forward pass of
    it in ``eval()`` mode, under ``no_grad``, measures every layer's output size (the model is left as it
    was: modes, weights, buffers). FLOPs are per example (the module docstring says what is counted).
    ``effective``: whether to count the weights on an input-output path (``effective_masks``: one more
    forward-backward of a copy); where not counted, every ``effective`` entry is ``None``. A model
    without masks is reported dense (kept = dense; effective still counts only the weights on an
    input-output path).

    Returns::

        {"params": {"total", "kept", "effective"},            # every parameter of the model
         "flops": {"dense", "kept", "effective",               # totals, unprunable work included
                   "unprunable": {"attention", "other"}},
         "bytes": {"dense", "sparse",                          # the whole state (plain state_dict)
                   "prunable_dense", "prunable_sparse"},       # the prunable tensors alone
         "flops_ratio", "params_ratio", "bytes_ratio",         # kept / dense
         "layers": {name: {"params": {...}, "flops": {...}, "bytes": {"dense", "sparse"}}}}

    ``bytes``: dense float storage against what ``save_sparse`` stores (kept values plus the cheaper of
    bitmap and indices per masked tensor, every other tensor as is), tensor payload without the file's
    few kilobytes of framing.

    Example:
        >>> apply_masks(model, find_masks(model, "magnitude", density=0.1))
        >>> report = savings_report(model, torch.randn(1, 3, 224, 224))
        >>> report["flops_ratio"], report["params"]["kept"], report["bytes"]["sparse"]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, Tensor) or example_input.dim() == 0:
        raise TypeError(
            "example_input must be a tensor batch of the model's inputs (first dimension the batch), got "
            + ("a 0-dim tensor" if isinstance(example_input, Tensor) else type(example_input).__name__)
        )
    targets = prunable_parameters(model)
    masks = get_masks(model)
    weights = {name: getattr(module, attr) for name, (module, attr) in targets.items()}
    all_masks = {
        name: masks[name] if name in masks else torch.ones_like(w, dtype=torch.bool)
        for name, w in weights.items()
    }
    if not isinstance(effective, bool):
        raise TypeError(f"effective must be True or False, got {effective!r}")
    reached = effective_masks(model, example_input, all_masks) if effective else None
    positions, unprunable = _count_positions(model, targets, example_input)
    batch = example_input.shape[0]

    def flops(kept: Tensor | None, name: str) -> int | None:
        if kept is None:
            return None
        per_row = kept.reshape(kept.shape[0], -1).sum(1, dtype=torch.float64)
        return round(2 * float(per_row @ positions[name]) / batch)

    report_layers = {}
    for name, weight in weights.items():
        total, kept = weight.numel(), int(all_masks[name].sum())
        eff_mask = None if reached is None else reached[name].cpu()
        eff = None if eff_mask is None else int(eff_mask.sum())
        size = weight.element_size()
        sparse = encoded_nbytes(total, kept, size) if name in masks else total * size
        report_layers[name] = {
            "params": {"total": total, "kept": kept, "effective": eff},
            "flops": {
                "dense": flops(torch.ones(weight.shape, dtype=torch.bool), name),
                "kept": flops(all_masks[name].cpu(), name),
                "effective": flops(eff_mask, name),
            },
            "bytes": {"dense": total * size, "sparse": sparse},
        }
    other = {k: round(2 * v / batch) for k, v in unprunable.items()}
    extra = sum(other.values())

    def summed(section: str, key: str, plus: int = 0) -> int | None:
        values = [layer[section][key] for layer in report_layers.values()]
        return None if None in values else sum(values) + plus

    total_params = sum(p.numel() for p in model.parameters())
    unprunable_params = total_params - summed("params", "total")
    params = {key: summed("params", key, unprunable_params) for key in ("total", "kept", "effective")}
    flops_total = {key: summed("flops", key, extra) for key in ("dense", "kept", "effective")}
    flops_total["unprunable"] = other
    mask_bytes = sum(t.numel() * t.element_size() for t in masks.values())
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()) - mask_bytes
    prunable = {"prunable_dense": summed("bytes", "dense"), "prunable_sparse": summed("bytes", "sparse")}
    sizes = {
        "dense": state_bytes,
        "sparse": state_bytes - prunable["prunable_dense"] + prunable["prunable_sparse"],
        **prunable,
    }
    return {
        "params": params,
        "flops": flops_total,
        "bytes": sizes,
        "flops_ratio": _ratio(flops_total["kept"], flops_total["dense"]),
        "params_ratio": _ratio(params["kept"], params["total"]),
        "bytes_ratio": _ratio(sizes["sparse"], sizes["dense"]),
        "layers": report_layers,
    }


def format_savings(report: dict) -> str:
    """Two lines summarising ``savings_report`` (for logs and the CLI).

    Example:
        >>> print(format_savings(savings_report(model, x)))
        FLOPs/example: 36.4M of 1.09G dense (ratio 0.0334), effective 30.1M
        params: 218k of 11.7M kept (ratio 0.0187); file 1.03 MB sparse vs 46.8 MB dense
    """
    f, p, b = report["flops"], report["params"], report["bytes"]
    return (
        f"FLOPs/example: {_si(f['kept'])} of {_si(f['dense'])} dense (ratio {report['flops_ratio']:.4g})"
        + ("" if f["effective"] is None else f", effective {_si(f['effective'])}")
        + "\n"
        f"params: {_si(p['kept'])} of {_si(p['total'])} kept (ratio {report['params_ratio']:.4g}); "
        f"file {b['sparse'] / 1e6:.3g} MB sparse vs {b['dense'] / 1e6:.3g} MB dense"
    )


def _si(value: float) -> str:
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{unit}"
    return f"{value:.3g}"


__all__ = ["format_savings", "savings_report"]

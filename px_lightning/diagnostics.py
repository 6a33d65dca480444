"""Empirical Neural Tangent Kernel of a (masked) network: the kernel, its trace and spectrum.

The empirical NTK of a network ``f(x; theta)`` with ``K`` outputs on ``N`` inputs is the ``(N*K, N*K)``
matrix ``J J^T``, ``J`` the Jacobian of the outputs with respect to the parameters. For a pruned network
the parameters are ``theta * mask``: the Jacobian of a pruned weight is zero and the forward pass sees the
pruned weights at zero, which is the kernel that governs the sparse network's training from step one.

The Jacobians are computed with ``torch.func`` (``vmap`` of ``jacrev``) in chunks of ``chunk_size``
samples, and the kernel is accumulated block by block, so memory is bounded by two chunks of Jacobians
(``2 * chunk_size * K * P`` numbers) rather than the full ``N * K * P`` Jacobian. The kernel is that of the
network in ``eval()`` mode (BatchNorm uses its running statistics, dropout is off): per-sample Jacobians of
a train-mode BatchNorm would mix samples. The model is left as it was.

Example:
    >>> from px_lightning.diagnostics import ntk_spectrum, compare_spectra
    >>> spec = ntk_spectrum(model, x, top_k=10)            # the network as it is (masks applied)
    >>> dense = ntk_spectrum(model, x, dense=True)          # the same weights, masks ignored
    >>> compare_spectra(model, x)["trace_ratio"]            # masked trace / dense trace
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .pruning.copies import plain_copy
from .pruning.masks import get_masks
from .pruning.scorers.base import batch_inputs, model_output

_PARAMS = ("all", "prunable")


@dataclass
class NTKSpectrum:
    """Trace and eigenvalues (descending, float64) of an empirical NTK; ``top`` holds the first ``top_k``."""

    trace: float
    eigenvalues: Tensor
    top: Tensor

    @property
    def condition_number(self) -> float:
        """Largest over smallest eigenvalue (``inf`` when the kernel is singular)."""
        smallest = float(self.eigenvalues[-1])
        return float("inf") if smallest <= 0 else float(self.eigenvalues[0]) / smallest


def plain_parameters(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter by its plain name (``layer.weight``), a masked tensor at its pre-mask value (detached).

    Example:
        >>> before = {n: t.clone() for n, t in plain_parameters(model).items()}   # a snapshot before pruning
    """
    values: dict[str, Tensor] = {}
    for name, p in model.named_parameters():
        plain = name
        if name.endswith(".original") and "parametrizations." in name:
            head, _, attr = name[: -len(".original")].rpartition("parametrizations.")
            plain = head + attr
        values[plain] = p.detach()
    return values


def _check_named(arg: str, given, values: dict[str, Tensor], model: nn.Module) -> None:
    """Every name in ``given`` is a parameter of ``model``; given tensors have that parameter's shape."""
    unknown = [n for n in given if n not in values]
    if unknown:
        raise ValueError(f"{arg} names {unknown[:5]} are not parameters of {type(model).__name__}")
    if not isinstance(given, dict):
        return  # names only
    for n, t in given.items():
        if tuple(t.shape) != tuple(values[n].shape):
            raise ValueError(
                f"{arg}[{n!r}] has shape {tuple(t.shape)}, the parameter {tuple(values[n].shape)}"
            )


def _parameters(
    model: nn.Module,
    masks: dict[str, Tensor] | None,
    dense: bool,
    params: str | Sequence[str],
    weights: dict[str, Tensor] | None = None,
) -> tuple[nn.Module, dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """A plain copy of ``model`` for ``functional_call``, the differentiated tensors, the fixed (masked)
    ones, and the masks of the differentiated ones."""
    installed = get_masks(model)
    if masks is None:
        masks = {} if dense else installed
    elif dense:
        raise ValueError("give masks or dense=True, not both: dense=True computes the kernel without masks")
    net = plain_copy(model)
    # The parametrized tensors' pre-mask values (``original``), so that dense=True sees the dense network.
    values = plain_parameters(model)
    if weights:
        _check_named("weights", weights, values, model)
        for n, w in weights.items():
            values[n] = w.detach().to(values[n].device, values[n].dtype)
    if isinstance(params, str):
        if params not in _PARAMS:
            raise ValueError(f"params must be 'all', 'prunable' or a list of parameter names, got {params!r}")
        if params == "prunable":
            from .pruning.targets import prunable_parameters

            names = list(prunable_parameters(net))
        else:
            names = [n for n, p in net.named_parameters() if p.requires_grad]
    else:
        names = list(params)
        _check_named("params", names, values, model)
    _check_named("masks", masks, values, model)
    if not names:
        raise ValueError(f"model {type(model).__name__} has no trainable parameter to take the NTK over")
    diff = {n: values[n] for n in names}
    fixed = {n: v for n, v in values.items() if n not in diff}
    # Fixed (non-differentiated) tensors still see their masks in the forward pass.
    fixed = {n: v * masks[n].to(v.device, v.dtype) if n in masks else v for n, v in fixed.items()}
    mask_of = {n: masks[n].to(values[n].device, values[n].dtype) for n in names if n in masks}
    return net, diff, fixed, mask_of


def empirical_ntk(
    model: nn.Module,
    inputs,
    *,
    masks: dict[str, Tensor] | None = None,
    dense: bool = False,
    params: str | Sequence[str] = "all",
    chunk_size: int = 16,
    reduce_outputs: bool = False,
    weights: dict[str, Tensor] | None = None,
) -> Tensor:
    """The empirical NTK of ``model`` on ``inputs``: ``(N*K, N*K)`` (sample-major), or ``(N, N)``.

    ``inputs``: a tensor of ``N`` samples or an ``(inputs, targets)`` batch. ``masks``
    (``{param_name: bool Tensor}``) default to the masks installed on the model; ``dense=True`` ignores
    them (the dense network with the same weights). ``params``: ``"all"`` trainable parameters,
    ``"prunable"`` (the weights pruning acts on) or a list of names. ``reduce_outputs=True`` sums over
    the ``K`` outputs, giving the ``(N, N)`` kernel ``sum_k J_k J_k^T`` (same trace). ``weights``
    (``{param_name: Tensor}``, plain names) replace the model's parameter values, e.g. a snapshot of the
    weights before pruning (``plain_parameters``), since pruning zeroes the pruned entries.

    Example:
        >>> K = empirical_ntk(model, torch.randn(8, 3, 32, 32), chunk_size=4)   # (80, 80) for 10 classes
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    ref = next((p for p in model.parameters()), None)
    if ref is None:
        raise ValueError(f"model {type(model).__name__} has no parameters")
    x, _ = batch_inputs(inputs, ref)
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"inputs must hold at least one sample, got shape {tuple(x.shape)}")
    net, diff, fixed, mask_of = _parameters(model, masks, dense, params, weights)
    net.eval()
    buffers = dict(net.named_buffers())

    def f(theta: dict[str, Tensor], sample: Tensor) -> Tensor:
        effective = {n: theta[n] * mask_of[n] if n in mask_of else theta[n] for n in theta}
        out = torch.func.functional_call(net, {**fixed, **buffers, **effective}, (sample.unsqueeze(0),))
        return model_output(out).reshape(-1)

    jac = torch.func.vmap(torch.func.jacrev(f), in_dims=(None, 0))

    def flat_jacobian(chunk: Tensor) -> Tensor:  # (c, K, P)
        parts = jac(diff, chunk)
        return torch.cat([parts[n].reshape(chunk.shape[0], parts[n].shape[1], -1) for n in diff], dim=2)

    chunks = list(torch.split(x, chunk_size))
    blocks: dict[tuple[int, int], Tensor] = {}
    with torch.no_grad():
        for a, xa in enumerate(chunks):
            with torch.enable_grad():
                ja = flat_jacobian(xa).double()
            for b in range(a, len(chunks)):
                if b == a:
                    jb = ja
                else:
                    with torch.enable_grad():
                        jb = flat_jacobian(chunks[b]).double()
                block = torch.einsum("akp,blp->akbl", ja, jb)
                blocks[(a, b)] = block
                blocks[(b, a)] = block.permute(2, 3, 0, 1)
    n_chunks = len(chunks)
    kernel = torch.cat(
        [torch.cat([blocks[(a, b)] for b in range(n_chunks)], dim=2) for a in range(n_chunks)], dim=0
    )  # (N, K, N, K)
    if reduce_outputs:
        return torch.einsum("akbk->ab", kernel)
    n, k = kernel.shape[:2]
    return kernel.reshape(n * k, n * k)


def spectrum(kernel: Tensor, top_k: int = 10) -> NTKSpectrum:
    """Trace and descending eigenvalues (float64) of a symmetric kernel matrix.

    Example:
        >>> spectrum(empirical_ntk(model, x)).top
    """
    if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel must be a square matrix, got shape {tuple(kernel.shape)}")
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    k = kernel.double()
    eig = torch.linalg.eigvalsh((k + k.T) / 2).flip(0)
    return NTKSpectrum(trace=float(k.diagonal().sum()), eigenvalues=eig, top=eig[:top_k].clone())


def ntk_spectrum(model: nn.Module, inputs, *, top_k: int = 10, **kwargs) -> NTKSpectrum:
    """``spectrum(empirical_ntk(model, inputs, **kwargs), top_k)``.

    Example:
        >>> ntk_spectrum(model, x, top_k=5, dense=True).trace
    """
    return spectrum(empirical_ntk(model, inputs, **kwargs), top_k)


def compare_spectra(
    model: nn.Module,
    inputs,
    masks: dict[str, Tensor] | None = None,
    *,
    top_k: int = 10,
    **kwargs,
) -> dict:
    """The NTK of the masked network against that of the dense one (same weights, no masks).

    ``masks`` default to those installed on the model. Returns ``dense`` and ``masked``
    (``NTKSpectrum``), ``trace_ratio`` (masked / dense), ``top_ratio`` (the ``top_k`` eigenvalues,
    masked / dense, in order), ``condition_ratio`` and ``alignment``: the cosine similarity of the
    two kernels as matrices (1 when pruning only rescaled the kernel).

    Example:
        >>> report = compare_spectra(model, x, masks)   # a plain model and find_masks' result
        >>> report["trace_ratio"], report["top_ratio"]
    """
    if masks is None:
        masks = get_masks(model)
        if not masks:
            raise ValueError(
                "model carries no masks and none were given: nothing to compare with the dense NTK"
            )
    k_dense = empirical_ntk(model, inputs, dense=True, **kwargs)
    k_masked = empirical_ntk(model, inputs, masks=masks, **kwargs)
    dense, masked = spectrum(k_dense, top_k), spectrum(k_masked, top_k)
    tiny = torch.finfo(torch.float64).tiny
    alignment = float((k_dense * k_masked).sum() / (k_dense.norm() * k_masked.norm()).clamp_min(tiny))
    return {
        "dense": dense,
        "masked": masked,
        "trace_ratio": masked.trace / dense.trace if dense.trace else float("nan"),
        "top_ratio": masked.top / dense.top.clamp_min(tiny),
        "condition_ratio": masked.condition_number / dense.condition_number,
        "alignment": alignment,
    }


__all__ = ["NTKSpectrum", "compare_spectra", "empirical_ntk", "ntk_spectrum", "plain_parameters", "spectrum"]

"""A compact file for a masked model: each masked tensor's kept values plus a bitmap or indices.

The file is a ``torch.save`` of plain tensors, lists, strings and ints (``torch.load(path,
weights_only=True)`` reads it)::

    {"format": "px-lightning-sparse", "version": 1,
     "header": [{"name", "shape", "dtype", "encoding"}, ...],   # every tensor of the state, in order
     "dense": {name: Tensor},                                   # every tensor without a mask, as is
     "sparse": {name: {"values": Tensor, "bitmap" | "indices": Tensor}}}

Names are plain names (``"layer1.0.conv1.weight"``, not ``...parametrizations.weight.original``). A masked
tensor keeps its kept values in row-major order and where they are: a bitmap (``uint8``, 8 positions a
byte, most significant bit first) or the flat indices (the smallest of ``int16`` / ``int32`` / ``int64``
that holds them), whichever takes fewer bytes; indices win below about one kept weight in ``8 *
index_bytes``. Pruned entries come back as exactly zero: they never reach the output (the forward pass
multiplies them by the mask), so the loaded model computes the same outputs bit for bit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .masks import apply_masks, get_masks

FORMAT = "px-lightning-sparse"
VERSION = 1

PathLike = str | os.PathLike | BinaryIO


def index_dtype(numel: int) -> torch.dtype:
    """The smallest signed integer dtype holding every flat index of a tensor of ``numel`` entries.

    Example:
        >>> index_dtype(3 * 3 * 64 * 64)
        torch.int32
    """
    if numel <= 1 << 15:
        return torch.int16
    return torch.int32 if numel <= 1 << 31 else torch.int64


def encoded_nbytes(numel: int, kept: int, element_size: int) -> int:
    """Bytes ``save_sparse`` stores for a masked tensor: its kept values plus the cheaper of bitmap/indices.

    Example:
        >>> encoded_nbytes(1000, 10, 4)  # 40 bytes of values + 10 int16 indices (20 bytes < 125 of bitmap)
        60
    """
    return kept * element_size + min(_bitmap_nbytes(numel), _indices_nbytes(numel, kept))


def _bitmap_nbytes(numel: int) -> int:
    return math.ceil(numel / 8)


def _indices_nbytes(numel: int, kept: int) -> int:
    return kept * torch.empty((), dtype=index_dtype(numel)).element_size()


def pack_bits(mask: Tensor) -> Tensor:
    """``mask`` (bool, any shape) flattened into ``uint8`` bytes, 8 entries a byte, most significant first.

    Example:
        >>> pack_bits(torch.tensor([True, False, False, False, False, False, False, True, True]))
        tensor([129, 128], dtype=torch.uint8)
    """
    flat = mask.reshape(-1).to(torch.uint8)
    padded = torch.zeros(math.ceil(flat.numel() / 8) * 8, dtype=torch.uint8, device=flat.device)
    padded[: flat.numel()] = flat
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=flat.device)
    return (padded.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(bitmap: Tensor, numel: int) -> Tensor:
    """The inverse of ``pack_bits``: the first ``numel`` bits of ``bitmap`` as a flat bool tensor.

    Example:
        >>> unpack_bits(pack_bits(mask), mask.numel()).view_as(mask)  # equal to mask
    """
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=bitmap.device)
    return ((bitmap.reshape(-1, 1) >> shifts) & 1).reshape(-1)[:numel].bool()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _mask_prefix(name: str) -> str:
    module_name, _, attr = name.rpartition(".")
    return f"{module_name}.parametrizations.{attr}." if module_name else f"parametrizations.{attr}."


def _plain_entries(model: nn.Module) -> tuple[list[tuple[str, Tensor]], dict[str, Tensor]]:
    """The model's state as ``(plain name, tensor)`` in ``state_dict`` order, and its masks by plain name.

    A masked tensor appears once, under its plain name, at its effective (masked) value. Raises when a
    masked tensor carries other parametrizations too: their tensors would have no plain value to store.
    """
    masks = get_masks(model)
    state = model.state_dict()
    prefixes = {_mask_prefix(name): name for name in masks}
    entries: list[tuple[str, Tensor]] = []
    seen: set[str] = set()
    for key, value in state.items():
        owner = next((name for prefix, name in prefixes.items() if key.startswith(prefix)), None)
        if owner is None:
            if not isinstance(value, Tensor):
                raise TypeError(f"state entry {key!r} is a {type(value).__name__}, not a tensor")
            entries.append((key, value))
            continue
        prefix = _mask_prefix(owner)
        rest = key[len(prefix) :]
        if rest != "original" and not (rest.endswith(".mask") and rest.split(".")[0].isdigit()):
            raise ValueError(
                f"{owner} carries parametrizations other than its mask ({key!r}); make them permanent "
                "(torch.nn.utils.parametrize.remove_parametrizations) before saving it sparse"
            )
        if owner not in seen:
            seen.add(owner)
            module_name, _, attr = owner.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            entries.append((owner, getattr(module, attr).detach()))
    for name in masks:  # a mask buffer left out of the state_dict (non-persistent) still marks its tensor
        if name not in seen:
            raise ValueError(f"the mask of {name} is not in the model's state_dict, so it cannot be saved")
    return entries, masks


def _header_entry(name: str, tensor: Tensor, encoding: str) -> dict:
    return {
        "name": name,
        "shape": list(tensor.shape),
        "dtype": _dtype_name(tensor.dtype),
        "encoding": encoding,
    }


def save_sparse(model: nn.Module, path: PathLike) -> None:
    """Write ``model`` to ``path`` with each masked tensor stored sparse and every other tensor as is.

    ``path``: a file name or a writable binary file object. The file loads with ``load_sparse`` into a
    freshly built model of the same architecture (see the module docstring for its layout).

    Example:
        >>> apply_masks(model, find_masks(model, "magnitude", density=0.05))
        >>> save_sparse(model, "resnet18_d005.pt")
        >>> load_sparse("resnet18_d005.pt", torchvision.models.resnet18())
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    entries, masks = _plain_entries(model)
    header, dense, sparse = [], {}, {}
    for name, value in entries:
        value = value.detach().cpu()
        if name not in masks:
            header.append(_header_entry(name, value, "dense"))
            dense[name] = value.clone()
            continue
        mask = masks[name].cpu()
        kept = int(mask.sum())
        entry = {"values": value[mask].contiguous()}
        if _indices_nbytes(mask.numel(), kept) < _bitmap_nbytes(mask.numel()):
            entry["indices"] = mask.reshape(-1).nonzero().reshape(-1).to(index_dtype(mask.numel()))
            header.append(_header_entry(name, value, "indices"))
        else:
            entry["bitmap"] = pack_bits(mask)
            header.append(_header_entry(name, value, "bitmap"))
        sparse[name] = entry
    torch.save(
        {"format": FORMAT, "version": VERSION, "header": header, "dense": dense, "sparse": sparse}, path
    )


def _read(path: PathLike) -> dict:
    if isinstance(path, (str, os.PathLike)):
        file = Path(path)
        if not file.exists():
            raise FileNotFoundError(f"load_sparse: there is no file {str(file)!r}")
        if not file.is_file():
            raise ValueError(f"load_sparse: path {str(file)!r} is not a file (a file written by save_sparse)")
    elif not hasattr(path, "read"):
        raise TypeError(f"path must be a file name or a binary file object, got {type(path).__name__}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on a file that is not a torch file
        raise ValueError(
            f"load_sparse: {path!r} is not a file written by save_sparse (torch.load cannot read it: {err})"
        ) from err
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(
            f"load_sparse: {path!r} is a torch file but not one written by save_sparse (no "
            f"'format': {FORMAT!r}); a plain state_dict loads with model.load_state_dict(torch.load(path))"
        )
    if obj.get("version") != VERSION:
        raise ValueError(
            f"load_sparse: {path!r} has format version {obj.get('version')!r}; this px-lightning reads "
            f"version {VERSION}: load it with the px-lightning that wrote it"
        )
    return obj


def _describe(shape: list[int], dtype: str) -> str:
    return f"shape {tuple(shape)} {dtype}"


def _check_architecture(header: list[dict], expected: list[tuple[str, Tensor]], path: PathLike) -> None:
    # Walk the model's tensors in order and report the first that the file lacks or holds differently,
    # then the first tensor of the file the model lacks.
    in_file = {entry["name"]: entry for entry in header}
    start = f"load_sparse: {path!r} was saved from another architecture:"
    for name, tensor in expected:
        shape, dtype = list(tensor.shape), _dtype_name(tensor.dtype)
        entry = in_file.get(name)
        if entry is None:
            raise ValueError(f"{start} the model's tensor {name!r} ({_describe(shape, dtype)}) is not in it")
        if entry["shape"] != shape or entry["dtype"] != dtype:
            raise ValueError(
                f"{start} tensor {name!r}: the model expects {_describe(shape, dtype)}, the file holds "
                f"{_describe(entry['shape'], entry['dtype'])}"
            )
    names = {name for name, _ in expected}
    for entry in header:
        if entry["name"] not in names:
            raise ValueError(
                f"{start} its tensor {entry['name']!r} ({_describe(entry['shape'], entry['dtype'])}) "
                "is not in the model"
            )


def _decode(name: str, entry: dict, like: Tensor) -> tuple[Tensor, Tensor]:
    """The dense value (zeros where pruned) and the mask of a sparse entry, on ``like``'s device."""
    numel = like.numel()
    if "bitmap" in entry:
        mask = unpack_bits(entry["bitmap"], numel)
    else:
        indices = entry["indices"].long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel):
            raise ValueError(f"load_sparse: the file is corrupt: indices of {name!r} out of range")
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[indices] = True
    values = entry["values"]
    if values.numel() != int(mask.sum()) or mask.numel() != numel:
        raise ValueError(
            f"load_sparse: the file is corrupt: {name!r} holds {values.numel()} values for "
            f"{int(mask.sum())} kept positions"
        )
    dense = torch.zeros(numel, dtype=values.dtype)
    dense[mask] = values
    return dense.view(like.shape).to(like.device), mask.view(like.shape).to(like.device)


def load_sparse(path: PathLike, model: nn.Module) -> nn.Module:
    """Load a file of ``save_sparse`` into ``model`` (same architecture), installing its masks; returns it.

    Every tensor's name, shape and dtype is checked against the model before anything is written: a file
    of another architecture is refused with a ``ValueError`` naming the first mismatched tensor. The
    masks are installed as ``apply_masks`` does (an existing mask is updated in place). A model whose
    tensor carries a mask that the file stores dense is refused (build the model afresh, or
    ``remove_masks`` first).

    Example:
        >>> model = load_sparse("resnet18_d005.pt", torchvision.models.resnet18())
        >>> sparsity_report(model)["density"]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    obj = _read(path)
    expected, model_masks = _plain_entries(model)
    _check_architecture(obj["header"], expected, path)
    stored_dense = [n for n in model_masks if n in obj["dense"]]
    if stored_dense:
        raise ValueError(
            f"load_sparse: the model carries a mask on {stored_dense[0]!r}, which {path!r} stores without "
            "one: load into a freshly built model (or remove_masks(model) first)"
        )
    like = dict(expected)
    masks = {}
    with torch.no_grad():
        for name, entry in obj["sparse"].items():
            value, masks[name] = _decode(name, entry, like[name])
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            target = (
                module.parametrizations[attr].original
                if parametrize.is_parametrized(module, attr)
                else getattr(module, attr)
            )
            target.copy_(value)
        result = model.load_state_dict(obj["dense"], strict=False)
    if result.unexpected_keys:  # the header check makes this unreachable unless the file is corrupt
        raise ValueError(f"load_sparse: the file is corrupt: unexpected tensors {result.unexpected_keys[:5]}")
    apply_masks(model, masks)
    return model


__all__ = [
    "FORMAT",
    "VERSION",
    "encoded_nbytes",
    "index_dtype",
    "load_sparse",
    "pack_bits",
    "save_sparse",
    "unpack_bits",
]

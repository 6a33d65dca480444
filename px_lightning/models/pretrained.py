"""Load pre-trained backbone weights from local files into an encoder (e.g. smp's ResNet-50 encoder).

Formats:
    ``torchvision``: an ImageNet-supervised ResNet state dict (``conv1.weight``, ..., ``fc.weight``); ``fc`` dropped.
    ``mocov2``: a MoCo v2 checkpoint, ``{"state_dict": {"module.encoder_q.conv1.weight", ...}}``; only the
        query encoder is read, its ``fc`` (projection head) dropped; the key encoder and queue are ignored.
    ``dino``: a plain ResNet-50 state dict without ``fc`` (as DINO publishes its ResNet-50 backbone).
    ``auto``: ``mocov2`` when keys start with ``module.encoder_q.``, else ``torchvision`` when ``fc.weight``
        is present, else ``dino``.

Loading is strict: every tensor of the encoder's state dict must come from the file (BatchNorm's
``num_batches_tracked`` counters excepted: older torchvision files lack them), and every tensor the
format keeps must belong to the encoder with the same shape. Otherwise a ``ValueError`` names the
missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

PRETRAINED_FORMATS = ("auto", "torchvision", "mocov2", "dino")
_MOCO_PREFIX = "module.encoder_q."
_HEAD_PREFIXES = ("fc.",)
_OPTIONAL_SUFFIX = "num_batches_tracked"


@dataclass
class PretrainedReport:
    """What ``load_pretrained_encoder`` did: the format used, the keys loaded, the file keys dropped
    (heads and, for MoCo, the key encoder and queue) and the encoder keys kept at their own values
    (only BatchNorm ``num_batches_tracked`` counters absent from the file)."""

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"pretrained file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # re-raised with the file named
        detail = _load_error(err)
        if "Unsupported global" in detail:  # a real checkpoint that pickles more than tensors
            raise ValueError(
                f"pretrained file {path} is a PyTorch checkpoint holding objects other than tensors and plain "
                f"containers ({detail}), which torch.load(weights_only=True) refuses to unpickle; if you "
                "trust the file, re-save its weights: torch.save(torch.load(path, weights_only=False)"
                "['state_dict'], 'weights.pth')"
            ) from err
        raise ValueError(
            f"{path} is not a PyTorch checkpoint (torch.load failed: {type(err).__name__}: {detail}); give a "
            "file written by torch.save(model.state_dict(), path)"
        ) from err
    # Training checkpoints (MoCo, Lightning) wrap the weights in "state_dict".
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"pretrained file {path} does not hold a state dict (a dict of tensors, possibly under "
            "'state_dict'); save model.state_dict()"
        )
    return dict(obj)


def _load_error(err: Exception) -> str:
    """The informative line of a ``torch.load`` error (its weights-only errors open with a long preamble)."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else repr(err)


def detect_format(state_dict: dict[str, Tensor]) -> str:
    """``mocov2``, ``torchvision`` or ``dino`` for a state dict, as ``format="auto"`` decides."""
    if any(k.startswith(_MOCO_PREFIX) for k in state_dict):
        return "mocov2"
    if "fc.weight" in state_dict:
        return "torchvision"
    return "dino"


def _detection_reason(state_dict: dict[str, Tensor], fmt: str) -> str:
    """Why ``detect_format`` chose ``fmt``, with a few of the file's keys."""
    rule = {
        "mocov2": f"keys start with {_MOCO_PREFIX!r}",
        "torchvision": "'fc.weight' is present",
        "dino": f"no key starts with {_MOCO_PREFIX!r} and there is no 'fc.weight'",
    }[fmt]
    return f"{rule}; keys {_list(list(state_dict), limit=4)}"


def _convert(state_dict: dict[str, Tensor], fmt: str) -> tuple[dict[str, Tensor], list[str]]:
    """Map a file's keys to encoder keys; returns (kept tensors, dropped file keys)."""
    kept, dropped = {}, []
    if fmt == "mocov2":
        if not any(k.startswith(_MOCO_PREFIX) for k in state_dict):
            raise ValueError(f"format 'mocov2' expects keys under {_MOCO_PREFIX!r}; none found")
        for k, v in state_dict.items():
            name = k[len(_MOCO_PREFIX) :] if k.startswith(_MOCO_PREFIX) else None
            if name is None or name.startswith(_HEAD_PREFIXES):
                dropped.append(k)
            else:
                kept[name] = v
    elif fmt == "torchvision":
        for k, v in state_dict.items():
            (dropped.append(k) if k.startswith(_HEAD_PREFIXES) else kept.__setitem__(k, v))
    else:  # dino: a plain backbone; anything extra is a mismatch, reported below
        kept = dict(state_dict)
    return kept, dropped


def _list(keys: list[str], limit: int = 12) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_pretrained_encoder(encoder: nn.Module, path: str | Path, format: str = "auto") -> PretrainedReport:
    """Load ``path`` into ``encoder`` in place; raise ``ValueError`` naming any unmatched key.

    Example:
        >>> model = create_segmentation_model("deeplabv3plus", "resnet50")
        >>> report = load_pretrained_encoder(model.encoder, "moco_v2_800ep_pretrain.pth.tar", "auto")
        >>> report.format, len(report.loaded)
        ('mocov2', 318)
    """
    if format not in PRETRAINED_FORMATS:
        raise ValueError(f"pretrained_format must be one of {PRETRAINED_FORMATS}, got {format!r}")
    path = Path(path)
    raw = _read_state_dict(path)
    fmt = detect_format(raw) if format == "auto" else format
    weights, dropped = _convert(raw, fmt)
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in weights and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in weights if k not in expected]
    shapes = [
        f"{k} (file {tuple(weights[k].shape)}, encoder {tuple(expected[k].shape)})"
        for k in weights
        if k in expected and weights[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        described = (
            f"auto-detected format {fmt!r}: {_detection_reason(raw, fmt)}"
            if format == "auto"
            else f"format {fmt!r}"
        )
        parts = [f"pretrained file {path} ({described}) does not match the encoder {type(encoder).__name__}:"]
        if missing:
            parts.append(f"encoder keys not in the file ({len(missing)}): {_list(missing)}")
        if unexpected:
            parts.append(f"file keys the encoder lacks ({len(unexpected)}): {_list(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_list(shapes)}")
        parts.append(
            "check the encoder name and pretrained_format (torchvision, mocov2, dino)"
            + ("; give pretrained_format explicitly if the detection is wrong" if format == "auto" else "")
        )
        raise ValueError("\n  ".join(parts))
    kept = [k for k in expected if k not in weights]
    # nn.Module.load_state_dict, not the encoder's own: smp's ResNet encoder pops fc.* from the dict it is
    # given and returns nothing. Pass a fresh dict so the caller's is never changed.
    result = nn.Module.load_state_dict(encoder, dict(weights), strict=False)
    left = [k for k in result.missing_keys if not k.endswith(_OPTIONAL_SUFFIX)]
    if left or result.unexpected_keys:  # cannot happen after the checks above; never load silently partial
        raise RuntimeError(f"loading {path} left {left} unloaded and {result.unexpected_keys} unused")
    report = PretrainedReport(str(path), fmt, loaded=list(weights), dropped=dropped, kept=kept)
    log.info(
        "loaded %d tensors from %s (format %s); dropped %d file keys%s",
        len(report.loaded),
        path,
        fmt,
        len(dropped),
        f"; kept {len(kept)} encoder counters" if kept else "",
    )
    return report

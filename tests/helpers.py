"""Shared test helpers: the strict model snapshot, the counting scorers, tiny networks, scoring batches,
the conformance fixtures of the authors' code.

Tests import these directly (``from helpers import unchanged``); ``conftest.py`` offers the same as
fixtures. Everything here is a real part (real ``nn`` modules, real scorers): nothing is mocked.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils import parametrize
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2
from torchvision.models.vision_transformer import VisionTransformer

from px_lightning.pruning.scorers import MagnitudeScorer, PXScorer

# The authors' published networks and the fixtures their code wrote (../shared/conformance, beside the repo).
CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance"
sys.path.insert(0, str(CONFORMANCE))
import models as conformance_models  # ../shared/conformance/models.py, through the sys.path entry above

# How close a conformance score must come to the published one, relative to the layer's largest score.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}


def snapshot(model: nn.Module) -> dict:
    """Everything scoring must leave as found: weights and buffers (BatchNorm statistics included) by
    value, the identity, dtype, requires_grad and .grad of every parameter (identity of buffers too),
    train/eval mode of every module, hooks and parametrizations. One strictness for every test: none
    needs less."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": [
            (
                n,
                id(p),
                p.requires_grad,
                p.dtype,
                None if p.grad is None else p.grad.clone(),
            )
            for n, p in model.named_parameters()
        ],
        "buffers": [(n, id(b)) for n, b in model.named_buffers()],
        "modules": [(n, type(m), m.training) for n, m in model.named_modules()],
        "hooks": [
            (
                n,
                list(m._forward_hooks.items()),
                list(m._forward_pre_hooks.items()),
                list(m._backward_hooks.items()),
            )
            for n, m in model.named_modules()
        ],
        "parametrizations": [
            (n, attr, [type(p) for p in m.parametrizations[attr]])
            for n, m in model.named_modules()
            if parametrize.is_parametrized(m)
            for attr in m.parametrizations
        ],
    }


def assert_same(before: dict, after: dict) -> None:
    """Asserts two ``snapshot`` results are equal, naming the first tensor or section that differs."""
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k
    for b, a in zip(before["params"], after["params"], strict=True):
        assert b[:4] == a[:4], b[0]
        assert (b[4] is None and a[4] is None) or (
            b[4] is not None and a[4] is not None and torch.equal(b[4], a[4])
        ), f"{b[0]}.grad"
    for key in ("buffers", "modules", "hooks", "parametrizations"):
        assert before[key] == after[key], key


@contextlib.contextmanager
def unchanged(model: nn.Module) -> Iterator[dict]:
    """``with unchanged(model): ...`` asserts on exit that the block left ``model`` exactly as found."""
    before = snapshot(model)
    yield before
    assert_same(before, snapshot(model))


class CountingScorer:
    """Mixin put before a real scorer class: ``calls`` and ``batch_counts`` record each counted call."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = 0
        self.batch_counts: list[int] = []

    def count(self, batches) -> None:
        self.calls += 1
        self.batch_counts.append(len(batches))


class CountingPX(CountingScorer, PXScorer):
    """The real PX scorer, counting its calls and the batches it was given."""

    def gradient_sums(self, model, weights, masks, batches):
        # Counted here: one call a round, whether find_masks scores whole (score) or sharded (partial_scores).
        self.count(batches)
        return super().gradient_sums(model, weights, masks, batches)


class CountingMagnitude(CountingScorer, MagnitudeScorer):
    """The real magnitude scorer, counting its calls."""

    def score(self, model, weights, masks, batches, loss_fn=None):
        self.count(batches)
        return super().score(model, weights, masks, batches, loss_fn)


class TinyNet(nn.Module):
    """Conv-BN-ReLU x2, pooling, two Linear layers: 2.6k prunable weights, biases on some layers."""

    def __init__(self, num_classes: int = 4, norm: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(16) if norm else nn.Identity()
        self.hidden = nn.Linear(16, 32, bias=bias)
        self.fc = nn.Linear(32, num_classes, bias=bias)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(F.relu(self.hidden(x)))


def mlp(inputs: int = 4, hidden: int = 8, outputs: int = 2, bias: bool = True) -> nn.Sequential:
    """Linear-ReLU-Linear (parameters ``0.weight``, ``2.weight``); seed torch first for fixed weights."""
    return nn.Sequential(
        nn.Linear(inputs, hidden, bias=bias), nn.ReLU(), nn.Linear(hidden, outputs, bias=bias)
    )


def conv_linear(channels: int = 8, size: int = 8, classes: int = 10, kernel: int = 3) -> nn.Sequential:
    """Conv-ReLU-Flatten-Linear for ``size`` x ``size`` RGB inputs (parameters ``0.weight``, ``3.weight``)."""
    side = size - kernel + 1
    return nn.Sequential(
        nn.Conv2d(3, channels, kernel), nn.ReLU(), nn.Flatten(), nn.Linear(channels * side * side, classes)
    )


def scoring_batches(
    n: int = 2, batch: int = 4, shape: tuple[int, ...] = (3, 8, 8), classes: int = 10, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` (inputs, labels) batches from a seeded generator: the same batches on every call."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n)
    ]


def load_conformance(name: str, dtype: torch.dtype) -> tuple[dict, nn.Module, list]:
    """The conformance fixture ``name`` (a file of ../shared/conformance), its network built with the
    fixture's weights in ``dtype`` and eval mode, and its scoring batches in ``dtype``."""
    fixture = torch.load(CONFORMANCE / name, weights_only=True)
    model = conformance_models.build(fixture["model"], fixture["normalization"])
    model.load_state_dict(fixture["state_dict"])
    model.to(dtype).eval()
    batches = [(x.to(dtype), y) for x, y in fixture["batches"]]
    return fixture, model, batches


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference of ``a`` and ``b``, relative to ``b``'s largest magnitude (float64)."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def trainer_kwargs(tmp_path, **overrides) -> dict:
    """A quiet one-CPU Trainer's arguments (no logger, checkpoints, progress bar, summary, sanity
    validation; 4 steps), ``overrides`` on top: ``pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1))``."""
    kwargs = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 4,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
        "num_sanity_val_steps": 0,
    }
    kwargs.update(overrides)
    return kwargs


def run_two_ranks(script: Path, out: Path, *args: str, timeout: float = 120) -> None:
    """Runs ``python script RANK PORT out *args`` as two real processes (ranks 0 and 1) meeting on a free
    local port, and asserts both exit cleanly (the failing one's stderr tail in the message)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), port, str(out), *args], stderr=subprocess.PIPE
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err.decode()[-2000:]


def small_convnext() -> nn.Module:
    """A ConvNeXt-style network: LayerNorm2d after the stem and between stages, LayerNorm in the blocks,
    layer scale, stochastic depth."""
    blocks = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]
    return ConvNeXt(blocks, stochastic_depth_prob=0.1, num_classes=10)


def small_vit() -> nn.Module:
    """A ViT at 32x32; torchvision zero-initialises ``heads.head``."""
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )


def small_swin(v2: bool = False) -> nn.Module:
    """A Swin transformer at 32x32: window attention, stochastic depth; ``v2``: Swin V2's blocks (scaled
    cosine attention, a position-bias table through ``16 * sigmoid``) and patch merging."""
    blocks = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    return SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[1, 1],
        num_heads=[1, 2],
        window_size=[2, 2],
        stochastic_depth_prob=0.1,
        num_classes=10,
        **blocks,
    )


# One small network of each modern kind, fresh (weights=None), 10 classes, for 32x32 inputs.
MODERN_NETWORKS = {
    "mobilenet_v3_small": partial(torchvision.models.mobilenet_v3_small, weights=None, num_classes=10),
    "convnext_style": small_convnext,
    "vit": small_vit,
    "swin": small_swin,
}

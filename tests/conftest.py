"""Shared fixtures; the plain functions and classes behind them live in ``helpers.py``."""

from __future__ import annotations

import helpers
import pytest
import torch


@pytest.fixture
def unchanged():
    """``with unchanged(model): ...`` asserts on exit that the block left the model exactly as found."""
    return helpers.unchanged


@pytest.fixture
def tiny_cnn() -> helpers.TinyNet:
    """The conv-BN-ReLU TinyNet, seeded (0), for 3-channel inputs and 4 classes."""
    torch.manual_seed(0)
    return helpers.TinyNet()


@pytest.fixture
def tiny_mlp() -> torch.nn.Sequential:
    """Linear(4, 8)-ReLU-Linear(8, 2), seeded (0)."""
    torch.manual_seed(0)
    return helpers.mlp()


@pytest.fixture
def scoring_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two seeded batches of four 3x8x8 images with labels in 0..9."""
    return helpers.scoring_batches()

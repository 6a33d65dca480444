"""Shared fixtures: seeded tiny networks and scoring batches. The plain functions and classes behind them
(and the strict ``unchanged`` model check, the counting scorers, ``trainer_kwargs``) live in ``helpers.py``,
which tests import directly where they need more than the fixtures' defaults."""

from __future__ import annotations

import helpers
import pytest
import torch


@pytest.fixture
def tiny_mlp() -> torch.nn.Sequential:
    """Linear(4, 8)-ReLU-Linear(8, 2), seeded (0)."""
    torch.manual_seed(0)
    return helpers.mlp()


@pytest.fixture
def tiny_conv_linear() -> torch.nn.Sequential:
    """Conv2d(3, 8, 3)-ReLU-Flatten-Linear(288, 10) for 3x8x8 inputs, seeded (0)."""
    torch.manual_seed(0)
    return helpers.conv_linear(channels=8, size=8, classes=10)


@pytest.fixture
def scoring_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two seeded batches of four 3x8x8 images with labels in 0..9 (``helpers.scoring_batches()``)."""
    return helpers.scoring_batches()

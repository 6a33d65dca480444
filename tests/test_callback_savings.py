"""The callback's savings: FLOPs and parameter ratios logged to TensorBoard, N:M masks, the sparse file."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callback_helpers import LitClassifier, TensorDataModule, make_tensors, trainer_kwargs

from px_lightning.callbacks import ForesightPruningCallback
from px_lightning.pruning import get_masks, load_sparse, satisfies_nm, savings_report


def test_flops_and_params_ratios_are_logged_and_the_sparse_file_loads_into_a_fresh_module(tmp_path):
    pl.seed_everything(21)
    module = LitClassifier()
    path = tmp_path / "export" / "pruned.pt"
    callback = ForesightPruningCallback(
        method="magnitude", density=0.3, num_batches=1, pattern="2:4", export_sparse=str(path), verbose=False
    )
    logger = TensorBoardLogger(str(tmp_path), name="tb", default_hp_metric=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=logger, max_steps=2), callbacks=[callback])
    trainer.fit(module, datamodule=TensorDataModule(make_tensors(32)))

    masks = get_masks(module)
    # 2:4 in every tensor whose input dimension is a multiple of 4 (conv1 reads 3 channels: left free).
    assert all(satisfies_nm(m, "2:4") for n, m in masks.items() if n != "net.conv1.weight")
    x = make_tensors(1).tensors[0]
    expected = savings_report(module, x)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert events.Scalars("pruning/flops_ratio")[0].value == pytest.approx(expected["flops_ratio"], rel=1e-5)
    assert events.Scalars("pruning/params_ratio")[0].value == pytest.approx(
        expected["params_ratio"], rel=1e-5
    )
    # 30% of the prunable weights; biases and normalisation parameters are kept whole.
    assert 0 < expected["flops_ratio"] < 1 and 0.3 <= expected["params_ratio"] < 0.4

    # The file written at fit end gives a freshly built module the same masks and outputs.
    fresh = load_sparse(path, LitClassifier())
    assert all(torch.equal(get_masks(fresh)[n], m) for n, m in masks.items())
    module.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), module(x))


def test_pattern_and_sanity_options_are_checked_when_built():
    with pytest.raises(ValueError, match="needs a density below 1"):
        ForesightPruningCallback(method="magnitude", density=1.0, pattern="2:4")
    with pytest.raises(ValueError, match="2:x|pattern"):
        ForesightPruningCallback(method="magnitude", density=0.5, pattern="2:x")
    with pytest.raises(ValueError, match="reshuffle and invert"):
        ForesightPruningCallback(method="magnitude", density=0.5, reshuffle=True, invert=True)
    with pytest.raises(TypeError, match="export_sparse must be a file path"):
        ForesightPruningCallback(method="magnitude", density=0.5, export_sparse=3)


def test_invert_keeps_each_layers_count_with_the_lowest_scores(tmp_path):
    pl.seed_everything(22)
    plain, inverted = LitClassifier(), LitClassifier()
    inverted.load_state_dict(plain.state_dict())
    data = make_tensors(32)
    for module, invert in ((plain, False), (inverted, True)):
        callback = ForesightPruningCallback(method="magnitude", density=0.2, invert=invert, verbose=False)
        pl.Trainer(**trainer_kwargs(tmp_path, max_steps=0), callbacks=[callback]).fit(
            module, datamodule=TensorDataModule(data)
        )
    a, b = get_masks(plain), get_masks(inverted)
    assert {n: int(m.sum()) for n, m in a.items()} == {n: int(m.sum()) for n, m in b.items()}
    w = inverted.net.fc.parametrizations.weight.original.detach().abs()
    # Both fits start from the same weights: the inverted mask keeps fc's smallest magnitudes.
    start = plain.net.fc.parametrizations.weight.original.detach().abs()
    assert float(start[b["net.fc.weight"]].max()) <= float(start[a["net.fc.weight"]].min())
    assert w.shape == start.shape

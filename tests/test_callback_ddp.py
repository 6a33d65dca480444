"""ForesightPruningCallback under real two-process DDP on the CPU (gloo), against a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callback_ddp_run import DENSITY, ROUNDS, scoring_set
from callback_helpers import LitClassifier

from px_lightning.pruning import find_masks

SCRIPT = Path(__file__).resolve().parent / "callback_ddp_run.py"


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {
        (mode, rank): torch.load(out / f"{mode}_rank{rank}.pt", weights_only=False)
        for mode in ("shard", "replicate", "resumed")
        for rank in (0, 1)
    }


@pytest.fixture(scope="module")
def single_process_masks() -> dict[str, torch.Tensor]:
    # Same initialisation (seed 0) and the same scoring batches, one process, no Lightning.
    import lightning.pytorch as pl

    pl.seed_everything(0)
    module = LitClassifier()
    batches = list(DataLoader(scoring_set(), batch_size=16))
    return find_masks(module, "px", batches, density=DENSITY, rounds=ROUNDS)


def _iou(a: dict, b: dict) -> float:
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union


@pytest.mark.parametrize("mode", ["shard", "replicate"])
def test_ddp_masks_identical_across_ranks_and_match_one_process(ddp_results, single_process_masks, mode):
    rank0, rank1 = ddp_results[(mode, 0)], ddp_results[(mode, 1)]
    assert rank0["world_size"] == rank1["world_size"] == 2
    # shard: each rank scored its 2 of the 4 whole batches in each round; replicate: all 4.
    expected = [2] * ROUNDS if mode == "shard" else [4] * ROUNDS
    assert rank0["batch_counts"] == rank1["batch_counts"] == expected
    masks0, masks1 = rank0["masks"], rank1["masks"]
    assert set(masks0) == set(masks1) and len(masks0) == 4
    for name in masks0:
        assert torch.equal(masks0[name], masks1[name]), name
    reference = single_process_masks
    assert set(reference) == set(masks0)
    assert _iou(masks0, reference) >= 0.999
    # After training, the ranks agree on every parameter and mask (BatchNorm running statistics are
    # per-rank until DDP's next broadcast) and the pruned entries are zero.
    for key, value in rank0["state"].items():
        if "running_" not in key and "num_batches_tracked" not in key:
            assert torch.equal(value, rank1["state"][key]), key
    for name, mask in masks0.items():
        module_name, _, attr = name.rpartition(".")
        original = rank0["state"][f"{module_name}.parametrizations.{attr}.original"]
        assert bool((original[~mask] == 0).all())


def test_ddp_does_not_broadcast_masks_every_step(ddp_results):
    synced = ddp_results[("shard", 0)]["synced_buffers"]
    assert synced, "DDP should still sync the BatchNorm buffers"
    assert any("running_mean" in n for n in synced)
    assert not any(n.endswith(".mask") for n in synced)


def test_ddp_resume_restores_masks_on_every_rank_without_scoring(ddp_results):
    saved = ddp_results[("shard", 0)]["masks"]
    for rank in (0, 1):
        resumed = ddp_results[("resumed", rank)]
        assert resumed["calls"] == 0, f"rank {rank} scored again"
        assert set(resumed["masks"]) == set(saved)
        for name, mask in saved.items():
            assert torch.equal(resumed["masks"][name], mask), (rank, name)
            module_name, _, attr = name.rpartition(".")
            original = resumed["state"][f"{module_name}.parametrizations.{attr}.original"]
            assert bool((original[~mask] == 0).all())

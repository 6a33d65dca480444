"""ForesightPruningCallback under the spawning DDP launchers (real two-process fits on the CPU, gloo).

The workers prune and train as under ``strategy="ddp"``; the launcher then sends rank 0's ``state_dict()``
back to the main process, whose module never had masks, and loads it with ``strict=False``. The tests check
that the main process ends with rank 0's final weights, the pruned entries exactly zero.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callback_helpers import CountingPX, LitClassifier, ScoringDataModule, make_tensors, trainer_kwargs

from px_lightning.callbacks import ForesightPruningCallback
from px_lightning.pruning import get_masks

DENSITY, ROUNDS = 0.25, 2


class RecordWorker(pl.Callback):
    """In each worker, at fit end: its masks, effective weights, state dict and scoring batch counts."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = str(out_dir)

    def on_fit_end(self, trainer, pl_module):
        pruning = next(c for c in trainer.callbacks if isinstance(c, ForesightPruningCallback))
        masks = get_masks(pl_module)
        effective = {}
        for name in masks:
            module_name, _, attr = name.rpartition(".")
            effective[name] = getattr(pl_module.get_submodule(module_name), attr).detach().clone()
        record = {
            "masks": masks,
            "effective": effective,
            "state": {k: v.clone() for k, v in pl_module.state_dict().items()},
            "batch_counts": list(getattr(pruning.scorer, "batch_counts", [])),
            "world_size": trainer.world_size,
        }
        torch.save(record, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def _expected_kept(total: int, density: float) -> int:
    return total - int((1.0 - density) * total)


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_spawning_ddp_prunes_alike_on_both_ranks_and_returns_pruned_weights(tmp_path, strategy):
    pl.seed_everything(0)
    module = LitClassifier(optimizer="sgd", weight_decay=5e-3)
    initial = {n: p.detach().clone() for n, p in module.named_parameters()}
    callback = ForesightPruningCallback(method=CountingPX(), density=DENSITY, rounds=ROUNDS, verbose=False)
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, devices=2, strategy=strategy, max_steps=2, enable_checkpointing=True),
        callbacks=[callback, RecordWorker(tmp_path)],
    )
    # 4 scoring batches of 16: CountingPX (no BatchNorm warm-up) shards them, 2 whole batches per rank.
    trainer.fit(module, datamodule=ScoringDataModule(make_tensors(64), scoring=make_tensors(64, seed=7)))

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["batch_counts"] == rank1["batch_counts"] == [2] * ROUNDS
    masks = rank0["masks"]
    assert set(masks) == {"net.conv1.weight", "net.conv2.weight", "net.hidden.weight", "net.fc.weight"}
    assert all(torch.equal(masks[n], rank1["masks"][n]) for n in masks)
    total = sum(m.numel() for m in masks.values())
    assert abs(sum(int(m.sum()) for m in masks.values()) - _expected_kept(total, DENSITY)) <= 1

    # The main process: plain module (no masks), rank 0's final state, pruned entries exactly zero.
    assert not get_masks(module)
    main_state = module.state_dict()
    for name, mask in masks.items():
        weight = main_state[name]
        assert torch.equal(weight, rank0["effective"][name]), name
        assert bool((weight[~mask] == 0).all()), name
        assert not torch.equal(weight[mask], initial[name][mask]), f"{name}: the main process got no training"
    for key, value in main_state.items():
        if key not in masks:
            assert torch.equal(value, rank0["state"][key]), key

    # The worker's checkpoint (written before the teardown): plain keys, the masks in the callback's state,
    # and it loads strictly into a fresh module with the same weights as the main process.
    ckpt_path = trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(ckpt_path, weights_only=False)
    assert not any(".parametrizations." in k for k in checkpoint["state_dict"])
    saved_masks = checkpoint["callbacks"]["ForesightPruningCallback"]["masks"]
    assert all(torch.equal(saved_masks[n], masks[n]) for n in masks)
    fresh = LitClassifier.load_from_checkpoint(ckpt_path)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, main_state[key]), key


def test_fork_fit_of_an_already_masked_module_returns_its_trained_weights(tmp_path):
    # A module masked before the fit (restore_masks, apply_masks, an earlier fit in the notebook) has its
    # masks in the main process too: rank 0's parametrized keys must load there as they are.
    from px_lightning.pruning import apply_masks, find_masks

    pl.seed_everything(0)
    module = LitClassifier(optimizer="sgd", weight_decay=5e-3)
    apply_masks(module, find_masks(module, "magnitude", density=DENSITY))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    callback = ForesightPruningCallback(method="magnitude", density=DENSITY, verbose=False)
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, devices=2, strategy="ddp_fork", max_steps=2),
        callbacks=[callback, RecordWorker(tmp_path)],
    )
    trainer.fit(module, datamodule=ScoringDataModule(make_tensors(64), scoring=make_tensors(64, seed=7)))

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    after = module.state_dict()
    assert set(after) == set(before)  # still parametrized, same keys
    originals = [k for k in after if k.endswith(".original")]
    assert originals and all(
        not torch.equal(after[k], before[k]) for k in originals
    )  # trained weights came back
    for name, mask in get_masks(module).items():
        assert torch.equal(mask, rank0["masks"][name])
        assert bool((rank0["effective"][name][~mask] == 0).all())

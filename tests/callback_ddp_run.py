"""Two-process DDP fits (CPU, gloo) with ForesightPruningCallback, one per ``distributed_scoring`` mode.

Launched by ``tests/test_callback_ddp.py`` as ``python tests/callback_ddp_run.py OUT_DIR``; Lightning's DDP
launcher starts the second rank by running this script again. Each rank writes ``OUT_DIR/<mode>_rank<r>.pt``
with its masks, its final state dict and the buffers DDP broadcasts at each step; after the shard fit,
a checkpoint is resumed in a third fit (``OUT_DIR/resumed_rank<r>.pt``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning.pytorch as pl
import torch
from callback_helpers import CountingPX, LitClassifier, ScoringDataModule, make_tensors, trainer_kwargs

from px_lightning.callbacks import ForesightPruningCallback
from px_lightning.pruning import get_masks

DENSITY, ROUNDS = 0.1, 3


def scoring_set():
    return make_tensors(64, seed=7)  # 4 scoring batches of 16


class _RecordDDPBuffers(pl.Callback):
    """Names of the buffers the DDP wrapper broadcasts from rank 0 at every training forward."""

    def on_train_start(self, trainer, pl_module):
        ddp = trainer.strategy.model
        self.synced = list(ddp.named_module_buffers) if ddp.will_sync_module_buffers() else []


def _trainer(out_dir: Path, callbacks: list, max_steps: int) -> pl.Trainer:
    kwargs = trainer_kwargs(out_dir, devices=2, strategy="ddp", max_steps=max_steps, callbacks=callbacks)
    return pl.Trainer(**kwargs)


def _data() -> ScoringDataModule:
    return ScoringDataModule(make_tensors(64), scoring=scoring_set())


def main(out_dir: Path) -> None:
    for mode in ("shard", "replicate"):
        pl.seed_everything(0)
        module = LitClassifier()
        recorder = _RecordDDPBuffers()
        scorer = CountingPX()  # the real PX scorer, recording how many batches each call got
        callback = ForesightPruningCallback(
            method=scorer, density=DENSITY, rounds=ROUNDS, distributed_scoring=mode, verbose=False
        )
        trainer = _trainer(out_dir, [callback, recorder], max_steps=3)
        trainer.fit(module, datamodule=_data())
        torch.save(
            {
                "masks": get_masks(module),
                "state": module.state_dict(),
                "synced_buffers": recorder.synced,
                "world_size": trainer.world_size,
                "batch_counts": scorer.batch_counts,
            },
            out_dir / f"{mode}_rank{trainer.global_rank}.pt",
        )
        if mode == "shard":  # resume under DDP: a checkpoint (written by rank 0) into a fresh module
            trainer.save_checkpoint(out_dir / "shard.ckpt")
            pl.seed_everything(5)
            resumed_scorer = CountingPX()
            resumed = LitClassifier()
            callback = ForesightPruningCallback(
                method=resumed_scorer, density=DENSITY, rounds=ROUNDS, verbose=False
            )
            trainer = _trainer(out_dir, [callback], max_steps=6)
            trainer.fit(resumed, datamodule=_data(), ckpt_path=str(out_dir / "shard.ckpt"))
            torch.save(
                {"masks": get_masks(resumed), "state": resumed.state_dict(), "calls": resumed_scorer.calls},
                out_dir / f"resumed_rank{trainer.global_rank}.pt",
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""ForesightPruningCallback on one GPU: torchvision ResNet-50, PX with 100 rounds, 10 batches of 64 at 224x224.

Shows that scoring ran on the GPU (the device of the tensors the scorer got), and measures:
- the scoring time (all PX rounds, synchronised);
- the training-step time of the pruned model over the dense one, in ``32-true`` and ``bf16-mixed``
  (median over timed steps after warm-up; each step synchronised).

Random tensors stand in for ImageNet (nothing is downloaded). Needs a CUDA GPU with about 20 GB free.
``--accelerator cpu`` with tiny sizes runs the same code on the CPU (the test suite does, so the script is
known to work before a GPU is lent); its timings mean nothing.

Usage:
    python benchmarks/gpu_callback.py                      # prints a JSON summary, writes gpu_callback.json
    python benchmarks/gpu_callback.py --out results.json --rounds 100 --steps 30
    python benchmarks/gpu_callback.py --accelerator cpu --rounds 1 --batch-size 2 --scoring-batches 1 \
        --steps 1 --warmup 1 --image-size 32 --out /tmp/smoke.json     # smoke run, no GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from px_lightning.callbacks import ForesightPruningCallback
from px_lightning.pruning.scorers import PXScorer


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _TimedPX(PXScorer):
    """The real PX scorer, recording the device it scored on and the time of every round."""

    def __init__(self) -> None:
        super().__init__(kernel_norm="eval")
        self.devices: set[str] = set()
        self.round_s: list[float] = []

    def score(self, model, weights, masks, batches, loss_fn=None):
        self.devices.add(str(next(iter(weights.values())).device))
        _sync()
        start = time.perf_counter()
        out = super().score(model, weights, masks, batches, loss_fn)
        _sync()
        self.round_s.append(time.perf_counter() - start)
        return out


class _Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torchvision.models.resnet50(weights=None)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


class _Data(pl.LightningDataModule):
    def __init__(self, batch_size: int, scoring_batches: int, train_batches: int, size: int = 224) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.scoring = TensorDataset(
            torch.randn(scoring_batches * batch_size, 3, size, size, generator=g),
            torch.randint(0, 1000, (scoring_batches * batch_size,), generator=g),
        )
        self.train = TensorDataset(
            torch.randn(train_batches * batch_size, 3, size, size, generator=g),
            torch.randint(0, 1000, (train_batches * batch_size,), generator=g),
        )
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=False, pin_memory=True)

    def scoring_dataloader(self):
        return DataLoader(self.scoring, batch_size=self.batch_size, shuffle=False)


class _StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        _sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _sync()
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._start)


def _fit(data, precision: str, steps: int, warmup: int, callback=None, accelerator: str = "gpu") -> float:
    timer = _StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=steps + warmup,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer] + ([callback] if callback is not None else []),
    )
    trainer.fit(_Classifier(), datamodule=data)
    return statistics.median(timer.times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--scoring-batches", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per fit")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--accelerator", choices=("gpu", "cpu"), default="gpu", help="cpu: a smoke run only")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("gpu_callback.json"))
    args = parser.parse_args(argv)
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_callback.py needs a CUDA GPU (--accelerator cpu for a smoke run)")
    data = _Data(args.batch_size, args.scoring_batches, args.steps + args.warmup, args.image_size)
    result: dict = {
        "card": torch.cuda.get_device_name(0) if args.accelerator == "gpu" else "cpu (smoke run)",
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "rounds": args.rounds,
        "density": args.density,
        "scoring_batches": f"{args.scoring_batches} x {args.batch_size} x 3x{args.image_size}x{args.image_size}",
    }
    for precision in ("32-true", "bf16-mixed"):
        scorer = _TimedPX()
        callback = ForesightPruningCallback(
            method=scorer, density=args.density, rounds=args.rounds, verbose=False
        )
        masked = _fit(data, precision, args.steps, args.warmup, callback, args.accelerator)
        dense = _fit(data, precision, args.steps, args.warmup, accelerator=args.accelerator)
        result[precision] = {
            "scored_on": sorted(scorer.devices),
            "scoring_s": sum(scorer.round_s),
            "scoring_rounds": len(scorer.round_s),
            "kept_density": callback.report["density"],
            "dense_step_s": dense,
            "masked_step_s": masked,
            "masked_over_dense": masked / dense,
        }
        # written after each precision, so a run stopped by a time limit keeps what it measured
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

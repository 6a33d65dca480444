"""A LightningModule and TensorDataset DataModules for the ForesightPruningCallback tests (and DDP script).

The tiny network and the counting scorers live in ``helpers.py``; re-exported here for the callback tests.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from helpers import CountingMagnitude, CountingPX, TinyNet, trainer_kwargs
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "CountingMagnitude",
    "CountingPX",
    "LitClassifier",
    "ScoringDataModule",
    "TensorDataModule",
    "TinyNet",
    "make_tensors",
    "trainer_kwargs",
]


class LitClassifier(pl.LightningModule):
    """A user's plain LightningModule: nothing in it knows about pruning."""

    def __init__(
        self,
        optimizer: str = "sgd",
        lr: float = 0.05,
        weight_decay: float = 5e-4,
        norm: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyNet(norm=norm, bias=bias)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        if self.hparams.optimizer == "adam":
            return torch.optim.Adam(
                self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
            )
        return torch.optim.SGD(
            self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=self.hparams.weight_decay
        )


def make_tensors(n: int = 64, seed: int = 0, zeros: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, 12, 12) if zeros else torch.randn(n, 3, 12, 12, generator=g)
    return TensorDataset(x, torch.randint(0, 4, (n,), generator=g))


class TensorDataModule(pl.LightningDataModule):
    """Train batches of a TensorDataset, in order (no shuffling, so runs are reproducible)."""

    def __init__(self, dataset: TensorDataset, batch_size: int = 16) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)


class ScoringDataModule(TensorDataModule):
    """Adds ``scoring_dataloader()``: a fixed set of scoring batches separate from the training data."""

    def __init__(self, dataset: TensorDataset, scoring: TensorDataset, batch_size: int = 16) -> None:
        super().__init__(dataset, batch_size)
        self.scoring = scoring

    def scoring_dataloader(self):
        return DataLoader(self.scoring, batch_size=self.batch_size, shuffle=False)

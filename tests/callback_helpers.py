"""Small real models and TensorDataset DataModules for the ForesightPruningCallback tests (and DDP script)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from px_lightning.pruning.scorers import MagnitudeScorer, PXScorer


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


class CountingPX(PXScorer):
    """The real PX scorer, counting its calls and the batches it was given."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = 0
        self.batch_counts: list[int] = []

    def gradient_sums(self, model, weights, masks, batches):
        # Counted here: one call a round, whether find_masks scores whole (score) or sharded (partial_scores).
        self.calls += 1
        self.batch_counts.append(len(batches))
        return super().gradient_sums(model, weights, masks, batches)


class CountingMagnitude(MagnitudeScorer):
    """The real magnitude scorer, counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def score(self, model, weights, masks, batches, loss_fn=None):
        self.calls += 1
        return super().score(model, weights, masks, batches, loss_fn)


def trainer_kwargs(tmp_path, **overrides) -> dict:
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

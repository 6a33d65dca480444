"""``ImageClassifier``: a LightningModule for image classification with any backbone.

Cross-entropy loss; top-1 and top-5 accuracy (torchmetrics, ``average="micro"``: the fraction of
correct predictions, not the per-class mean) logged as ``{train,val,test}/loss``, ``/acc`` and
``/acc_top5`` (top-5 only when there are more than 5 classes). The optimizer and LR scheduler are
callables, configurable the LightningCLI way; the default is the published CIFAR-10 recipe's SGD (lr 0.1,
momentum 0.9, weight decay 1e-4) with no scheduler.

Example:
    >>> from functools import partial
    >>> module = ImageClassifier(
    ...     "resnet20", num_classes=10,
    ...     lr_scheduler=partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[80, 120], gamma=0.1),
    ... )
    >>> L.Trainer(max_epochs=160, callbacks=[ForesightPruningCallback("px", density=0.018)]).fit(module, dm)
    >>> module = ImageClassifier.load_from_checkpoint("last.ckpt")  # the pruned weights, no masks
    >>> restore_masks(module, "last.ckpt")  # px_lightning.callbacks: the masks again, before fine-tuning
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from px_lightning.models import create_model


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """SGD with lr 0.1, momentum 0.9, weight decay 1e-4 (the published CIFAR-10 recipe)."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


class ImageClassifier(L.LightningModule):
    """Image classification with a backbone from :func:`px_lightning.models.create_model` or your own.

    Args:
        model: A model name (``"resnet20"``, ``"vgg16_bn"``, ``"resnet18_tiny"``, ``"resnet50"``, any
            torchvision classifier, ...) or an ``nn.Module`` mapping images to ``num_classes`` logits.
        num_classes: Number of classes (the size of the backbone's output when ``model`` is a name).
        optimizer: ``params -> Optimizer`` (e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``; in a
            LightningCLI config, ``class_path: torch.optim.SGD`` with ``init_args``).
        lr_scheduler: ``optimizer -> LRScheduler`` or ``None``; stepped once per epoch.
        model_options: Extra keyword arguments for ``create_model`` (only with a model name).
        label_smoothing: Label smoothing of the cross-entropy loss.

    Checkpoints: the hyperparameters are saved, so ``ImageClassifier.load_from_checkpoint(path)`` rebuilds
    the module with the pruned weights (pruned entries exactly zero; pass ``model=`` again when it was an
    ``nn.Module``) but without the masks, which the pruning callback keeps in its own checkpoint state:
    fine-tuning the loaded module would let the pruned weights grow back, so call
    ``px_lightning.callbacks.restore_masks(module, path)`` first. ``trainer.fit(..., ckpt_path=path)`` with
    the callback restores them itself.
    The optimizer and scheduler are not among them (``torch.load(weights_only=True)`` refuses callables):
    a loaded module has the default optimizer unless given ``optimizer=``/``lr_scheduler=``. Under
    LightningCLI the checkpoint carries the config and the CLI restores them.

    Example:
        >>> module = ImageClassifier("vgg16_bn", num_classes=100)
        >>> logits = module(torch.randn(2, 3, 32, 32))
    """

    def __init__(
        self,
        model: str | nn.Module = "resnet20",
        num_classes: int = 10,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        model_options: dict | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        if not callable(optimizer):
            raise TypeError(
                f"optimizer must be a callable params -> Optimizer, got {type(optimizer).__name__}"
            )
        if lr_scheduler is not None and not callable(lr_scheduler):
            raise TypeError(
                f"lr_scheduler must be a callable optimizer -> LRScheduler or None, got {type(lr_scheduler).__name__}"
            )
        # The optimizer and scheduler callables stay out of the checkpoint: torch.load(weights_only=True),
        # which load_from_checkpoint uses, refuses functions and classes. An nn.Module model is saved in the
        # state dict already.
        ignore = ["optimizer", "lr_scheduler"] + ([] if isinstance(model, str) else ["model"])
        self.save_hyperparameters(ignore=ignore)
        if isinstance(model, str):
            self.model = create_model(model, num_classes, **(model_options or {}))
        elif isinstance(model, nn.Module):
            if model_options:
                raise ValueError(
                    "model_options only applies when model is a name; build the nn.Module yourself"
                )
            self.model = model
        else:
            raise TypeError(f"model must be a model name or an nn.Module, got {type(model).__name__}")
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.metrics = nn.ModuleDict()
        for stage in ("train", "val", "test"):
            self.metrics[f"{stage}_acc"] = MulticlassAccuracy(num_classes, top_k=1, average="micro")
            if num_classes > 5:
                self.metrics[f"{stage}_acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def setup(self, stage: str) -> None:
        # A datamodule that knows its class count must agree with the head, else the loss fails later
        # with an opaque index error (or, with fewer data classes, trains a head too wide in silence).
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if isinstance(data_classes, int) and data_classes != self.num_classes:
            raise ValueError(
                f"ImageClassifier has num_classes={self.num_classes} but {type(datamodule).__name__} has "
                f"{data_classes} classes: set num_classes={data_classes}"
            )

    def _check_logits(self, logits: Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the model returned logits of shape {tuple(logits.shape)}, expected (batch, {self.num_classes}); "
                "check num_classes and the model's classifier"
            )

    def _step(self, batch, stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        self._check_logits(logits)
        loss = self.loss_fn(logits, y)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(y),
            sync_dist=not on_step,
        )
        for suffix in ("acc", "acc_top5"):
            key = f"{stage}_{suffix}"
            if key in self.metrics:
                metric = self.metrics[key]
                metric(logits.detach(), y)
                # Logging the metric object lets torchmetrics accumulate over the epoch (and across ranks).
                self.log(
                    f"{stage}/{suffix}",
                    metric,
                    on_step=on_step,
                    on_epoch=True,
                    prog_bar=suffix == "acc",
                    batch_size=len(y),
                )
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """The predicted class index of each image."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).argmax(dim=1)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

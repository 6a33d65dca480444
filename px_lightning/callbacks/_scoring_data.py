"""The data pruning scores on inside a fit, shared by the pruning and the diagnostics callbacks.

The datamodule's ``scoring_dataloader()``, all of it, when it has one; else the first ``num_batches``
batches of the train dataloader. The loss-based scorers (SNIP, GraSP) use the module's own ``loss_fn``.
"""

from __future__ import annotations

import itertools
from typing import Any

import lightning.pytorch as pl
from torch import Tensor, nn


def module_loss(pl_module: pl.LightningModule) -> nn.Module | None:
    """The module's own ``loss_fn`` for the loss-based scorers (SNIP, GraSP), if it has one.

    A segmenter's loss ignores label 255; the default cross-entropy would fail on those pixels.

    Example:
        >>> find_masks(module, "snip", batches, loss_fn=module_loss(module))
    """
    loss_fn = getattr(pl_module, "loss_fn", None)
    return loss_fn if callable(loss_fn) else None


def scoring_source(trainer: pl.Trainer, num_batches: int) -> tuple[Any, int | None, str]:
    """Where the scoring data comes from: ``(loader, how many batches or None for all, description)``.

    Example:
        >>> loader, limit, source = scoring_source(trainer, 10)
    """
    datamodule = trainer.datamodule
    if datamodule is not None and callable(getattr(datamodule, "scoring_dataloader", None)):
        return datamodule.scoring_dataloader(), None, f"{type(datamodule).__name__}.scoring_dataloader()"
    # The fit loop sets its dataloaders up after on_fit_start; ask its source directly (the datamodule's or
    # module's train_dataloader(), or the loaders given to fit) for a plain loader, without the
    # DistributedSampler.
    return (
        trainer.fit_loop._data_source.dataloader(),
        num_batches,
        f"the first {num_batches} batches of the train dataloader (the datamodule has no scoring_dataloader())",
    )


def draw_scoring_batches(trainer: pl.Trainer, num_batches: int, needs_data: bool) -> tuple[list, str]:
    """The scoring batches of the fit, checked, and where they came from (for messages).

    Refuses, naming the source, a loader that cannot be iterated, no batch where the scorer
    ``needs_data``, and batches that are neither ``(inputs, targets)`` pairs nor input tensors.

    Example:
        >>> batches, source = draw_scoring_batches(trainer, 10, scorer.needs_data)
    """
    loader, limit, source = scoring_source(trainer, num_batches)
    if loader is None:
        batches = []
    else:
        try:
            batches = list(itertools.islice(iter(loader), limit))
        except TypeError as err:
            raise TypeError(
                f"cannot iterate the scoring data ({source}, a {type(loader).__name__}); give the "
                "datamodule a scoring_dataloader() returning a DataLoader"
            ) from err
    if not batches and needs_data:
        raise ValueError(
            f"ForesightPruningCallback: no scoring data: {source} yielded no batch. Give the "
            "datamodule data (check its dataset and setup()) or a non-empty scoring_dataloader()"
        )
    for batch in batches[:1]:
        ok = isinstance(batch, Tensor) or (
            isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor)
        )
        if not ok:
            raise TypeError(
                f"scoring batches must be (inputs, targets) pairs or input tensors; {source} gave a "
                f"{type(batch).__name__}: give the datamodule a scoring_dataloader() yielding pairs"
            )
    return batches, source

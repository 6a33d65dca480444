"""What the callback needs ranks to agree on, through the Lightning strategy's collectives.

Every function takes the trainer's ``strategy`` and is a no-op (or the identity) on one process, where the
strategy's collectives are. The strategy is used rather than ``torch.distributed`` so that the backend,
the process group and the device of the collective tensors (NCCL wants them on the GPU) are Lightning's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.strategies import Strategy
from torch import Tensor

from ..pruning.schedule import flatten_named, split_like

#: Values per all-reduce bucket (16 MiB of float32 scores); a larger layer goes in one bucket.
BUCKET = 1 << 22


def all_reduce_sum(
    scores: dict[str, Tensor], strategy: Strategy, bucket_size: int = BUCKET
) -> dict[str, Tensor]:
    """Sum ``scores`` over the ranks, in place, about ``bucket_size`` values per collective; returns them.

    One collective per layer would cost ResNet-50 161 of them a round, one for all layers a second
    full-size copy of the scores (100 MB there).

    Example:
        >>> find_masks(..., reduce_scores=lambda s: all_reduce_sum(s, trainer.strategy))
    """
    bucket: dict[str, Tensor] = {}
    size = 0
    for name, score in scores.items():
        bucket[name] = score
        size += score.numel()
        if size >= bucket_size:
            _reduce_bucket(bucket, strategy)
            bucket, size = {}, 0
    if bucket:
        _reduce_bucket(bucket, strategy)
    return scores


def _reduce_bucket(tensors: dict[str, Tensor], strategy: Strategy) -> None:
    only = next(iter(tensors.values()))
    if len(tensors) == 1 and only.is_contiguous():
        summed = strategy.reduce(only, reduce_op="sum")
        if summed is not only:  # DDP reduces in place; a strategy that returns a new tensor is copied back
            only.copy_(summed)
        return
    flat = strategy.reduce(flatten_named(tensors), reduce_op="sum")
    for t, summed in zip(tensors.values(), split_like(flat, tensors).values()):
        t.copy_(summed)


def broadcast_masks(masks: dict[str, Tensor], strategy: Strategy) -> dict[str, Tensor]:
    """Rank 0's ``masks`` on every rank, each on the device it had here.

    Example:
        >>> masks = broadcast_masks(masks, trainer.strategy)
    """
    # One flat byte tensor, sent from the host: the strategy pickles what it broadcasts, and a pickled
    # GPU tensor would arrive on rank 0's device index on every rank.
    flat = flatten_named(masks).to("cpu", torch.uint8)
    flat = strategy.broadcast(flat, src=0)
    return {n: flat_mask.to(masks[n].device, torch.bool) for n, flat_mask in split_like(flat, masks).items()}


def _fingerprint(batches: Sequence) -> list[tuple]:
    prints = []
    for batch in batches:
        x = batch if isinstance(batch, Tensor) else batch[0]
        xd = x.detach().double()
        prints.append((tuple(x.shape), round(float(xd.sum()), 6), round(float((xd * xd).sum()), 6)))
    return prints


def check_same_batches(batches: Sequence, strategy: Strategy) -> None:
    """Raise on every rank unless every rank holds the same scoring ``batches`` (by a cheap fingerprint).

    Sharding needs the same list on every rank; the fingerprint of the inputs catches shuffled loaders.

    Example:
        >>> check_same_batches(batches, trainer.strategy)
    """
    mine = _fingerprint(batches)
    same = strategy.broadcast(mine, src=0) == mine
    # All ranks decide together, so that none goes on to score while another raises.
    if not strategy.reduce_boolean_decision(same, all=True):
        raise ValueError(
            "the scoring batches differ across ranks (a shuffled train dataloader?), so sharded scoring would "
            "mix different data: give the datamodule a deterministic scoring_dataloader(), seed the run "
            "(seed_everything), or set distributed_scoring='replicate'"
        )


def shared_generator(strategy: Strategy) -> torch.Generator:
    """A generator seeded alike on every rank: one seed drawn on rank 0 and broadcast.

    Drawn from the global RNG, so ``seed_everything`` makes it reproducible; reshuffled masks and
    re-initialised weights are then the same everywhere.

    Example:
        >>> generator = shared_generator(trainer.strategy)
    """
    seed = int(torch.randint(0, 2**62, (1,)).item())
    seed = strategy.broadcast(seed, src=0)
    return torch.Generator().manual_seed(seed)

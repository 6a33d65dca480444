"""Worker for the callback's collectives tests: two gloo processes on the CPU.

``sum`` (tests/test_callback.py): the bucketed score all-reduce. ``agree`` (tests/test_callback_validation.py):
rank 0's masks broadcast to every rank, and the same-batches check passing on equal batches and raising on
every rank on different ones.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies import DDPStrategy

from px_lightning.callbacks._distributed import all_reduce_sum, broadcast_masks, check_same_batches


def _sum(rank: int, strategy: DDPStrategy, out: str) -> None:
    g = torch.Generator().manual_seed(0)
    base = {f"l{i}.weight": torch.rand(n, generator=g) for i, n in enumerate([7, 20, 30, 120])}
    base["t.weight"] = torch.rand(12, 10, generator=g).t()  # alone in its bucket, and not contiguous
    base.update({f"m{i}.weight": torch.rand(n, generator=g) for i, n in enumerate([3, 5, 64, 2])})
    scores = {n: (rank + 1) * t for n, t in base.items()}
    # Small buckets: several layers per bucket, a large layer alone, a last bucket. The strategy's
    # collectives need only the process group, which exists here.
    summed = all_reduce_sum(scores, strategy, bucket_size=50)
    if rank == 0:
        torch.save({"base": base, "summed": summed}, out)


def _agree(rank: int, strategy: DDPStrategy, out: str) -> None:
    g = torch.Generator().manual_seed(rank)  # each rank its own masks
    masks = {"a.weight": torch.rand(3, 4, generator=g) > 0.5, "b.weight": torch.rand(5, generator=g) > 0.5}
    received = broadcast_masks(masks, strategy)
    same = [torch.ones(2, 3), (torch.zeros(2, 3), torch.zeros(2))]
    check_same_batches(same, strategy)  # equal batches: passes on every rank
    try:
        check_same_batches([torch.full((2, 3), float(rank))], strategy)
        refused = ""
    except ValueError as err:
        refused = str(err)
    torch.save({"masks": masks, "received": received, "refused": refused}, f"{out}.rank{rank}")


def main(rank: int, port: str, out: str, mode: str = "sum") -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    # Two CPU processes, as a Trainer(accelerator="cpu", devices=2, strategy="ddp") would describe them.
    environment = LightningEnvironment()
    environment.set_world_size(2)
    environment.set_global_rank(rank)
    strategy = DDPStrategy(parallel_devices=[torch.device("cpu")] * 2, cluster_environment=environment)
    {"sum": _sum, "agree": _agree}[mode](rank, strategy, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], *sys.argv[4:])

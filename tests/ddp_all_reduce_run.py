"""Worker for tests/test_callback.py's bucketed all-reduce test: two gloo processes on the CPU."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy

from px_lightning.callbacks._distributed import all_reduce_sum


def main(rank: int, port: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(0)
    base = {f"l{i}.weight": torch.rand(n, generator=g) for i, n in enumerate([7, 20, 30, 120])}
    base["t.weight"] = torch.rand(12, 10, generator=g).t()  # alone in its bucket, and not contiguous
    base.update({f"m{i}.weight": torch.rand(n, generator=g) for i, n in enumerate([3, 5, 64, 2])})
    scores = {n: (rank + 1) * t for n, t in base.items()}
    # Small buckets: several layers per bucket, a large layer alone, a last bucket. The strategy's
    # collectives need only the process group, which exists here.
    summed = all_reduce_sum(scores, DDPStrategy(), bucket_size=50)
    if rank == 0:
        torch.save({"base": base, "summed": summed}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])

"""Training-step time of a masked CIFAR ResNet-20 over the dense one, same weights and data, one run (CPU).

The masked model carries the callback's parametrization (``WeightMask``: effective weight = original * mask,
recomputed in every forward), at 10% density (random masks, per layer). Dense and masked steps alternate in
blocks so that load from other processes on a shared machine hits both alike. The ratio of the fastest
blocks (least disturbed by other load) is the figure recorded in ``benchmarks/README.md`` (target: at most
1.05); the ratio of the medians is printed too.

Usage:
    python benchmarks/masked_training.py                 # batch 128, 4 blocks of 2 steps each
    python benchmarks/masked_training.py --blocks 10 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from px_lightning.pruning import apply_masks, find_masks, sparsity_report

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "conformance"))
from models import build  # the conformance CIFAR ResNet-20


def _step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def _time_steps(model, optimizer, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        _step(model, optimizer, x, y)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--blocks", type=int, default=4, help="alternating dense/masked blocks")
    parser.add_argument("--steps", type=int, default=2, help="training steps per block")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = build("resnet20").train()
    masked = copy.deepcopy(dense)
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    # Per-layer random masks: every layer keeps args.density (no layer collapse), as cheap as any other mask.
    apply_masks(masked, find_masks(masked, "random", density=args.density, scope="local", seed=0))
    models = {"dense": dense, "masked": masked}
    optimizers = {
        k: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4) for k, m in models.items()
    }
    for k, model in models.items():  # warm-up (allocator, oneDNN primitive caches)
        _step(model, optimizers[k], x, y)
    times: dict[str, list[float]] = {"dense": [], "masked": []}
    for block in range(args.blocks):
        order = ("dense", "masked") if block % 2 == 0 else ("masked", "dense")
        for k in order:
            times[k].append(_time_steps(models[k], optimizers[k], x, y, args.steps))
    dense_s, masked_s = min(times["dense"]), min(times["masked"])
    dense_med, masked_med = statistics.median(times["dense"]), statistics.median(times["masked"])
    result = {
        "batch_size": args.batch_size,
        "density": sparsity_report(masked)["density"],
        "threads": torch.get_num_threads(),
        "dense_step_s": dense_s,
        "masked_step_s": masked_s,
        "ratio": masked_s / dense_s,
        "ratio_of_medians": masked_med / dense_med,
    }
    print(
        f"ResNet-20, batch {args.batch_size}, CPU, {result['threads']} threads, density {result['density']:.3f}: "
        f"dense {dense_s * 1e3:.1f} ms/step, masked {masked_s * 1e3:.1f} ms/step, ratio {result['ratio']:.3f} "
        f"(fastest of {args.blocks} blocks x {args.steps} steps; ratio of medians {result['ratio_of_medians']:.3f})"
    )
    return result


if __name__ == "__main__":
    main()

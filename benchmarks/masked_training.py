"""Training-step time of a masked CIFAR ResNet-20 over the dense one, same weights and data, one run (CPU).

The masked model carries the callback's parametrization (``WeightMask``: effective weight = original * mask,
recomputed in every forward), at 10% density (random masks, per layer). Dense and masked steps alternate in
blocks so that load from other processes on a shared machine hits both alike. The figure recorded in
``benchmarks/README.md`` (target: at most 1.05) is the ratio of the median CPU times per step with one thread
(robust to other processes' load); wall-time ratios and the time of the mask multiplications alone are
printed too.

Usage:
    python benchmarks/masked_training.py                 # batch 128, 4 blocks of 2 steps each
    python benchmarks/masked_training.py --profile      # also torch.profiler per-operator totals
    python benchmarks/masked_training.py --blocks 6 --threads 2
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


def _time_steps(model, optimizer, x, y, steps: int) -> tuple[float, float]:
    # CPU time of this process as well as wall time: on a shared machine other processes' load inflates wall
    # time at random, while the CPU time of a single-threaded run counts only this process's work.
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        _step(model, optimizer, x, y)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def _parametrization_time(model, repeats: int = 20) -> float:
    """CPU seconds per step spent computing the masked weights (original * mask) and their gradients."""
    from torch.nn.utils import parametrize

    modules = [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]
    start = time.process_time()
    for _ in range(repeats):
        total = sum(m.weight.sum() for m in modules)
        total.backward()
    model.zero_grad(set_to_none=True)
    return (time.process_time() - start) / repeats


def _profiled_cpu(model, optimizer, x, y, steps: int = 2) -> tuple[float, float]:
    """Self-CPU seconds per step of all operators, and of the elementwise ops the masks add (mul, to-dtype copy)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            _step(model, optimizer, x, y)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6 / steps
    elementwise = (
        sum(e.self_cpu_time_total for e in events if e.key in ("aten::mul", "aten::copy_")) / 1e6 / steps
    )
    return total, elementwise


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--blocks", type=int, default=4, help="alternating dense/masked blocks")
    parser.add_argument("--steps", type=int, default=2, help="training steps per block")
    parser.add_argument("--profile", action="store_true", help="also compare torch.profiler self-CPU totals")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1: CPU time = work)")
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
    wall: dict[str, list[float]] = {"dense": [], "masked": []}
    cpu: dict[str, list[float]] = {"dense": [], "masked": []}
    for block in range(args.blocks):
        order = ("dense", "masked") if block % 2 == 0 else ("masked", "dense")
        for k in order:
            w, c = _time_steps(models[k], optimizers[k], x, y, args.steps)
            wall[k].append(w)
            cpu[k].append(c)
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in models}
    param_s = _parametrization_time(masked)
    result = {
        "batch_size": args.batch_size,
        "density": sparsity_report(masked)["density"],
        "threads": torch.get_num_threads(),
        "dense_step_cpu_s": med["dense"][1],
        "masked_step_cpu_s": med["masked"][1],
        "ratio_cpu": med["masked"][1] / med["dense"][1],
        "ratio_wall": med["masked"][0] / med["dense"][0],
        "parametrization_cpu_s": param_s,
        "parametrization_share": param_s / med["dense"][1],
    }
    print(
        f"ResNet-20, batch {args.batch_size}, CPU, {result['threads']} thread(s), density {result['density']:.3f}, "
        f"medians of {args.blocks} blocks x {args.steps} steps:\n"
        f"  CPU time: dense {med['dense'][1] * 1e3:.0f} ms/step, masked {med['masked'][1] * 1e3:.0f} ms/step, "
        f"ratio {result['ratio_cpu']:.3f}\n"
        f"  wall time: dense {med['dense'][0] * 1e3:.0f} ms/step, masked {med['masked'][0] * 1e3:.0f} ms/step, "
        f"ratio {result['ratio_wall']:.3f}\n"
        f"  masked weights + their gradients alone: {param_s * 1e3:.2f} ms/step "
        f"({100 * result['parametrization_share']:.2f}% of a dense step)"
    )
    if args.profile:
        prof = {k: _profiled_cpu(models[k], optimizers[k], x, y) for k in models}
        result["profiled_ratio"] = prof["masked"][0] / prof["dense"][0]
        print(
            f"  torch.profiler, self-CPU per step: dense {prof['dense'][0] * 1e3:.0f} ms, masked "
            f"{prof['masked'][0] * 1e3:.0f} ms, ratio {result['profiled_ratio']:.4f}; aten::mul + aten::copy_: "
            f"dense {prof['dense'][1] * 1e3:.1f} ms, masked {prof['masked'][1] * 1e3:.1f} ms"
        )
    return result


if __name__ == "__main__":
    main()

"""Cost of one PX round through the public API against the published code's cost structure.

The published PX implementation (``iurada/px-ntk-pruning``, ``lib/pruners.py``), re-stated here with
the same per-round work: three fresh deep copies of the model (activation, data-path and kernel copies),
then for every scoring batch an activation pass and a data-path pass without gradient, and a kernel
forward-backward on an all-ones input of the whole batch; then the global ``kthvalue`` threshold.
The library computes the kernel output once per round (it does not depend on the data) and works on
views of the model instead of three copies. Both compute the same scores: the script checks it.

``--cvpr2024`` compares the ``"cvpr2024"`` variant (the code published with the paper in April 2024)
against that code's own cost structure, re-stated below: three fresh deep copies per round, then per
batch an activation forward and a data-path forward without gradient (both the masked network itself in
``train()`` mode) and a kernel forward-backward on the batch (squared weights, identity activations); the
library's data path is its activation pass, so a batch costs one forward and one forward-backward.

Usage:
    python benchmarks/scoring.py                          # CIFAR ResNet-20, 100 images 32x32, CPU
    python benchmarks/scoring.py --cvpr2024               # the same for the cvpr2024 variant
    python benchmarks/scoring.py --model resnet50 --device cuda   # 10 batches of 64 at 224x224 (a GPU)
    python benchmarks/scoring.py --model resnet50 --threshold     # the global threshold alone

``--threshold`` times the global threshold alone on the model's scores (``|w|`` of the freshly initialised
model, ``--dtype``) at the first and last density of a 100-round schedule to 0.018: the published
concatenation and ``kthvalue`` against ``threshold_masks``; the script checks that both give the same masks.

Peak memory: on the CPU, the peak growth of the resident set during a second call (sampled every 0.5 ms,
above the resident set after a warm-up call) in a fresh process per method; on a GPU, ``torch.cuda.max_memory_allocated`` above the memory
allocated before the call.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import threading
import time
import warnings

import torch
import torchvision
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from px_lightning.models import resnet20
from px_lightning.pruning import (
    compute_scores,
    density_schedule,
    find_masks,
    prunable_parameters,
    threshold_masks,
)

DENSITY = 0.018
_RELU = {torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu_, Tensor.relu, Tensor.relu_}


class _Gates(TorchFunctionMode):
    """ReLU handling of the published copies: record gates, replay them, or act as the identity."""

    def __init__(self, action: str, gates: list | None = None) -> None:
        super().__init__()
        self.action, self.gates, self.i = action, gates if gates is not None else [], 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _RELU:
            return func(*args, **kwargs)
        x = args[0]
        if self.action == "record":
            self.gates.append(x > 0)
            return func(*args, **kwargs)
        if self.action == "identity":
            return x
        gate = self.gates[self.i]
        self.i += 1
        return x * gate


def published_scores(model: nn.Module, masks: dict[str, Tensor], batches: list) -> dict[str, Tensor]:
    """One published PX scoring pass (kernel normalisation in eval mode, as the library default)."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    head = layers[-1]
    act, data_path, kernel = (copy.deepcopy(model) for _ in range(3))  # three fresh copies per round
    act.eval()
    data_path.train()
    kernel.eval()
    with torch.no_grad():
        for n in layers:
            name = f"{n}.weight"
            act.get_parameter(name).mul_(masks[name])
            if n == head:
                data_path.get_parameter(name).mul_(masks[name])
            else:
                data_path.get_parameter(name).copy_(masks[name])
                bias = data_path.get_submodule(n).bias
                if bias is not None:
                    bias.fill_(1)
                    kernel.get_submodule(n).bias.pow_(2)
    weights = {f"{n}.weight": model.get_parameter(f"{n}.weight").detach() for n in layers}
    leaves = {
        k: (w if k == f"{head}.weight" else w**2).clone().requires_grad_(True) for k, w in weights.items()
    }
    for x, _ in batches:
        with torch.no_grad():
            with _Gates("record") as rec:
                act(x)
            with _Gates("replay", rec.gates):
                z1 = data_path(x**2)
        # the published kernel forward-backward: an all-ones input of the whole batch, every batch
        with _Gates("identity"):
            z2 = torch.func.functional_call(
                kernel, {k: leaves[k] * masks[k] for k in leaves}, (torch.ones_like(x),)
            )
        (z1 * z2).sum().backward()
    return {k: leaves[k].grad.abs() * (weights[k] * masks[k]) ** 2 for k in leaves}


def published_scores_2024(model: nn.Module, masks: dict[str, Tensor], batches: list) -> dict[str, Tensor]:
    """One PX scoring pass of the April-2024 code (the paper's tables), with its cost structure."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    act, data_path, kernel = (copy.deepcopy(model).train() for _ in range(3))  # three fresh copies per round
    with torch.no_grad():
        for n in layers:
            name = f"{n}.weight"
            act.get_parameter(name).mul_(masks[name])
            data_path.get_parameter(name).mul_(masks[name])  # its "weights to 1" wrote into another copy
            bias = kernel.get_submodule(n).bias
            if bias is not None:
                bias.pow_(2)
    weights = {f"{n}.weight": model.get_parameter(f"{n}.weight").detach() for n in layers}
    leaves = {k: (w**2).clone().requires_grad_(True) for k, w in weights.items()}
    for x, _ in batches:
        with torch.no_grad():
            with _Gates("record"):
                act(x)  # the activation pass, whose gates the real data path does not need
            z1 = data_path(x)
        with _Gates("identity"):  # the kernel forward-backward on the batch itself, every batch
            z2 = torch.func.functional_call(kernel, {k: leaves[k] * masks[k] for k in leaves}, (x,))
        (z1 * z2).sum().backward()
    return {k: leaves[k].grad.abs() * (weights[k] * masks[k]).abs() ** 5 for k in leaves}


def published_round(
    model: nn.Module, masks: dict[str, Tensor], batches: list, scoring=published_scores
) -> dict[str, Tensor]:
    """Scores, then the published global threshold (``kthvalue``, keep scores strictly above it)."""
    scores = scoring(model, masks, batches)
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = int((1 - DENSITY) * flat.numel())
    threshold = torch.kthvalue(flat, k).values
    return {n: s > threshold for n, s in scores.items()}


def _model(args) -> nn.Module:
    torch.manual_seed(0)
    if args.model == "resnet20":
        return resnet20(num_classes=10).to(args.device)
    return torchvision.models.resnet50(weights=None).to(args.device)


def setup(args) -> tuple[nn.Module, list, dict[str, Tensor]]:
    model = _model(args)
    classes = 10 if args.model == "resnet20" else 1000
    batches = [
        (
            torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device),
            torch.randint(0, classes, (args.batch_size,), device=args.device),
        )
        for _ in range(args.batches)
    ]
    masks = {n: torch.ones_like(model.get_parameter(n), dtype=torch.bool) for n in prunable_parameters(model)}
    return model, batches, masks


def methods(model, batches, masks) -> dict:
    return {
        "api compute_scores": lambda: compute_scores(model, "px", batches, variant="2025-eval"),
        "published scoring": lambda: published_scores(model, masks, batches),
        "api find_masks (1 round)": lambda: find_masks(
            model, "px", batches, density=DENSITY, rounds=1, variant="2025-eval"
        ),
        "published round (+ threshold)": lambda: published_round(model, masks, batches),
    }


def methods_2024(model, batches, masks) -> dict:
    # The same four keys as methods(): main() compares and reports them alike.
    return {
        "api compute_scores": lambda: compute_scores(model, "px", batches, variant="cvpr2024"),
        "published scoring": lambda: published_scores_2024(model, masks, batches),
        "api find_masks (1 round)": lambda: find_masks(
            model, "px", batches, density=DENSITY, rounds=1, variant="cvpr2024"
        ),
        "published round (+ threshold)": lambda: published_round(
            model, masks, batches, published_scores_2024
        ),
    }


def threshold_methods(args) -> dict:
    """The global threshold alone: published (concatenate, ``kthvalue``) against ``threshold_masks``."""
    model = _model(args)
    dtype = getattr(torch, args.dtype)
    scores = {n: model.get_parameter(n).detach().abs().to(dtype) for n in prunable_parameters(model)}
    del model

    def published(density: float) -> dict[str, Tensor]:
        flat = torch.cat([s.flatten() for s in scores.values()])
        threshold = torch.kthvalue(flat, int((1 - density) * flat.numel())).values
        return {n: s > threshold for n, s in scores.items()}

    first, last = density_schedule(DENSITY, 100)[0], DENSITY
    return {
        f"published threshold d={first:.3f}": lambda: published(first),
        f"api threshold_masks d={first:.3f}": lambda: threshold_masks(scores, first),
        f"published threshold d={last:.3f}": lambda: published(last),
        f"api threshold_masks d={last:.3f}": lambda: threshold_masks(scores, last),
    }


def _functions(args) -> dict:
    if args.threshold:
        return threshold_methods(args)
    return (methods_2024 if args.cvpr2024 else methods)(*setup(args))


def _time_interleaved(fns: dict, args) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of each of ``fns``, ``args.repeats`` times, interleaved so that load on a shared
    machine hits every method alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            _sync(args.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(args.device)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return times, cpu


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _memory_worker(args, name: str, queue) -> None:
    torch.set_num_threads(args.threads)
    fn = _functions(args)[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn()  # warm-up: lazy library state belongs to the baseline, not to the method
        gc.collect()
        before = peak = _rss_bytes()
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _rss_bytes())
                time.sleep(0.0005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        fn()
        done.set()
        sampler.join()
    queue.put(max(peak, _rss_bytes()) - before)


def peak_memory(args, name: str) -> int:
    if args.device.startswith("cuda"):
        fn = _functions(args)[name]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # A fresh process per method, so each peak is its own; a fixed mmap threshold makes glibc hand every
    # large tensor's memory back to the system when it is freed, so the resident set follows live tensors.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_worker, args=(args, name, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["resnet20", "resnet50"], default="resnet20")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batches", type=int, help="scoring batches (resnet20: 10, resnet50: 10)")
    parser.add_argument("--batch-size", type=int, help="images per batch (resnet20: 10, resnet50: 64)")
    parser.add_argument("--image-size", type=int, help="resnet20: 32, resnet50: 224")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per method (median reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--threshold", action="store_true", help="time the global threshold alone")
    parser.add_argument(
        "--cvpr2024", action="store_true", help="the cvpr2024 variant against the April-2024 code's structure"
    )
    parser.add_argument(
        "--dtype", choices=["float32", "float64"], default="float32", help="--threshold's scores"
    )
    parser.add_argument(
        "--no-tf32",
        action="store_true",
        help="CUDA: float32 convolutions and matmuls in IEEE float32, not TF32 (PyTorch's default for convs)",
    )
    args = parser.parse_args(argv)
    defaults = {"resnet20": (10, 10, 32), "resnet50": (10, 64, 224)}[args.model]
    args.batches = args.batches or defaults[0]
    args.batch_size = args.batch_size or defaults[1]
    args.image_size = args.image_size or defaults[2]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    torch.set_num_threads(args.threads)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    warnings.filterwarnings("ignore", message=".*layer collapse.*")  # one-shot 0.018 collapses layers
    if args.threshold:
        threshold_main(args)
        return
    model, batches, masks = setup(args)
    fns = (methods_2024 if args.cvpr2024 else methods)(model, batches, masks)
    # Same scores from both: the comparison is between two implementations of one computation.
    ours, theirs = fns["api compute_scores"](), fns["published scoring"]()
    rel = max(float((ours[n] - theirs[n]).abs().max() / theirs[n].abs().max()) for n in ours)
    for fn in fns.values():  # warm-up
        fn()
    times, cpu = _time_interleaved(fns, args)
    result = {
        "model": args.model,
        "variant": "cvpr2024" if args.cvpr2024 else "2025-eval",
        "device": torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "threads": args.threads,
        "tf32": torch.backends.cudnn.allow_tf32 if args.device.startswith("cuda") else None,
        "data": f"{args.batches} batches of {args.batch_size} at {args.image_size}x{args.image_size}",
        "max_relative_score_difference": rel,
        "median_s": {n: statistics.median(t) for n, t in times.items()},
        "min_s": {n: min(t) for n, t in times.items()},
        # CPU time of this process (all its threads): on a machine shared with other jobs, wall time
        # measures them too, CPU time mostly this process's own work
        "median_cpu_s": {n: statistics.median(t) for n, t in cpu.items()},
    }
    med = result["median_s"]
    result["ratio_scoring"] = med["api compute_scores"] / med["published scoring"]
    result["ratio_round"] = med["api find_masks (1 round)"] / med["published round (+ threshold)"]
    cmed = result["median_cpu_s"]
    result["ratio_scoring_cpu"] = cmed["api compute_scores"] / cmed["published scoring"]
    result["ratio_round_cpu"] = cmed["api find_masks (1 round)"] / cmed["published round (+ threshold)"]
    if not args.no_memory:
        result["peak_memory_MiB"] = {n: peak_memory(args, n) / 2**20 for n in fns}
    print(
        f"PX {result['variant']}: {result['model']} on {args.device} ({result['device']}, {args.threads} threads), {result['data']}"
        + ("" if result["tf32"] is None else f", TF32 {'on' if result['tf32'] else 'off'}")
    )
    print(f"scores agree: max relative difference {rel:.2e}")
    for name in fns:
        line = f"  {name:30s} median {med[name]:.4f} s  min {result['min_s'][name]:.4f} s  cpu {cmed[name]:.4f} s"
        if "peak_memory_MiB" in result:
            line += f"  peak memory {result['peak_memory_MiB'][name]:.1f} MiB"
        print(line)
    print(
        f"ratio api/published (wall): scoring {result['ratio_scoring']:.2f}, round {result['ratio_round']:.2f}"
    )
    print(
        f"ratio api/published (cpu):  scoring {result['ratio_scoring_cpu']:.2f}, "
        f"round {result['ratio_round_cpu']:.2f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def threshold_main(args) -> None:
    fns = threshold_methods(args)
    names = list(fns)
    for published, api in zip(names[::2], names[1::2]):  # same masks from both
        ours, theirs = fns[api](), fns[published]()
        if not all(torch.equal(ours[n], theirs[n]) for n in theirs):
            raise RuntimeError(f"{api} and {published} give different masks")
    times, cpu = _time_interleaved(fns, args)
    memory = {} if args.no_memory else {n: peak_memory(args, n) / 2**20 for n in fns}
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    count = sum(s.numel() for s in fns[names[0]]().values())
    print(
        f"global threshold, {args.model} ({count} {args.dtype} scores) on {args.device} ({device}, "
        f"{args.threads} threads); masks identical"
    )
    for name in fns:
        line = (
            f"  {name:32s} median {statistics.median(times[name]):.4f} s  min {min(times[name]):.4f} s"
            f"  cpu {statistics.median(cpu[name]):.4f} s"
        )
        if memory:
            line += f"  peak memory {memory[name]:.1f} MiB"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"median_s": {n: statistics.median(t) for n, t in times.items()}, "peak_MiB": memory}, f
            )


if __name__ == "__main__":
    main()

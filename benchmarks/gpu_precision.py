"""How much the GPU's TF32 convolutions change PX scores and masks (torchvision resnet50, 10 x 64 at 224).

PyTorch runs float32 convolutions on CUDA in TF32 by default (``torch.backends.cudnn.allow_tf32`` is True:
10 mantissa bits for the products), so float32 PX scores on a GPU carry TF32's rounding. This script
scores one model three ways on the same device and data: float32 with TF32 (PyTorch's default),
float32 with TF32 off (IEEE float32), and float64 (the reference), and reports
- per tensor, max |score - reference| / max |reference| (the conformance tests' measure), the worst tensor;
- the kept sets of one-shot masks at each ``--densities`` against the float64 masks (intersection over
  union, and how many weights differ);
- the same for ``--rounds`` iterative rounds of ``find_masks`` (rounding compounds over rounds), with the
  layer whose kept fraction differs most and the collapsed layers, and the default mode run twice;
- the time of one ``compute_scores`` in each float32 mode.

Usage:
    python benchmarks/gpu_precision.py --json results.json
    python benchmarks/gpu_precision.py --device cpu --model resnet20 --batch-size 4 --batches 2 \
        --image-size 32 --rounds 2 --repeats 1          # smoke run: on a CPU, TF32 does not exist
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings

import torch
import torchvision

from px_lightning.models import resnet20
from px_lightning.pruning import compute_scores, find_masks, threshold_masks


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _set_tf32(enabled: bool) -> None:
    with warnings.catch_warnings():  # newer torch prefers fp32_precision; these flags still work
        warnings.simplefilter("ignore")
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled


def _relative_error(scores: dict, reference: dict) -> tuple[float, str]:
    errors = {
        n: float((scores[n].double() - reference[n]).abs().max() / reference[n].abs().max().clamp_min(1e-300))
        for n in reference
    }
    worst = max(errors, key=errors.get)
    return errors[worst], worst


def _agreement(masks: dict, reference: dict) -> dict:
    both = sum(int((masks[n] & reference[n]).sum()) for n in reference)
    either = sum(int((masks[n] | reference[n]).sum()) for n in reference)
    differ = sum(int((masks[n] ^ reference[n]).sum()) for n in reference)
    kept = sum(int(reference[n].sum()) for n in reference)
    return {"iou": both / max(either, 1), "weights_differing": differ, "kept_in_reference": kept}


def _layers(masks: dict, reference: dict) -> dict:
    """Where the masks differ: per-layer kept fractions against the reference's, and collapsed layers."""
    fraction = {n: float(m.float().mean()) for n, m in masks.items()}
    ref = {n: float(m.float().mean()) for n, m in reference.items()}
    worst = max(ref, key=lambda n: abs(fraction[n] - ref[n]))
    return {
        "layer_density_max_abs_diff": abs(fraction[worst] - ref[worst]),
        "layer_density_worst": f"{worst}: {fraction[worst]:.4f} vs {ref[worst]:.4f}",
        "collapsed": sorted(n for n, m in masks.items() if not m.any()),
        "collapsed_in_reference": sorted(n for n, m in reference.items() if not m.any()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["resnet20", "resnet50"], default="resnet50")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.018])
    parser.add_argument("--rounds", type=int, default=10, help="iterative rounds down to the last density")
    parser.add_argument("--repeats", type=int, default=5, help="timed compute_scores per float32 mode")
    parser.add_argument(
        "--variant",
        default="2025-eval",
        help="PX variant (the recorded GPU results are of 2025-eval, the default PX when they were measured)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")

    torch.manual_seed(0)
    if args.model == "resnet50":
        model, classes = torchvision.models.resnet50(weights=None), 1000
    else:
        model, classes = resnet20(num_classes=10), 10
    model = model.to(args.device)
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(args.device),
            torch.randint(0, classes, (args.batch_size,), generator=g).to(args.device),
        )
        for _ in range(args.batches)
    ]
    model64 = copy.deepcopy(model).double()
    warnings.filterwarnings("ignore", message=".*layer collapse.*")
    result: dict = {
        "model": args.model,
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "data": f"{args.batches} batches of {args.batch_size} at {args.image_size}x{args.image_size}",
    }

    def save() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)

    reference = compute_scores(model64, "px", batches, variant=args.variant)
    one_shot = {d: threshold_masks(reference, d) for d in args.densities}
    last = min(args.densities)
    for tf32 in (True, False):
        _set_tf32(tf32)
        mode = "float32, TF32 on (default)" if tf32 else "float32, TF32 off"
        scores = compute_scores(model, "px", batches, variant=args.variant)
        times = []
        for _ in range(args.repeats):
            _sync(args.device)
            start = time.perf_counter()
            compute_scores(model, "px", batches, variant=args.variant)
            _sync(args.device)
            times.append(time.perf_counter() - start)
        error, worst = _relative_error(scores, reference)
        result[mode] = {
            "compute_scores_median_s": statistics.median(times),
            "max_relative_error_vs_float64": error,
            "worst_tensor": worst,
            "one_shot_masks_vs_float64": {
                str(d): _agreement(threshold_masks(scores, d), one_shot[d]) for d in args.densities
            },
        }
        print(mode, json.dumps(result[mode], indent=1))
        save()
    _set_tf32(True)

    # Iterative: each float32 mode's masks after --rounds rounds against float64's.
    start = time.perf_counter()
    iterative64 = find_masks(model64, "px", batches, density=last, rounds=args.rounds, variant=args.variant)
    result["float64 iterative s"] = time.perf_counter() - start
    for tf32 in (True, False):
        _set_tf32(tf32)
        mode = "float32, TF32 on (default)" if tf32 else "float32, TF32 off"
        masks = find_masks(model, "px", batches, density=last, rounds=args.rounds, variant=args.variant)
        result[mode][f"iterative_{args.rounds}_rounds_d{last}_vs_float64"] = {
            **_agreement(masks, iterative64),
            **_layers(masks, iterative64),
        }
        if tf32:  # the same computation again: are the GPU's masks repeatable run to run?
            again = find_masks(model, "px", batches, density=last, rounds=args.rounds, variant=args.variant)
            result[mode]["iterative_same_run_twice"] = _agreement(again, masks)
        print(mode, "iterative:", result[mode][f"iterative_{args.rounds}_rounds_d{last}_vs_float64"])
        save()
    _set_tf32(True)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

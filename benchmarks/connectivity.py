"""How much of each method's kept budget lies on an input-to-output path (quality benchmark's models).

A kept weight that no path from the network's input reaches, or that reaches no output, computes nothing
useful: it is fed only by biases and BatchNorm shifts (a constant per channel) or feeds a dead end. Its
share of the budget is wasted. For a set of masks this script counts, per layer and in total:
- ``effective``: kept weights on at least one complete input -> output path;
- ``input_only`` / ``output_only``: reached from the input but reaching no output, and the reverse;
- ``isolated``: neither.

How: a float64 copy of the network at initialisation with every prunable weight set to its mask (1 kept,
0 pruned), every bias and BatchNorm shift set to 0 and BatchNorm scales to 1 (``eval()``, statistics 0/1),
so each unit's value on an all-ones input counts the input paths reaching it (ReLU and pooling pass
non-negative values unchanged), and ``R = sum(output)`` counts the complete paths. Effective weights are
``px_lightning.pruning.effective_masks`` (a kept weight is on a path iff ``dR/dw > 0``; checked equal to
this script's own earlier count on both models and five methods). Two channel-level passes split the rest: a weight's input channel reached from the input,
and its output channel continuing to the output (found with every BatchNorm shift set to 1, so that ReLU
passes all gradients).
Masks come from ``quality.py``'s methods, seeds and scoring batches, so the rows match its tables.

Usage:
    python benchmarks/connectivity.py --models resnet --densities 0.01 0.005 --seeds 0 1 2 3 4 \
        --methods synflow px_head_body_bn_warmup_floor0.2 hybrid_px_select_synflow_alloc
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality

from px_lightning.pruning import effective_masks, find_masks, prunable_parameters


def _linear_copy(model: nn.Module, masks: dict[str, torch.Tensor], shift: float) -> tuple[nn.Module, dict]:
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()  # mean 0, var 1
                if module.affine:
                    module.weight.fill_(1.0)
                    module.bias.fill_(shift)
        for name, p in net.named_parameters():
            if name.endswith("bias") and not isinstance(
                net.get_submodule(name.rsplit(".", 1)[0]), nn.modules.batchnorm._BatchNorm
            ):
                p.zero_()
    leaves = {n: masks[n].double().clone().requires_grad_(True) for n in masks}
    return net, leaves


def _channels(x: torch.Tensor) -> torch.Tensor:
    """Per channel (dim 1): positive anywhere in the batch and space."""
    return (x.flatten(2).amax(2) if x.dim() > 2 else x).amax(0) > 0


def path_counts(model: nn.Module, masks: dict[str, torch.Tensor], example: torch.Tensor) -> dict[str, dict]:
    """Per prunable tensor: kept, effective, input_only, output_only, isolated weight counts."""
    ones = torch.ones((1, *example.shape[1:]), dtype=torch.float64)
    layer_of = {n: n.rsplit(".", 1)[0] for n in masks}

    # Pass 1, no shifts: a unit's value counts the input paths reaching it. Effective weights: dR/dw > 0;
    # input channels reached: positive values entering the layer.
    net, leaves = _linear_copy(model, masks, shift=0.0)
    reached: dict[str, torch.Tensor] = {}
    hooks = [
        net.get_submodule(layer).register_forward_pre_hook(
            lambda mod, args, name=name: reached.__setitem__(name, _channels(args[0].detach()))
        )
        for name, layer in layer_of.items()
    ]
    paths = torch.func.functional_call(net, leaves, (ones,), strict=False).sum().detach()
    for h in hooks:
        h.remove()
    effective = effective_masks(model, example, masks)  # the library's definition (same as dR/dw > 0 here)

    # Pass 2, every BatchNorm shifted by 1: all units positive, so ReLU passes every gradient and
    # dR/d(layer output) > 0 exactly where a path continues from that unit to the output.
    net, leaves = _linear_copy(model, masks, shift=1.0)
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(mod, args, out):
            out.retain_grad()
            outputs[name] = out

        return hook

    hooks = [net.get_submodule(layer).register_forward_hook(keep(name)) for name, layer in layer_of.items()]
    torch.func.functional_call(net, leaves, (ones,), strict=False).sum().backward()
    for h in hooks:
        h.remove()

    counts = {}
    for name, mask in masks.items():
        tail = [1] * (mask.dim() - 2)
        from_input = mask & reached[name].view([1, -1, *tail])
        to_output = mask & _channels(outputs[name].grad).view([-1, 1, *tail])
        counts[name] = {
            "kept": int(mask.sum()),
            "effective": int(effective[name].sum()),
            "input_only": int((from_input & ~to_output).sum()),
            "output_only": int((to_output & ~from_input).sum()),
            "isolated": int((mask & ~from_input & ~to_output).sum()),
            # width: output channels (units of a Linear) with an effective weight
            "active_out": int(effective[name].flatten(1).any(1).sum()),
            "out_channels": mask.shape[0],
        }
    counts["_paths"] = float(paths.detach())
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet"])
    parser.add_argument("--methods", nargs="+", default=["synflow", "px_head_body_bn_warmup_floor0.2"])
    parser.add_argument("--densities", nargs="+", type=float, default=[0.01, 0.005])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--layers", action="store_true", help="also print per-layer effective fractions")
    parser.add_argument(
        "--accuracy-steps",
        type=int,
        help="join each run with its test accuracy at this training length in quality.py's results and "
        "print the rank correlation of accuracy with each connectivity measure, per density",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = quality.digits()
    x_train, y_train = data[0], data[1]
    accuracy = _accuracies(args.accuracy_steps) if args.accuracy_steps else {}
    joined: dict[tuple, list[tuple]] = {}
    for model_name in args.models:
        for density in args.densities:
            print(f"\n{model_name}, d={density}: effective share of the kept weights (mean over seeds)")
            for method_name in args.methods:
                totals, layers = [], {}
                for seed in args.seeds:
                    torch.manual_seed(seed)
                    model = quality.build_model(model_name)
                    method, options = quality.METHODS[method_name]
                    options = dict(options)
                    if method_name in quality.SEEDED:
                        options["seed"] = seed
                    rounds = (
                        quality.FIXED_ROUNDS.get(method_name, args.rounds)
                        if method in quality.ITERATIVE
                        else 1
                    )
                    batches = quality.scoring_batch(x_train, y_train, args.per_class, seed)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        if method == "hybrid":
                            masks = quality.hybrid_masks(
                                model, options["select"], options["allocate"], batches, density, rounds
                            )
                        else:
                            scorer = quality.make_scorer(method, options)
                            masks = find_masks(model, scorer, batches, density=density, rounds=rounds)
                    masks = {n: masks[n] for n in prunable_parameters(model)}
                    counts = path_counts(model, masks, batches[0][0])
                    paths = counts.pop("_paths")
                    kept = sum(c["kept"] for c in counts.values())
                    width = sum(c["active_out"] for c in counts.values()) / sum(
                        c["out_channels"] for c in counts.values()
                    )
                    share = {
                        k: sum(c[k] for c in counts.values()) / kept
                        for k in ("effective", "input_only", "output_only", "isolated")
                    }
                    totals.append({**share, "width": width, "log10_paths": math.log10(max(paths, 1.0))})
                    acc = accuracy.get((model_name, method_name, density, seed))
                    if acc is not None:
                        joined.setdefault((model_name, density), []).append((acc, totals[-1]))
                    for n, c in counts.items():
                        if c["kept"]:
                            layers.setdefault(n, []).append(c["effective"] / c["kept"])
                mean = {k: statistics.mean(t[k] for t in totals) for k in totals[0]}
                print(
                    f"  {method_name:45s} effective {100 * mean['effective']:5.1f}%  "
                    f"input-only {100 * mean['input_only']:5.1f}%  output-only {100 * mean['output_only']:5.1f}%  "
                    f"isolated {100 * mean['isolated']:5.1f}%  active width {100 * mean['width']:5.1f}%  "
                    f"log10(paths) {mean['log10_paths']:.1f}"
                )
                if args.layers:
                    for n, v in layers.items():
                        print(
                            f"      {n:30s} {100 * statistics.mean(v):5.1f}% (layer kept in {len(v)} seeds)"
                        )

    for (model_name, density), rows in joined.items():
        accs = [a for a, _ in rows]
        line = ", ".join(
            f"{k} {_spearman(accs, [t[k] for _, t in rows]):+.2f}"
            for k in ("effective", "width", "log10_paths")
        )
        print(
            f"\n{model_name}, d={density}: Spearman correlation with test accuracy ({len(rows)} runs): {line}"
        )


def _accuracies(steps: int) -> dict[tuple, float]:
    out = {}
    for record in quality.load(quality.OUT):
        if "accuracy" in record and quality._steps(record) == steps:
            out[(record["model"], record["method"], record["density"], record["seed"])] = record["accuracy"]
    return out


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _spearman(x: list[float], y: list[float]) -> float:
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else float("nan")


if __name__ == "__main__":
    main()

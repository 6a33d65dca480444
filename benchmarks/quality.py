"""Quality benchmark: test accuracy against density for every pruning method, on Digits, on the CPU.

Two models with BatchNorm (a small CNN and a small CIFAR-style ResNet), pruned at initialisation by each
method at each density, three seeds, then trained identically (same steps, optimiser, schedule, batches
per seed). Digits (scikit-learn's 8x8 digits, 1797 images, upsampled bilinearly to ``--size`` pixels, 16
by default to fit the shared CPU, three channels) ships with scikit-learn, so nothing is downloaded.
Each run appends one JSON line to ``--out``; an interrupted benchmark resumes where it stopped, and
``--report`` rebuilds the table and the plot from that file.

    python benchmarks/quality.py                      # full run (~35 min on one shared CPU core)
    python benchmarks/quality.py --report             # table + plot from benchmarks/quality_results.jsonl
    python benchmarks/quality.py --models cnn --methods random px --densities 0.05 --seeds 0 --steps 20

Iterative methods (SynFlow, NTK-SAP, PX and its options) run ``--rounds`` rounds (10 here, where PX and
SynFlow publish 100 and NTK-SAP 20), to fit the CPU budget, except the ``..._r100`` variants (100 rounds);
SNIP, GraSP, magnitude and random are one-shot.
Training is short (``--steps`` 80 SGD steps of 64 images, about 3.5 epochs, one-cycle learning rate).
Each run records its ``steps``; runs at other lengths are kept apart from the 80-step ones (rows written
before ``steps`` was recorded were all 80 steps), in the resume key and in the report:

    python benchmarks/quality.py --models resnet --methods synflow px --densities 0.01 --steps 320
    python benchmarks/quality.py --report --steps 320   # the 320-step runs only, and their gain over 80
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ConvNeXt, VisionTransformer
from torchvision.models.convnext import CNBlockConfig

from px_lightning.models.cifar_resnet import CifarResNet
from px_lightning.models.small_cnn import SmallCNN
from px_lightning.pruning import (
    apply_masks,
    compute_scores,
    density_schedule,
    find_masks,
    prunable_parameters,
    sparsity_report,
    threshold_masks,
)
from px_lightning.pruning.scorers import SCORERS, Scorer, get_scorer
from px_lightning.pruning.scorers.px_research import PXResearchScorer

HERE = Path(__file__).resolve().parent
MODELS = ("cnn", "resnet", "vit", "convnext")
# The transformer and the ConvNeXt train with AdamW (SGD at lr 0.1 does not train them); --lr is SGD's.
ADAMW = {"vit": 1e-3, "convnext": 1e-3}
DENSITIES = (0.05, 0.02, 0.01, 0.005)
SEEDS = (0, 1, 2)  # the table marks cells averaged over another number of seeds with "n=K"
OUT = HERE / "quality_results.jsonl"
DEFAULT_STEPS = 80  # training length of every run recorded without "steps" (before it was recorded)

# name -> (method, options). "px" is the 2025 code made well-posed (variant "2025-eval", the library default
# before issue 13; the default is now "px_cvpr2024"); "px_train" the 2025 code as published;
# "px_research": PX with the research options of px_research.PXResearchScorer (see make_scorer).
METHODS: dict[str, tuple[str | None, dict]] = {
    "dense": (None, {}),
    "random": ("random", {}),
    "magnitude": ("magnitude", {}),
    "snip": ("snip", {}),
    "grasp": ("grasp", {}),
    "synflow": ("synflow", {}),
    "ntksap": ("ntksap", {}),
    "px": ("px", {"variant": "2025-eval"}),
    "px_train": ("px", {"kernel_norm": "train"}),
    "px_head_body": ("px", {"head": "body"}),
    "px_dense_head": ("px", {"variant": "2025-eval", "dense_head": True}),
    "px_floor0.2": ("px", {"variant": "2025-eval", "layer_floor": 0.2}),
    "px_bn_warmup": ("px", {"bn_warmup": True}),
    "px_head_body_bn_warmup": ("px", {"head": "body", "bn_warmup": True}),
    # Follow-up on the ResNet's low densities (PX below SynFlow at d<=0.02): the three options together,
    # the per-layer score normalisation (layer_norm="sum"), and the published 100 rounds for PX and SynFlow.
    "px_head_body_bn_warmup_floor0.2": ("px", {"head": "body", "bn_warmup": True, "layer_floor": 0.2}),
    "px_head_body_bn_warmup_floor0.5": ("px", {"head": "body", "bn_warmup": True, "layer_floor": 0.5}),
    "px_layer_sum": ("px_research", {"layer_norm": "sum"}),
    "px_head_body_bn_warmup_layer_sum": (
        "px_research",
        {"head": "body", "bn_warmup": True, "layer_norm": "sum"},
    ),
    "synflow_r100": ("synflow", {}),
    "px_head_body_bn_warmup_r100": ("px", {"head": "body", "bn_warmup": True}),
    "px_head_body_bn_warmup_floor0.2_r100": (
        "px",
        {"head": "body", "bn_warmup": True, "layer_floor": 0.2},
    ),
    "px_head_body_bn_warmup_layer_sum_r100": (
        "px_research",
        {"head": "body", "bn_warmup": True, "layer_norm": "sum"},
    ),
    # Diagnostics, not methods: allocation (how many weights each layer keeps) from one method's iteration,
    # selection (which weights within the layer) from another's scores, both iterating in lockstep. They
    # split the PX-SynFlow gap into "where the budget goes" and "which weights PX picks".
    "hybrid_px_select_synflow_alloc": (
        "hybrid",
        {"select": ("px", {"head": "body", "bn_warmup": True}), "allocate": ("synflow", {})},
    ),
    "hybrid_synflow_select_px_alloc": (
        "hybrid",
        {"select": ("synflow", {}), "allocate": ("px", {"head": "body", "bn_warmup": True})},
    ),
    # Second follow-up (the shortcut/branch allocation), on top of the callback's PX default: the kernel
    # copy's BatchNorm as its squared per-channel factor (kernel_bn="squared"), and every squared layer
    # divided by its mean squared weight (kernel_scale="mean_square"). See PXScorer's docstring.
    "px_head_body_bn_warmup_floor0.2_kbn_sq": (
        "px_research",
        {"head": "body", "bn_warmup": True, "layer_floor": 0.2, "kernel_bn": "squared"},
    ),
    "px_head_body_bn_warmup_floor0.2_kscale_ms": (
        "px_research",
        {"head": "body", "bn_warmup": True, "layer_floor": 0.2, "kernel_scale": "mean_square"},
    ),
    # Third follow-up (PX spreads its budget over about twice SynFlow's channels, benchmarks/connectivity.py):
    # the data path's BatchNorm as the identity instead of train-mode per-channel renormalisation.
    "px_head_body_bn_warmup_floor0.2_data_id": (
        "px_research",
        {"head": "body", "bn_warmup": True, "layer_floor": 0.2, "data_bn": "identity"},
    ),
    # PX's kernel with |w| (SynFlow's) instead of w^2: the data then weight SynFlow's path values by z1.
    "px_head_body_bn_warmup_floor0.2_kp1": (
        "px_research",
        {"head": "body", "bn_warmup": True, "layer_floor": 0.2, "kernel_power": 1},
    ),
    "px_head_body_kp1": ("px_research", {"head": "body", "kernel_power": 1}),
    "px_head_body_kp1_r100": ("px_research", {"head": "body", "kernel_power": 1}),
    # z1 (the data path's per-class output) replaced by its mean: no per-class feedback in the head.
    "px_head_body_bn_warmup_floor0.2_unif": (
        "px_research",
        {"head": "body", "bn_warmup": True, "layer_floor": 0.2, "output_weighting": "uniform"},
    ),
    "px_head_body_unif": ("px_research", {"head": "body", "output_weighting": "uniform"}),
    "px_head_body_bn_warmup_floor0.2_kscale_ms_data_id": (
        "px_research",
        {
            "head": "body",
            "bn_warmup": True,
            "layer_floor": 0.2,
            "kernel_scale": "mean_square",
            "data_bn": "identity",
        },
    ),
}
# Issue 13: the April-2024 PX of the paper's tables at the published 100 rounds, and the literature's three
# sanity checks applied to it (each layer's kept count kept, the weights moved: a random permutation of
# each mask, the lowest-scored weights instead of the highest, the kept weights re-initialised by a
# permutation of the layer's initial weights).
METHODS["px_cvpr2024_r100"] = ("px", {"variant": "cvpr2024"})
METHODS["px_cvpr2024"] = ("px", {"variant": "cvpr2024"})  # the default PX, at --rounds (issue 14's table)
# ConvNeXt's layer scale (1e-6 at init) read as 1 while scoring: the masks are then installed on the model
# as initialised (torchvision's CNBlock.layer_scale).
METHODS["px_cvpr2024_ls1"] = ("px", {"variant": "cvpr2024", "layer_scale_one": True})
METHODS["synflow_ls1"] = ("synflow", {"layer_scale_one": True})
# The 2025 variants overflow float32 on the ViT: scored on a float64 copy, masks installed on the model.
METHODS["px_2025eval_f64"] = ("px", {"variant": "2025-eval", "float64": True})
METHODS["px_2025_f64"] = ("px", {"variant": "2025", "float64": True})
METHODS["px_2025eval_r100"] = ("px", {"variant": "2025-eval"})
for _check in ("reshuffle", "invert", "reinit"):
    METHODS[f"px_cvpr2024_{_check}_r100"] = ("px", {"variant": "cvpr2024", "sanity": _check})
SEEDED = {"random", "ntksap"}  # methods that draw random numbers: seeded with the run's seed
ITERATIVE = {"synflow", "ntksap", "px", "px_research", "hybrid"}
# Variants named "..._rN" run N rounds whatever --rounds says (the rounds are part of the variant).
FIXED_ROUNDS = {name: int(name.rsplit("_r", 1)[1]) for name in METHODS if name.rsplit("_r", 1)[-1].isdigit()}


def make_scorer(method: str, options: dict) -> Scorer:
    """The scorer of a ``METHODS`` entry: ``"px_research"`` is ``PXResearchScorer``, which the library's
    method names do not reach; ``find_masks`` and ``compute_scores`` take the object."""
    return PXResearchScorer(**options) if method == "px_research" else get_scorer(method, **options)


def build_model(name: str) -> nn.Module:
    if (
        name == "vit"
    ):  # issue 14: patches of 2 on the 16x16 digits (64 tokens + class token), 4 blocks, width 64
        return VisionTransformer(
            image_size=16, patch_size=2, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10
        )
    if name == "convnext":  # ConvNeXt blocks (LayerNorm, layer scale 1e-6 as published): 4x4 -> 2x2 -> 1x1
        blocks = [CNBlockConfig(32, 64, 2), CNBlockConfig(64, 128, 2), CNBlockConfig(128, None, 2)]
        return ConvNeXt(blocks, num_classes=10)
    if name == "cnn":
        return SmallCNN(
            10
        )  # the quickstart CNN: 94k prunable weights (head 1.4%), BatchNorm after every conv
    if name == "resnet":
        return CifarResNet(depth=8, width=12)  # ResNet-8, width 12: 44k prunable weights (head 1.1%)
    raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)}")


def digits(
    size: int = 16, split_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified 80/20 split of scikit-learn's digits, upsampled to 3 x size x size and standardised."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.tensor(data.target)
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=0.2, stratify=data.target, random_state=split_seed)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def scoring_batch(x: torch.Tensor, y: torch.Tensor, per_class: int, seed: int) -> list:
    """A class-balanced batch of ``per_class`` training images per class (the same for every method)."""
    g = torch.Generator().manual_seed(seed)
    picks = [torch.nonzero(y == c).flatten() for c in range(10)]
    idx = torch.cat([p[torch.randperm(len(p), generator=g)[:per_class]] for p in picks])
    return [(x[idx], y[idx])]


def hybrid_masks(model: nn.Module, select: tuple, allocate: tuple, batches, density: float, rounds: int):
    """Per-layer kept counts from ``allocate``'s own iteration, the weights kept within each layer chosen
    by ``select``'s scores (on its own masks), round by round (exponential schedule, global scope)."""
    sel, alloc = make_scorer(*select), make_scorer(*allocate)
    names = list(prunable_parameters(model))
    weights = {n: model.get_parameter(n).detach().clone() for n in names}
    alloc_masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    sel_masks = dict(alloc_masks)
    for round_density in density_schedule(density, rounds):
        alloc_masks = threshold_masks(alloc.score(model, weights, alloc_masks, batches), round_density)
        scores = sel.score(model, weights, sel_masks, batches)
        new = {}
        for n in names:
            # A layer's count never grows (pruned weights score 0), so the top k lie among the kept ones.
            s = scores[n].flatten().masked_fill(~sel_masks[n].flatten(), -math.inf)
            keep = torch.zeros_like(s, dtype=torch.bool)
            keep[torch.topk(s, int(alloc_masks[n].sum())).indices] = True
            new[n] = keep.view_as(scores[n])
        sel_masks = new
    return sel_masks


def train(model: nn.Module, x, y, steps: int, batch: int, lr: float, seed: int, adamw: bool = False) -> None:
    g = torch.Generator().manual_seed(seed)
    if adamw:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    order = torch.randperm(len(y), generator=g)
    pos = 0
    for _ in range(steps):
        if pos + batch > len(y):
            order, pos = torch.randperm(len(y), generator=g), 0
        idx = order[pos : pos + batch]
        pos += batch
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def run_one(model_name: str, method_name: str, density: float, seed: int, data, args) -> dict:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = build_model(model_name)
    method, options = METHODS[method_name]
    record = {
        "model": model_name,
        "method": method_name,
        "density": density,
        "seed": seed,
        "steps": args.steps,
    }
    start = time.perf_counter()
    if method is not None:
        options = dict(options)
        if method_name in SEEDED:
            options["seed"] = seed
        rounds = FIXED_ROUNDS.get(method_name, args.rounds) if method in ITERATIVE else 1
        record["rounds"] = rounds
        batches = scoring_batch(x_train, y_train, args.per_class, seed)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # collapse is recorded below, from the masks
                if method == "hybrid":
                    masks = hybrid_masks(
                        model, options["select"], options["allocate"], batches, density, rounds
                    )
                else:
                    sanity = options.pop("sanity", None)
                    scored = model
                    if options.pop("layer_scale_one", False):  # score a copy whose layer scales are 1
                        scored = copy.deepcopy(model)
                        with torch.no_grad():
                            for name, p in scored.named_parameters():
                                if name.endswith("layer_scale"):
                                    p.fill_(1.0)
                    scoring_batches = batches
                    if options.pop("float64", False):  # score a float64 copy (float32 overflows)
                        scored = copy.deepcopy(scored).double()
                        scoring_batches = [(x.double(), y) for x, y in batches]
                    masks = find_masks(
                        scored,
                        make_scorer(method, options),
                        scoring_batches,
                        density=density,
                        rounds=rounds,
                        reshuffle=sanity == "reshuffle",
                        invert=sanity == "invert",
                        generator=torch.Generator().manual_seed(seed),
                    )
                    if sanity == "reinit":
                        g = torch.Generator().manual_seed(seed)
                        with torch.no_grad():
                            for n in masks:
                                w = model.get_parameter(n)
                                w.copy_(w.flatten()[torch.randperm(w.numel(), generator=g)].view_as(w))
                    record["sanity"] = sanity
        except (RuntimeError, ValueError) as err:  # e.g. all-zero scores of px_train on BatchNorm
            return {
                **record,
                "error": f"{type(err).__name__}: {err}"[:300],
                "prune_s": time.perf_counter() - start,
            }
        apply_masks(model, masks)
        report = sparsity_report(model, batches[0][0][:1])
        record["total_density"] = report["density"]
        record["effective_density"] = report["effective_density"]
        record["layers"] = {n: v["density"] for n, v in report["layers"].items()}
        record["collapsed"] = [n for n, v in report["layers"].items() if v["collapsed"]]
    record["prune_s"] = time.perf_counter() - start
    start = time.perf_counter()
    adamw = model_name in ADAMW
    record["optimizer"] = "adamw" if adamw else "sgd"
    lr = ADAMW[model_name] if adamw else args.lr
    train(model, x_train, y_train, args.steps, args.batch, lr, seed, adamw)
    record["train_s"] = time.perf_counter() - start
    record["accuracy"] = accuracy(model, x_test, y_test)
    return record


def score_shares(
    model_name: str,
    method_names: list[str],
    seed: int,
    data,
    per_class: int,
    density: float | None = None,
    rounds: int = 10,
) -> str:
    """Markdown: each layer's share (%) of the total score at initialisation (one round, dense model).

    With ``density``, also the shares of the scores each method computes in rounds 1, R/2 + 1 and R of its
    own ``rounds``-round iteration to ``density`` (the masks after round r of R are ``find_masks`` to
    ``density ** (r / R)`` in r rounds: the same schedule), and the kept weights per layer at the end."""
    x_train, y_train = data[0], data[1]
    torch.manual_seed(seed)
    model = build_model(model_name)
    batches = scoring_batch(x_train, y_train, per_class, seed)
    names = list(prunable_parameters(model))
    lines = [
        "| method | "
        + ("round | " if density else "")
        + " | ".join(f"{_short(n)} ({model.get_parameter(n).numel()})" for n in names)
        + " |"
    ]
    lines.append("| --- |" + " --- |" * (len(names) + bool(density)))
    for method_name in method_names:
        method, options = METHODS[method_name]
        if method in (None, "hybrid"):
            continue
        for r in sorted({0, rounds // 2, rounds - 1}) if density else [0]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if not r:
                    scores = compute_scores(model, make_scorer(method, options), batches)
                else:
                    # As find_masks scores round r + 1: the unmasked weights and the masks of round r.
                    masks = find_masks(
                        model,
                        make_scorer(method, options),
                        batches,
                        density=density ** (r / rounds),
                        rounds=r,
                    )
                    weights = {n: model.get_parameter(n).detach().clone() for n in names}
                    with torch.enable_grad():
                        scores = make_scorer(method, options).score(model, weights, masks, batches)
            total = sum(float(v.double().sum()) for v in scores.values())
            cells = [f"{100 * float(scores[n].double().sum()) / total:.2f}" for n in names]
            lines.append(
                f"| {method_name} | " + (f"{r + 1} | " if density else "") + " | ".join(cells) + " |"
            )
        if density:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                masks = find_masks(
                    model, make_scorer(method, options), batches, density=density, rounds=rounds
                )
            cells = [str(int(masks[n].sum())) for n in names]
            lines.append(f"| {method_name} | kept | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _steps(record: dict) -> int:
    return record.get("steps", DEFAULT_STEPS)


def _short(layer: str) -> str:
    return layer.removesuffix(".weight")


def report(records: list[dict], plot: Path | None, steps: int = DEFAULT_STEPS) -> str:
    """Markdown: accuracy (mean ± std over seeds) per method and density, per model; per-layer densities.

    Only the runs trained ``steps`` steps; for another length than the default, also each method's paired
    gain over its ``DEFAULT_STEPS``-step runs (same seed: same masks, only the training differs)."""
    everything, records = records, [r for r in records if _steps(r) == steps]
    lines = []
    models = [m for m in MODELS if any(r["model"] == m for r in records)]
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    densities = sorted({r["density"] for r in records if r["method"] != "dense"}, reverse=True)
    summary: dict = {}
    for model in models:
        lines.append(
            f"\n**{model}** — test accuracy (%) after {steps} training steps, mean ± std over {len(SEEDS)} seeds "
            "(`n=K`: over K seeds); "
            "`cK` = K runs with a collapsed layer"
        )
        lines.append("")
        lines.append("| method | " + " | ".join(f"d={d:g}" for d in densities) + " |")
        lines.append("| --- |" + " --- |" * len(densities))
        for method in methods:
            if not any(r["model"] == model and r["method"] == method for r in records):
                continue  # a variant run on the other model only
            cells = []
            for d in densities:
                rs = [
                    r
                    for r in records
                    if r["model"] == model
                    and r["method"] == method
                    and (method == "dense" or r["density"] == d)
                ]
                accs = [100 * r["accuracy"] for r in rs if "accuracy" in r]
                errors = sum("error" in r for r in rs)
                collapsed = sum(bool(r.get("collapsed")) for r in rs)
                if not rs:
                    cells.append("–")
                    continue
                cell = f"{statistics.mean(accs):.1f} ± {statistics.pstdev(accs):.1f}" if accs else "n/a"
                if len(rs) != len(SEEDS):
                    cell += f" n={len(rs)}"
                if collapsed:
                    cell += f" c{collapsed}"
                if errors:
                    budget = all("raise the density" in r.get("error", "") for r in rs if "error" in r)
                    cell += f" ({errors} {'infeasible: head > budget' if budget else 'failed'})"
                cells.append(cell)
                summary[(model, method, d)] = accs
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.extend(_paired(records, model, methods, densities))
        if steps != DEFAULT_STEPS:
            lines.extend(_steps_gain(everything, model, methods, densities, steps))
        # Per-layer densities at the lowest density, mean over seeds; 0 = collapsed in every seed.
        d = min(densities)
        rs = [r for r in records if r["model"] == model and r["density"] == d and "layers" in r]
        if rs:
            layers = list(rs[0]["layers"])
            lines.append("")
            lines.append(
                f"Per-layer kept fraction (%) at d={d:g}, mean over seeds; **bold 0** = collapsed in every "
                "seed, `*` = collapsed in some seed"
            )
            lines.append("")
            lines.append("| method | total | " + " | ".join(_short(n) for n in layers) + " |")
            lines.append("| --- |" + " --- |" * (len(layers) + 1))
            for method in methods:
                mrs = [r for r in rs if r["method"] == method]
                if not mrs:
                    continue
                cells = [f"{100 * statistics.mean(r['total_density'] for r in mrs):.2f}"]
                for n in layers:
                    vals = [r["layers"][n] for r in mrs]
                    if all(v == 0 for v in vals):
                        cells.append("**0**")
                    else:
                        cells.append(
                            f"{100 * statistics.mean(vals):.2f}" + ("*" if any(v == 0 for v in vals) else "")
                        )
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if plot is not None and summary:
        # The hybrids are diagnostics (tables only): the plot shows methods.
        _plot(records, models, [m for m in methods if not m.startswith("hybrid")], densities, plot)
    return "\n".join(lines)


def _paired(records: list[dict], model: str, methods: list[str], densities: list[float]) -> list[str]:
    """Methods run on more seeds than the default: accuracy minus SynFlow's on the same seeds (same
    initialisation, scoring data and training order), mean ± standard error, against SynFlow with the
    same rounds (``synflow_r100`` for ``..._r100``)."""
    acc = {
        (r["method"], r["density"], r["seed"]): 100 * r["accuracy"]
        for r in records
        if r["model"] == model and "accuracy" in r
    }
    rows = []
    for method in methods:
        if method.startswith("synflow") or method == "dense":
            continue
        base = "synflow_r100" if FIXED_ROUNDS.get(method) == 100 else "synflow"
        cells, wide = [], False
        for d in densities:
            diffs = [
                a - acc[(base, d, seed)]
                for (m, dd, seed), a in acc.items()
                if m == method and dd == d and (base, d, seed) in acc
            ]
            wide |= len(diffs) > len(SEEDS)
            if len(diffs) < 2:
                cells.append("–")
                continue
            se = statistics.stdev(diffs) / math.sqrt(len(diffs))
            cells.append(f"{statistics.mean(diffs):+.1f} ± {se:.1f} (n={len(diffs)})")
        if wide:
            rows.append(f"| {method} | {base} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    header = [
        "",
        "Paired difference to SynFlow (accuracy points, same seeds, same rounds), mean ± standard error,",
        f"for the methods run on more than {len(SEEDS)} seeds",
        "",
        "| method | against | " + " | ".join(f"d={d:g}" for d in densities) + " |",
        "| --- | --- |" + " --- |" * len(densities),
    ]
    return header + rows


def _steps_gain(records: list[dict], model: str, methods: list[str], densities: list[float], steps: int):
    """Accuracy after ``steps`` minus after ``DEFAULT_STEPS`` steps, same method, density and seed (the
    masks are the same: pruning does not depend on the training length), mean ± standard error."""
    acc = {
        (r["method"], r["density"], r["seed"], _steps(r)): 100 * r["accuracy"]
        for r in records
        if r["model"] == model and "accuracy" in r
    }
    rows = []
    for method in methods:
        cells = []
        for d in densities:
            diffs = [
                a - acc[(m, dd, seed, DEFAULT_STEPS)]
                for (m, dd, seed, st), a in acc.items()
                if m == method and dd == d and st == steps and (m, dd, seed, DEFAULT_STEPS) in acc
            ]
            if len(diffs) < 2:
                cells.append("–")
                continue
            se = statistics.stdev(diffs) / math.sqrt(len(diffs))
            cells.append(f"{statistics.mean(diffs):+.1f} ± {se:.1f} (n={len(diffs)})")
        if any(c != "–" for c in cells):
            rows.append(f"| {method} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    header = [
        "",
        f"Gain of {steps} over {DEFAULT_STEPS} training steps (accuracy points, same seeds and masks), mean ± "
        + "standard error",
        "",
        "| method | " + " | ".join(f"d={d:g}" for d in densities) + " |",
        "| --- |" + " --- |" * len(densities),
    ]
    return header + rows


def _plot(records, models, methods, densities, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 6.2), squeeze=False)
    # Baselines dashed in one palette, PX variants solid in another, so the two families read apart.
    baselines = [m for m in methods if not m.startswith("px") and m != "dense"]
    pxs = [m for m in methods if m.startswith("px")]
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(baselines)}
    colours.update({m: plt.cm.tab20b((3 * i) % 20 + (3 * i) // 20) for i, m in enumerate(pxs)})
    for ax, model in zip(axes[0], models):
        for i, method in enumerate(methods):
            style = "-" if method.startswith("px") else "--"
            means, stds, ds = [], [], []
            for d in densities:
                accs = [
                    100 * r["accuracy"]
                    for r in records
                    if r["model"] == model
                    and r["method"] == method
                    and (method == "dense" or r["density"] == d)
                    and "accuracy" in r
                ]
                if accs:
                    ds.append(d)
                    means.append(statistics.mean(accs))
                    stds.append(statistics.pstdev(accs))
            if not ds:
                continue
            if method == "dense":
                ax.axhline(means[0], color="black", lw=1, ls=":", label="dense")
                continue
            ax.errorbar(
                ds,
                means,
                yerr=stds,
                ls=style,
                marker=("^" if method.endswith("_r100") else "o") if method.startswith("px") else "s",
                ms=3,
                capsize=2,
                label=method,
                color=colours[method],
            )
        ax.set_xscale("log")
        ax.set_xticks(densities, [f"{d:g}" for d in densities])
        ax.minorticks_off()
        ax.invert_xaxis()
        ax.set_xlabel("density (fraction of weights kept)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Digits (upsampled), {model}: mean ± std over seeds")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    # Legend entries of every panel (a variant may have run on one model only), in method order.
    for ax in axes[0][1:]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    order = sorted(range(len(labels)), key=lambda i: methods.index(labels[i]) if labels[i] in methods else -1)
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    rows = math.ceil(len(labels) / 5)
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.035 * rows + 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--densities", nargs="+", type=float, default=list(DENSITIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the iterative methods")
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help="SGD steps of training (same for every run); with --report, report the runs of this length",
    )
    parser.add_argument("--size", type=int, default=16, help="image side after upsampling the 8x8 digits")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--per-class", type=int, default=5, help="scoring images per class")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help=f"plot of the report (default {HERE / 'quality_digits.png'} for the {DEFAULT_STEPS}-step runs of "
        "the default --out; none for another --steps or --out unless given)",
    )
    parser.add_argument("--report", action="store_true", help="only rebuild the table and plot from --out")
    parser.add_argument(
        "--report-seeds",
        nargs="+",
        type=int,
        default=None,
        help="with --report: tables over these seeds only (the plot is not rewritten)",
    )
    parser.add_argument(
        "--score-shares",
        action="store_true",
        help="only print each layer's share of the total score at initialisation (first seed, --methods)",
    )
    parser.add_argument(
        "--share-density",
        type=float,
        default=None,
        help="with --score-shares: also the shares in rounds 1, R/2+1, R of each method's iteration to this "
        "density, and the kept weights per layer",
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown --methods {unknown}; known: {', '.join(METHODS)}")
    if "ntksap" in args.methods and "ntksap" not in SCORERS:
        print("ntksap is not available in this checkout: skipped", file=sys.stderr)
        args.methods = [m for m in args.methods if m != "ntksap"]
    torch.set_num_threads(args.threads)
    if args.score_shares:
        data = digits(args.size)
        for model_name in args.models:
            print(
                f"\n**{model_name}**, seed {args.seeds[0]}: share (%) of the total score per layer (size)\n"
            )
            print(
                score_shares(
                    model_name,
                    args.methods,
                    args.seeds[0],
                    data,
                    args.per_class,
                    args.share_density,
                    args.rounds,
                )
            )
        return
    if not args.report:
        data = digits(args.size)
        done = {(r["model"], r["method"], r["density"], r["seed"], _steps(r)) for r in load(args.out)}
        t0 = time.perf_counter()
        for model_name in args.models:
            for seed in args.seeds:
                for method_name in args.methods:
                    for density in [1.0] if method_name == "dense" else args.densities:
                        key = (model_name, method_name, density, seed, args.steps)
                        if key in done:
                            continue
                        record = run_one(model_name, method_name, density, seed, data, args)
                        with args.out.open("a") as f:
                            f.write(json.dumps(record) + "\n")
                        acc = record.get("accuracy", math.nan)
                        print(
                            f"[{time.perf_counter() - t0:7.0f}s] {model_name} {method_name} d={density:g} "
                            f"seed={seed} acc={acc:.3f} prune={record['prune_s']:.1f}s "
                            f"train={record.get('train_s', 0):.1f}s {record.get('error', '')}",
                            flush=True,
                        )
    records = load(args.out)
    if args.report_seeds is not None:  # a subset for the tables only: the plot keeps every seed
        subset = [r for r in records if r["seed"] in args.report_seeds]
        print(report(subset, None, args.steps))
        return
    plot = args.plot
    if plot is None and args.steps == DEFAULT_STEPS and args.out.resolve() == OUT:
        plot = HERE / "quality_digits.png"  # a scratch --out or another length never overwrites it
    print(report(records, plot, args.steps))


if __name__ == "__main__":
    main()

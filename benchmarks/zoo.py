"""Every method on the networks users bring: torchvision's classification zoo and a few timm models.

Each cell is one ``find_masks(model, method, batches, density=0.05, rounds=2)`` on a fresh model
(``weights=None``, 10 classes) with one batch of 2 random images (``--batch-size``) at the smallest side the
model accepts (tried in ``SIDES``), as a new user would call it. Recorded per cell: seconds, the error (if any), the density
reached, the layers emptied (collapsed), the effective density (kept weights on an input-output path,
``effective_masks``), whether the model was left untouched, and the time against PX's on the same model.

Usage:
    python benchmarks/zoo.py                                   # the whole zoo (about an hour on 2 cores)
    python benchmarks/zoo.py --models resnet18 vit_b_16 timm.convnext_atto --methods px synflow
    python benchmarks/zoo.py --report                          # only rebuild the table from --out
    python benchmarks/zoo.py --models resnet50 --methods snip --batch-size 8 --out /tmp/zoo8.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch
import torchvision

from px_lightning.pruning import effective_masks, find_masks

# The method names of the table: PX in each variant, then the baselines.
METHODS = {
    "px": ("px", {"variant": "cvpr2024"}),
    "px-2025": ("px", {"variant": "2025"}),
    "px-2025-eval": ("px", {"variant": "2025-eval"}),
    "snip": ("snip", {}),
    "grasp": ("grasp", {}),
    "synflow": ("synflow", {}),
    "ntksap": ("ntksap", {"seed": 0}),
    "magnitude": ("magnitude", {}),
    "random": ("random", {"seed": 0}),
}
TIMM_MODELS = (
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "convnext_atto",
    "efficientnet_b0",
    "mobilenetv3_small_100",
    "regnety_002",
    "resnet18d",
)
SIDES = (32, 64, 96, 128, 160, 224, 299)
MAX_PARAMETERS = 100_000_000
DENSITY, ROUNDS = 0.05, 2
OUT = Path(__file__).resolve().parent / "zoo_results.jsonl"


def build(name: str) -> torch.nn.Module:
    """A fresh model by table name: ``timm.<name>`` or a torchvision classification model."""
    torch.manual_seed(0)
    if name.startswith("timm."):
        import timm

        return timm.create_model(name.removeprefix("timm."), pretrained=False, num_classes=10)
    return torchvision.models.get_model(name, weights=None, num_classes=10)


def zoo_names() -> list[str]:
    """torchvision's classification models of at most ``MAX_PARAMETERS`` parameters, then the timm ones."""
    names = []
    for name in torchvision.models.list_models(module=torchvision.models):
        try:
            with torch.device("meta"):  # no memory, no init time
                model = torchvision.models.get_model(name, weights=None)
        except NotImplementedError:  # RegNet's builder computes its widths from tensor data
            model = torchvision.models.get_model(name, weights=None)
        size = sum(p.numel() for p in model.parameters())
        if size <= MAX_PARAMETERS:
            names.append(name)
    return names + [f"timm.{n}" for n in TIMM_MODELS]


def smallest_side(model: torch.nn.Module) -> int:
    """The smallest side in ``SIDES`` at which a forward pass of 2 images runs in ``eval()`` and in
    ``train()`` mode (no gradient): Inception-v3's auxiliary head, which runs in training only, needs more."""
    for side in SIDES:
        try:
            with torch.no_grad():
                for training in (False, True):
                    model.train(training)(torch.randn(2, 3, side, side))
            return side
        except (RuntimeError, ValueError, AssertionError, IndexError):
            continue
    raise RuntimeError(f"no side in {SIDES} runs")


def _failed(row: dict, err: Exception, where: str = "") -> dict:
    """``row`` with the error and the end of its traceback (called inside the ``except``)."""
    row["error"] = f"{where}{type(err).__name__}: {err}"[:300]
    row["trace"] = traceback.format_exc(limit=-2)[-600:]
    return row


# The labels of a batch, its first ``batch_size`` entries (a batch of 2 is labelled 1 and 7).
LABELS = torch.tensor([1, 7, 3, 9, 0, 5, 2, 8, 4, 6])


def run_cell(name: str, method: str, side: int, batch_size: int = 2) -> dict:
    """One ``find_masks`` call on a fresh model, as the module docstring says."""
    model = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    labels = LABELS.repeat(batch_size // len(LABELS) + 1)[:batch_size]
    batches = [(torch.randn(batch_size, 3, side, side, generator=generator), labels)]
    scorer, options = METHODS[method]
    row = {"model": name, "method": method, "side": side, "batch_size": batch_size}
    start = time.perf_counter()
    try:
        masks = find_masks(model, scorer, batches, density=DENSITY, rounds=ROUNDS, **options)
    except Exception as err:  # noqa: BLE001 - recorded, not raised: the table shows which calls fail and why
        row["seconds"] = time.perf_counter() - start
        return _failed(row, err)
    row["seconds"] = time.perf_counter() - start
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    row.update(
        density=kept / total,
        collapsed=[n for n, m in masks.items() if not m.any()],
        untouched=all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()),
    )
    try:
        effective = effective_masks(model, batches[0][0], masks)
    except Exception as err:  # noqa: BLE001 - recorded: a failure of effective_masks is a finding too
        return _failed(row, err, "effective_masks: ")
    row["effective_density"] = sum(int(m.sum()) for m in effective.values()) / total
    return row


def table(rows: list[dict]) -> str:
    """Markdown: per model a line per method with seconds, layers collapsed, effective density, and the
    time over PX's; failed calls show their error."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    by = {(r["model"], r["method"]): r for r in rows}
    lines = [
        "Cell: seconds / layers collapsed / effective density (x PX's time); `failed` gives the error below.",
        "",
        "| model (side) | " + " | ".join(methods) + " |",
        "| --- |" + " --- |" * len(methods),
    ]
    errors = []
    for model in models:
        px = by.get((model, "px"), {}).get("seconds")
        cells = []
        for method in methods:
            r = by.get((model, method))
            if r is None:
                cells.append("")
            elif "error" in r:
                errors.append(f"- {model}, {method}: {r['error']}")
                cells.append("failed")
            else:
                ratio = f" (x{r['seconds'] / px:.1f})" if px and method != "px" else ""
                flag = "" if r["untouched"] else " CHANGED"
                flag += "" if abs(r["density"] - DENSITY) < 1e-3 else f" density {r['density']:.4f}"
                cells.append(
                    f"{r['seconds']:.1f} / {len(r['collapsed'])} / {r['effective_density']:.3f}{ratio}{flag}"
                )
        side = next(r["side"] for r in rows if r["model"] == model)
        lines.append(f"| {model} ({side}) | " + " | ".join(cells) + " |")
    slowest = []
    for method in methods[1:] if methods[:1] == ["px"] else []:
        ratios = [
            (by[m, method]["seconds"] / by[m, "px"]["seconds"], m)
            for m in models
            if "seconds" in by.get((m, method), {}) and "error" not in by.get((m, "px"), {"error": 1})
        ]
        if ratios:
            worst = max(ratios)
            slowest.append(f"{method} x{worst[0]:.1f} ({worst[1]})")
    summary = ["", "Most time against PX's, per method: " + ", ".join(slowest) + "."] if slowest else []
    return "\n".join(lines + summary + ([""] + errors if errors else []))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", help="table names (timm ones as timm.<name>); default: the zoo"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2, help="images in the scoring batch (default 2)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report", action="store_true", help="only print the table of --out")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.report:
        torch.set_num_threads(args.threads)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for name in args.models or zoo_names():
            side = smallest_side(build(name))
            for method in args.methods:
                row = run_cell(name, method, side, args.batch_size)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    latest = {(r["model"], r["method"]): r for r in rows}  # a rerun of a cell replaces it
    print(table(list(latest.values())))


if __name__ == "__main__":
    main()

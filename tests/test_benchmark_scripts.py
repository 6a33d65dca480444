"""The benchmark scripts run (tiny sizes, on the CPU), so a GPU session can spend its time measuring.

Their timings are not checked here (speed targets live in benchmarks/README.md); what is checked is what
each script itself verifies and reports: same scores / masks as the published structure, scoring on the
device asked for, the requested density kept.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_scoring_benchmark_agrees_with_the_published_structure(tmp_path):
    out = tmp_path / "scoring.json"
    _run(
        "scoring.py",
        "--batches",
        "2",
        "--batch-size",
        "2",
        "--repeats",
        "1",
        "--no-memory",
        "--json",
        str(out),
    )
    result = json.loads(out.read_text())
    assert result["model"] == "resnet20" and result["data"] == "2 batches of 2 at 32x32"
    assert result["max_relative_score_difference"] < 1e-4
    assert set(result["median_s"]) == {
        "api compute_scores",
        "published scoring",
        "api find_masks (1 round)",
        "published round (+ threshold)",
    }


def test_scoring_benchmark_cvpr2024_agrees_with_the_april_2024_structure(tmp_path):
    # The API's cvpr2024 variant against the 2024 code's own cost structure (three copies, three passes).
    out = tmp_path / "scoring2024.json"
    _run(
        "scoring.py",
        "--cvpr2024",
        *("--batches", "2", "--batch-size", "2", "--repeats", "1", "--no-memory", "--json", str(out)),
    )
    result = json.loads(out.read_text())
    assert result["variant"] == "cvpr2024" and result["data"] == "2 batches of 2 at 32x32"
    assert result["max_relative_score_difference"] < 1e-4
    assert result["ratio_scoring"] > 0 and result["ratio_round"] > 0


def test_threshold_benchmark_checks_identical_masks():
    # The script raises if the API's threshold and the published cat + kthvalue give different masks.
    _run("scoring.py", "--threshold", "--repeats", "1", "--no-memory")


def test_gpu_callback_benchmark_smoke_run_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_callback.json"
    _run(
        "gpu_callback.py",
        *("--accelerator", "cpu", "--rounds", "2", "--batch-size", "2", "--scoring-batches", "1"),
        *("--steps", "1", "--warmup", "1", "--image-size", "32", "--out", str(out)),
    )
    result = json.loads(out.read_text())
    assert result["card"] == "cpu (smoke run)" and result["rounds"] == 2
    for precision in ("32-true", "bf16-mixed"):
        run = result[precision]
        assert run["scored_on"] == ["cpu"] and run["scoring_rounds"] == 2, precision
        assert run["kept_density"] == pytest.approx(0.1, abs=1e-4), precision
        assert run["masked_step_s"] > 0 and run["dense_step_s"] > 0, precision


def test_gpu_precision_benchmark_smoke_run_on_the_cpu(tmp_path):
    # On a CPU there is no TF32: both float32 modes are plain float32, close to the float64 reference.
    out = tmp_path / "precision.json"
    _run(
        "gpu_precision.py",
        *("--device", "cpu", "--model", "resnet20", "--batch-size", "4", "--batches", "2"),
        *("--image-size", "32", "--rounds", "2", "--repeats", "1", "--json", str(out)),
    )
    result = json.loads(out.read_text())
    for mode in ("float32, TF32 on (default)", "float32, TF32 off"):
        run = result[mode]
        assert run["max_relative_error_vs_float64"] < 1e-4, mode
        assert run["one_shot_masks_vs_float64"]["0.018"]["iou"] > 0.99, mode
        iterative = run["iterative_2_rounds_d0.018_vs_float64"]
        assert iterative["iou"] > 0.99 and iterative["collapsed"] == iterative["collapsed_in_reference"], mode
    assert result["float32, TF32 on (default)"]["iterative_same_run_twice"]["iou"] == 1.0


def test_connectivity_counts_weights_on_input_output_paths():
    # 2 inputs -> 3 hidden -> 1 output. Kept: in0->h0, in1->h1 (h1 reaches no output), h0->out, h2->out
    # (h2 has no input). Effective: in0->h0 and h0->out; in1->h1 input-only; h2->out output-only.
    sys.path.insert(0, str(BENCHMARKS))
    import torch
    from connectivity import path_counts
    from torch import nn

    # Linear's biases are not zero: were they counted, h2 -> out would lie on a (bias) path.
    model = nn.Sequential(nn.Linear(2, 3, bias=True), nn.ReLU(), nn.Linear(3, 1, bias=True))
    masks = {
        "0.weight": torch.tensor([[1, 0], [0, 1], [0, 0]], dtype=torch.bool),
        "2.weight": torch.tensor([[1, 0, 1]], dtype=torch.bool),
    }
    counts = path_counts(model, masks, torch.zeros(4, 2))
    assert counts.pop("_paths") == 1.0
    assert counts["0.weight"] == {
        "kept": 2, "effective": 1, "input_only": 1, "output_only": 0, "isolated": 0,
        "active_out": 1, "out_channels": 3,
    }  # fmt: skip
    assert counts["2.weight"] == {
        "kept": 2, "effective": 1, "input_only": 0, "output_only": 1, "isolated": 0,
        "active_out": 1, "out_channels": 1,
    }  # fmt: skip


def test_zoo_benchmark_records_each_cell_and_its_table(tmp_path):
    out = tmp_path / "zoo.jsonl"
    _run(
        "zoo.py",
        "--models",
        "squeezenet1_1",
        "--methods",
        "px",
        "random",
        "--batch-size",
        "3",
        "--out",
        str(out),
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["model"], r["method"]) for r in rows] == [("squeezenet1_1", "px"), ("squeezenet1_1", "random")]
    for row in rows:
        assert row["side"] == 32 and row["batch_size"] == 3 and row["untouched"]
        assert row["density"] == pytest.approx(0.05, abs=1e-3)
        assert 0 <= row["effective_density"] <= row["density"]


@pytest.mark.parametrize("model", ["vit", "convnext"])
def test_quality_benchmark_trains_the_transformer_and_the_convnext(tmp_path, model):
    out = tmp_path / "quality.jsonl"
    _run(
        "quality.py",
        *("--models", model, "--methods", "random", "px_cvpr2024", "--densities", "0.1"),
        *(
            "--seeds",
            "0",
            "--steps",
            "2",
            "--rounds",
            "2",
            "--out",
            str(out),
            "--plot",
            str(tmp_path / "q.png"),
        ),
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["method"] for r in rows] == ["random", "px_cvpr2024"]
    for row in rows:
        assert row["optimizer"] == "adamw" and row["total_density"] == pytest.approx(0.1, abs=1e-3)
        assert 0 <= row["accuracy"] <= 1

"""The notebooks run top to bottom on the CPU (nbclient, a real Jupyter kernel); stored without outputs.

After the last cell the test runs one more cell in the same kernel that prints, as JSON, what the notebook
computed (densities reached, accuracies, spectra, predictions), and asserts on those values.
"""

import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

# Per notebook: a JSON-able expression over the notebook's own variables, read after it has run.
RESULTS = {
    "01_quickstart.ipynb": """{
        "density": report["density"], "layer_densities": dens, "acc": acc,
        "densities": densities, "results": results}""",
    "02_ntk_spectrum.ipynb": """{
        name: {
            "density": sum(int(m.sum()) for m in masks[name].values())
            / sum(m.numel() for m in masks[name].values()),
            "trace_ratio": float(r["trace_ratio"]),
            "alignment": float(r["alignment"]),
            "masked": r["masked"].eigenvalues.tolist(),
            "dense": r["dense"].eigenvalues.tolist(),
        }
        for name, r in reports.items()}""",
    "03_segmentation.ipynb": """{
        "density": report["density"],
        "prediction_shape": list(predictions.shape), "mask_shape": list(masks.shape),
        "classes": sorted(set(predictions.unique().tolist())), "num_classes": module.hparams.num_classes}""",
}


def check_quickstart(values, printed):
    assert abs(values["density"] - 0.05) < 1e-3
    assert all(d > 0 for d in values["layer_densities"])  # no layer collapsed
    # Ten digit classes: chance is 10%; 5 epochs on 100 images leave PX at 5% well above it.
    assert 0.3 <= values["acc"] <= 1.0
    results, densities = values["results"], values["densities"]
    assert set(results) == {"PX", "SynFlow", "random"}
    assert results["PX"][densities.index(0.05)] == values["acc"]  # the first run, reused
    assert all(0.0 <= a <= 1.0 for accs in results.values() for a in accs)
    assert len({tuple(accs) for accs in results.values()}) == 3  # the methods give different curves


def check_spectrum(values, printed):
    assert set(values) == {"PX", "SynFlow", "SNIP", "random"}
    for name, v in values.items():
        assert abs(v["density"] - 0.05) < 1e-3, name
        assert len(v["masked"]) == len(v["dense"]) == 200, name  # 20 images x 10 classes
        assert all(a >= b for a, b in zip(v["masked"], v["masked"][1:])), name  # sorted, largest first
        assert v["trace_ratio"] > 0.0, name  # a kernel left, not an all-zero one
        assert -1.0 <= v["alignment"] <= 1.0 + 1e-6, name
    assert values["PX"]["trace_ratio"] > values["random"]["trace_ratio"]
    assert values["PX"]["masked"] != values["SynFlow"]["masked"]  # different masks, different spectra
    assert len({tuple(v["dense"]) for v in values.values()}) == 1  # one dense kernel for all


def check_segmentation(values, printed):
    # include=["model.encoder"]: the report covers the encoder, pruned to 20%.
    assert abs(values["density"] - 0.2) < 1e-3
    # trainer.predict later clears callback_metrics: the mIoU is read from what the training cell printed.
    miou = float(re.search(r"val mIoU (\S+)", printed).group(1))
    assert 0.0 <= miou <= 1.0
    assert values["prediction_shape"] == values["mask_shape"]
    assert all(0 <= c < values["num_classes"] for c in values["classes"])


CHECKS = {
    "01_quickstart.ipynb": check_quickstart,
    "02_ntk_spectrum.ipynb": check_spectrum,
    "03_segmentation.ipynb": check_segmentation,
}


def test_notebooks_are_present():
    names = {p.name for p in NOTEBOOKS}
    assert set(CHECKS) <= names, names
    assert {p.name for p in NOTEBOOKS} <= set(RESULTS), "a new notebook needs its RESULTS and CHECKS entries"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_and_computes_sane_values(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        f"{path.name} is stored with outputs: clear them before committing"
    )
    marker = "NOTEBOOK_RESULTS="
    nb.cells.append(
        nbformat.v4.new_code_cell(f"import json\nprint({marker!r} + json.dumps({RESULTS[path.name]}))")
    )
    # One thread per kernel: the machine is shared, and oversubscription is slower than one core.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    # Runs in tmp_path, so whatever a notebook writes (logs, checkpoints) stays out of the repository.
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    elapsed = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert [o for o in outputs[:-1] if "image/png" in o.get("data", {})], f"{path.name} drew no figure"
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    values = json.loads(printed.split(marker, 1)[1])
    CHECKS[path.name](values, "".join(o.get("text", "") for o in outputs if o.output_type == "stream"))
    print(f"{path.name}: {elapsed:.1f}s")

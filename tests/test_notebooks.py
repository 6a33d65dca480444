"""The notebooks run top to bottom on the CPU (nbclient, a real Jupyter kernel); stored without outputs."""

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_are_present():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_ntk_spectrum.ipynb", "03_segmentation.ipynb"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        f"{path.name} is stored with outputs: clear them before committing"
    )
    # One thread per kernel: the machine is shared, and oversubscription is slower than one core.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    # Runs in tmp_path, so whatever a notebook writes (logs, checkpoints) stays out of the repository.
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    elapsed = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
    ]
    assert images, f"{path.name} drew no figure"
    print(f"{path.name}: {elapsed:.1f}s")

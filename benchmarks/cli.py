"""How long a new user waits: ``px-lightning --help``, a refused value, and the quickstart, idle and loaded.

Each command runs as the user runs it (the ``px-lightning`` console script, a subprocess, in a scratch folder
with ``configs/`` linked in), first on the machine as it is ("idle"), then with ``--load`` CPU-bound
processes (``while True: pass``) running beside it, started and stopped by this script. The CLI chooses its
own thread count (``OMP_NUM_THREADS`` and ``PX_LIGHTNING_THREADS`` are removed from the environment), which
is what this measures: targets are the loaded quickstart at most 2x the idle one and ``--help`` under 3 s
idle. Results go to stdout as a Markdown table (paste into benchmarks/README.md, section "CLI").

Example:
    .. code-block:: bash

        python benchmarks/cli.py                      # about 2 to 4 minutes on two cores
        python benchmarks/cli.py --skip-quickstart    # --help and the refused value only (under a minute)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _command() -> list[str]:
    script = Path(sys.executable).parent / "px-lightning"
    return [str(script)] if script.exists() else [sys.executable, "-m", "px_lightning.cli"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PX_LIGHTNING_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def timed(args: list[str], cwd: Path, expect: int) -> tuple[float, str]:
    """Wall-clock seconds of one ``px-lightning`` run, and its stderr's thread line (if any)."""
    start = time.perf_counter()
    run = subprocess.run(
        [*_command(), *args], cwd=cwd, env=_env(), capture_output=True, text=True, check=False, timeout=3600
    )
    elapsed = time.perf_counter() - start
    if run.returncode != expect:
        raise RuntimeError(f"px-lightning {' '.join(args)} exited {run.returncode}:\n{run.stderr[-2000:]}")
    threads = next((ln for ln in run.stderr.splitlines() if "CPU thread" in ln), "")
    return elapsed, threads


def start_load(n: int) -> list[subprocess.Popen]:
    """``n`` CPU-bound processes (one busy core each), to be stopped by :func:`stop_load`."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_load(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        p.terminate()
    for p in processes:
        p.wait(timeout=10)


def measure(cwd: Path, repeats: int, quickstart: bool) -> dict[str, float]:
    quick = str(REPO / "configs" / "quickstart.yaml")
    cases = {
        "px-lightning --help": (["--help"], 0, repeats),
        "refused value (density=1.5)": (
            ["fit", "--config", quick, "--trainer.callbacks.init_args.density=1.5"],
            2,
            repeats,
        ),
        "px-lightning fit --help": (["fit", "--help"], 0, 1),
    }
    if quickstart:
        cases["quickstart (fit, 10 epochs, test)"] = (["fit", "--config", "configs/quickstart.yaml"], 0, 1)
    results = {}
    for name, (args, expect, n) in cases.items():
        runs = [timed(args, cwd, expect) for _ in range(n)]
        results[name] = statistics.median(t for t, _ in runs)
        note = runs[-1][1]
        print(f"  {name}: {results[name]:.1f} s{'  (' + note + ')' if note else ''}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", type=int, default=2, help="CPU-bound processes beside the loaded runs")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of --help and the refused value (median)"
    )
    parser.add_argument(
        "--skip-quickstart", action="store_true", help="time --help and the refused value only"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        (cwd / "configs").symlink_to(REPO / "configs")  # the README's relative path; logs stay in scratch
        print(f"cores: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
        print("idle (the machine as it is):", flush=True)
        idle = measure(cwd, args.repeats, not args.skip_quickstart)
        load = start_load(args.load)
        try:
            time.sleep(1.0)
            print(f"loaded ({args.load} CPU-bound processes beside it):", flush=True)
            loaded = measure(cwd, args.repeats, not args.skip_quickstart)
        finally:
            stop_load(load)
    print("\n| command | idle (s) | loaded (s) | loaded / idle |\n| --- | ---: | ---: | ---: |")
    for name in idle:
        print(f"| {name} | {idle[name]:.1f} | {loaded[name]:.1f} | {loaded[name] / idle[name]:.2f} |")


if __name__ == "__main__":
    main()

"""What a user reads when a command goes wrong: ``px-lightning`` run as a subprocess on each bad input.

Each case asserts the whole stderr: one ``px-lightning: error:`` line naming the option as the user wrote it
(``--trainer.callbacks.init_args.density=1.5`` on the command line, ``bad.yaml: trainer.callbacks[0]...`` in a
config file), the value and what is allowed, then one line of advice; no usage text, no traceback; exit
status 2; and no log folder left behind. Also: ``--help`` without importing torch, ``--debug`` for the
traceback, the thread count, and a quiet console.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
CIFAR10 = REPO / "configs" / "cifar10" / "resnet20_px.yaml"
HINT = "  `px-lightning {sub} --help` lists the options; --debug shows the traceback"
TAKES = (
    "  ForesightPruningCallback takes: method, density, sparsity, rounds, scope, schedule, num_batches, include, "
    "exclude, reinit, reshuffle, make_permanent, verbose, method_options, distributed_scoring, invert, pattern, export_sparse"
)
# What Lightning prints once the Trainer is built (before the data is read); nothing else may precede an error.
TRAINER_INFO = re.compile(r"^(Seed set to \d+|GPU available: .*|TPU available: .*|HPU available: .*)$")


def px_lightning(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The console script, as a user runs it (falling back to ``python -m`` where it is not installed)."""
    script = Path(sys.executable).parent / "px-lightning"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "px_lightning.cli"]
    full_env = {k: v for k, v in os.environ.items() if k != "JSONARGPARSE_DEBUG"}
    full_env.update({"OMP_NUM_THREADS": "1", **(env or {})})
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [*command, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300, check=False
    )


def bad_config(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load(QUICKSTART.read_text())
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def assert_refused(run: subprocess.CompletedProcess, expected: list[str], cwd: Path, after_trainer=False):
    """Exit 2, stderr is exactly ``expected`` (after the Trainer's info lines if it was built), no logs."""
    lines = run.stderr.splitlines()
    if after_trainer:
        while lines and TRAINER_INFO.match(lines[0]):
            lines.pop(0)
    assert lines == expected, run.stderr
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "usage:" not in run.stderr
    assert run.stdout == ""
    assert not (cwd / "logs").exists() and not (cwd / "lightning_logs").exists(), sorted(cwd.rglob("*"))


# One bad option on the quickstart's command line, and the stderr it must give.
BAD_OPTIONS = {
    "value_refused_by_the_callback": (
        "--trainer.callbacks.init_args.density=1.5",
        [
            "px-lightning: error: --trainer.callbacks.init_args.density=1.5: density must be in (0, 1], got 1.5",
            "  ValueError (refused by ForesightPruningCallback);" + HINT.format(sub="fit")[1:],
        ],
    ),
    "misspelt_key_names_the_closest_key": (
        "--trainer.callbacks.init_args.densty=0.1",
        [
            (
                "px-lightning: error: --trainer.callbacks.init_args.densty=0.1: ForesightPruningCallback has no "
                "argument 'densty'; did you mean 'density'?"
            ),
            TAKES,
            HINT.format(sub="fit"),
        ],
    ),
    "misspelt_option_is_not_taken_for_another": (
        "--trainer.max_epoch=3",
        [
            (
                "px-lightning: error: --trainer.max_epoch=3: unknown option; did you mean --trainer.max_epochs or "
                "--trainer.min_epochs or --trainer.max_steps?"
            ),
            HINT.format(sub="fit"),
        ],
    ),
    "wrong_type": (
        "--trainer.max_epochs=ten",
        ["px-lightning: error: --trainer.max_epochs=ten: expected an int, got 'ten'", HINT.format(sub="fit")],
    ),
}


@pytest.mark.parametrize(("option", "expected"), list(BAD_OPTIONS.values()), ids=list(BAD_OPTIONS))
def test_bad_option_on_the_command_line(tmp_path, option, expected):
    run = px_lightning("fit", "--config", str(QUICKSTART), option, cwd=tmp_path)
    assert_refused(run, expected, tmp_path)


def test_unknown_method_lists_the_known_ones(tmp_path):
    run = px_lightning(
        "fit", "--config", str(QUICKSTART), "--trainer.callbacks.init_args.method=pxx", cwd=tmp_path
    )
    first = run.stderr.splitlines()[0]
    assert first.startswith(
        "px-lightning: error: --trainer.callbacks.init_args.method=pxx: unknown method 'pxx'"
    )
    assert "px, random, snip, synflow" in first
    assert_refused(
        run,
        [first, "  ValueError (refused by ForesightPruningCallback);" + HINT.format(sub="fit")[1:]],
        tmp_path,
    )


def _misspell_density(config):
    args = config["trainer"]["callbacks"][-1]["init_args"]
    args["densty"] = args.pop("density")


# One edit that spoils the quickstart config, and the stderr it must give; {path} is the spoilt file.
BAD_CONFIGS = {
    "value_refused_by_the_callback": (
        lambda c: c["trainer"]["callbacks"][-1]["init_args"].update(density=1.5),
        [
            (
                "px-lightning: error: {path}: trainer.callbacks[0].init_args.density: density must be in (0, 1], "
                "got 1.5"
            ),
            "  ValueError (refused by ForesightPruningCallback);" + HINT.format(sub="fit")[1:],
        ],
    ),
    "misspelt_key_names_the_file_and_the_closest_key": (
        _misspell_density,
        [
            (
                "px-lightning: error: {path}: trainer.callbacks[0].init_args.densty: ForesightPruningCallback has "
                "no argument 'densty'; did you mean 'density'?"
            ),
            TAKES,
            HINT.format(sub="fit"),
        ],
    ),
    "wrong_type": (
        lambda c: c["model"]["init_args"].update(num_classes="ten"),
        [
            "px-lightning: error: {path}: model.init_args.num_classes: expected an int, got 'ten'",
            HINT.format(sub="fit"),
        ],
    ),
}


@pytest.mark.parametrize(("edit", "expected"), list(BAD_CONFIGS.values()), ids=list(BAD_CONFIGS))
def test_bad_value_in_the_config_file(tmp_path, edit, expected):
    path = bad_config(tmp_path, edit)
    run = px_lightning("fit", "--config", str(path), cwd=tmp_path)
    assert_refused(run, [line.replace("{path}", str(path)) for line in expected], tmp_path)


def test_missing_config_file(tmp_path):
    run = px_lightning("fit", "--config", "no_such.yaml", cwd=tmp_path)
    assert_refused(
        run,
        [
            f"px-lightning: error: --config=no_such.yaml: File does not exist: '{tmp_path / 'no_such.yaml'}'",
            HINT.format(sub="fit"),
        ],
        tmp_path,
    )


def test_missing_checkpoint(tmp_path):
    run = px_lightning("test", "--config", str(QUICKSTART), "--ckpt_path=logs/missing.ckpt", cwd=tmp_path)
    assert_refused(
        run,
        [
            (
                "px-lightning: error: --ckpt_path=logs/missing.ckpt: checkpoint file not found: logs/missing.ckpt "
                f"(a path relative to {tmp_path}; a fit saves them under logs/<name>/version_N/checkpoints/)"
            )
        ],
        tmp_path,
    )


def test_missing_dataset_folder_says_how_to_download_it(tmp_path):
    # The run gets as far as the Trainer (and its TensorBoard folder, which it then removes) before the
    # DataModule looks for the data; the message speaks the command line's language, not Python's.
    missing = tmp_path / "no_data"
    run = px_lightning(
        "fit",
        "--config",
        str(CIFAR10),
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        "--data.init_args.download=false",
        f"--data.init_args.data_dir={missing}",
        "--trainer.logger.init_args.save_dir=logs",
        cwd=tmp_path,
    )
    assert_refused(
        run,
        [
            (
                f"px-lightning: error: --data.init_args.data_dir={missing}: CIFAR10DataModule: "
                f"{missing}/cifar-10-batches-py does not exist; add --data.init_args.download=true to fetch "
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, or point --data.init_args.data_dir at the "
                "folder that holds cifar-10-batches-py/"
            ),
            HINT.format(sub="fit"),
        ],
        tmp_path,
        after_trainer=True,
    )


def test_debug_shows_the_traceback(tmp_path):
    args = ("fit", "--config", str(QUICKSTART), "--trainer.callbacks.init_args.density=1.5")
    run = px_lightning(*args, "--debug", cwd=tmp_path)
    assert run.returncode != 0 and "Traceback" in run.stderr and "density must be in (0, 1]" in run.stderr
    run = px_lightning(*args, cwd=tmp_path, env={"JSONARGPARSE_DEBUG": "1"})
    assert run.returncode != 0 and "Traceback" in run.stderr


def test_help_answers_without_importing_torch(tmp_path):
    probe = (
        "import sys; from px_lightning.cli import main\n"
        "try:\n    main(['--help'])\nfinally:\n    print('torch' in sys.modules, 'lightning' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert run.stdout.strip().endswith("False False"), run.stdout
    assert "prune vision networks at initialisation" in run.stdout
    # The subcommands it lists are LightningCLI's.
    from lightning.pytorch.cli import LightningCLI

    for name in LightningCLI.subcommands():
        assert re.search(rf"^  {name} ", run.stdout, flags=re.MULTILINE), name
    # A subcommand's help is LightningCLI's own, with every option.
    run = px_lightning("fit", "--help", cwd=tmp_path)
    assert run.returncode == 0 and "--trainer.max_epochs" in run.stdout and "--test_after_fit" in run.stdout


def test_bad_thread_count_is_refused(tmp_path):
    run = px_lightning("fit", "--config", str(QUICKSTART), cwd=tmp_path, env={"PX_LIGHTNING_THREADS": "zero"})
    assert_refused(
        run,
        [
            (
                "px-lightning: error: PX_LIGHTNING_THREADS=zero: expected a positive number of CPU threads, "
                "e.g. PX_LIGHTNING_THREADS=2"
            )
        ],
        tmp_path,
    )


def test_thread_count_follows_the_idle_cores():
    # The choice is made before torch is imported (OMP_NUM_THREADS), from the cores other programs leave idle.
    probe = (
        "import os; from px_lightning.cli import configure_threads, choose_threads\n"
        "n = configure_threads(); import torch\n"
        "print(n, os.environ['OMP_NUM_THREADS'], torch.get_num_threads(), os.cpu_count())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PX_LIGHTNING_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    chosen, omp, torch_threads, cpus = map(int, out.stdout.split())
    assert 1 <= chosen <= cpus and omp == chosen and torch_threads == chosen
    # An explicit count wins, as the help says.
    env["PX_LIGHTNING_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[:3] == ["1", "1", "1"]


@pytest.mark.parametrize("message", ["tips", "treespec"])
def test_quiet_console_filters_exact_messages_only(message):
    # The CLI's filters drop Lightning's tips and the treespec warning, and nothing that merely resembles them.
    probe = (
        "import logging, warnings, sys\n"
        "from px_lightning.cli import quiet_console, LIGHTNING_TIPS, HARMLESS_WARNINGS\n"
        "logging.basicConfig(stream=sys.stdout, level=logging.INFO, format='%(message)s')\n"
        "warnings.simplefilter('always')\n"
        "quiet_console()\n"
        "log = logging.getLogger('lightning.pytorch.utilities.rank_zero')\n"
        "log.info(LIGHTNING_TIPS[0]); log.info(LIGHTNING_TIPS[1]); log.info(LIGHTNING_TIPS[0] + ' (changed)')\n"
        "warnings.showwarning = lambda m, *a, **k: print('WARNING', m)\n"
        "warnings.warn(HARMLESS_WARNINGS[0], FutureWarning); warnings.warn('another warning')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    lines = out.stdout.splitlines()
    if message == "tips":
        assert [ln for ln in lines if "Tip" in ln] == [lines[0]] and lines[0].endswith("(changed)")
    else:
        assert [ln for ln in lines if ln.startswith("WARNING")] == ["WARNING another warning"]

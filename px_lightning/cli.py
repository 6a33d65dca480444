"""The ``px-lightning`` command line: a ``LightningCLI`` over px-lightning's modules and datamodules.

Models and datamodules are chosen by ``class_path`` (subclass mode), so any ``LightningModule`` or
``LightningDataModule`` importable by its dotted path works too; the pruning callback is configured like
any Lightning callback, under ``trainer.callbacks``.

This module is the light entry point: ``px-lightning --help`` is answered from here without importing torch
or Lightning (importing ``lightning.pytorch`` takes seconds), the CPU thread count is chosen before torch
is imported, and a mistake in the command is printed as one short ``error:`` line (exit status 2) instead
of a usage text and a traceback (``--debug`` or ``JSONARGPARSE_DEBUG=1`` shows the traceback). The
LightningCLI itself lives in ``px_lightning._cli_app``.

Example:
    .. code-block:: bash

        px-lightning fit --config configs/quickstart.yaml
        px-lightning fit --config configs/cifar10/resnet20_px.yaml --trainer.callbacks.init_args.method=snip
        px-lightning fit --config configs/imagenet/resnet50_px.yaml --trainer.devices=8 --trainer.strategy=ddp

From Python (the tests do this)::

    >>> from px_lightning.cli import cli_main
    >>> cli = cli_main(["fit", "--config", "configs/quickstart.yaml", "--trainer.fast_dev_run=1"])
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use (see __getattr__): they import Lightning
    from px_lightning._cli_app import PXLightningCLI

__all__ = [
    "HARMLESS_WARNINGS",
    "LIGHTNING_TIPS",
    "THREADS_VARIABLE",
    "PXLightningCLI",
    "choose_threads",
    "cli_main",
    "configure_threads",
    "main",
    "quiet_console",
]

THREADS_VARIABLE = "PX_LIGHTNING_THREADS"

# LightningCLI's subcommands (`LightningCLI.subcommands()`), described without importing Lightning.
SUBCOMMANDS = {
    "fit": "Runs the full optimization routine.",
    "validate": "Perform one evaluation epoch over the validation set.",
    "test": "Perform one evaluation epoch over the test set.",
    "predict": "Run inference on your data.",
}

HELP = """usage: px-lightning [-h] [--debug] {{fit,validate,test,predict}} ...

{description}

subcommands:
{subcommands}

options:
  -h, --help   Show this help message and exit (`px-lightning fit --help` lists every option of `fit`:
               trainer, model, data, the pruning callback).
  --debug      Show the full traceback of an error (the same as JSONARGPARSE_DEBUG=1).

examples:
  px-lightning fit --config configs/quickstart.yaml
  px-lightning fit --config configs/cifar10/resnet20_px.yaml --trainer.callbacks.init_args.density=0.05
  px-lightning fit --config configs/quickstart.yaml --print_config

CPU threads: on the CPU, px-lightning uses one thread per core that other programs leave idle when it
starts (a busy machine makes extra threads several times slower, not faster); set {threads}=N (or
OMP_NUM_THREADS=N) to choose.
"""

# Lightning's advertising tips, dropped by exact message (in the CLI only: the library never filters).
LIGHTNING_TIPS = (
    (
        "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
        "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, which logs metrics and "
        "artifacts automatically to the Lightning Experiments platform."
    ),
    (
        "💡 Tip: For seamless cloud uploads and versioning, try installing "
        "[litmodels](https://pypi.org/project/litmodels/) to enable LitModelCheckpoint, which syncs "
        "automatically with the Lightning model registry."
    ),
)
# Harmless warnings, by exact message: torch 2.10+ deprecates a class that Lightning's own code still uses.
HARMLESS_WARNINGS = (
    (
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
        "treespec.is_leaf()` instead."
    ),
)


def description() -> str:
    """The one-paragraph description ``--help`` prints (shared with the LightningCLI parser).

    Example:
        >>> description().startswith("px-lightning: prune vision networks")
        True
    """
    return (
        "px-lightning: prune vision networks at initialisation (PX and the baselines) and train them sparse. "
        "A LightningCLI: `px-lightning fit|validate|test|predict --config FILE`; the pruning callback is "
        "configured under trainer.callbacks (e.g. --trainer.callbacks.init_args.method=snip). "
        "Start with `px-lightning fit --config configs/quickstart.yaml`."
    )


def __getattr__(name: str) -> Any:
    # The LightningCLI subclass imports Lightning: only when asked for.
    if name == "PXLightningCLI":
        from px_lightning._cli_app import PXLightningCLI

        return PXLightningCLI
    raise AttributeError(f"module 'px_lightning.cli' has no attribute {name!r}")


def _usable_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # two hardware threads per core share its arithmetic units: count cores, as torch does
        with open("/sys/devices/system/cpu/smt/active") as f:
            if f.read().strip() == "1":
                cores = max(1, cores // 2)
    except OSError:
        pass
    return cores


def _busy_cores(samples: int = 5, interval: float = 0.02) -> float:
    """How many cores other programs keep busy now: the runnable tasks in ``/proc/stat``, minus this one.

    An instant count (the median of a few samples), not the load average, which lags by a minute.
    """
    counts = []
    for i in range(samples):
        try:
            with open("/proc/stat") as f:
                line = next(ln for ln in f if ln.startswith("procs_running"))
            counts.append(int(line.split()[1]) - 1)
        except (OSError, StopIteration, ValueError):
            return max(0.0, os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0.0
        if i + 1 < samples:
            time.sleep(interval)
    return max(0.0, sorted(counts)[len(counts) // 2])


def choose_threads() -> int:
    """The CPU threads to use now: one per core that other programs leave idle (at least one).

    Torch's default, one thread per core, is right on an idle machine; on a busy one its threads wait for
    each other at every operation while the others are descheduled, and a run gets several times slower
    (the quickstart: 4 to 7 minutes instead of 44 s with one thread, see benchmarks/README.md, "CLI").

    Example:
        >>> 1 <= choose_threads() <= os.cpu_count()
        True
    """
    cores = _usable_cores()
    return max(1, min(cores, round(cores - _busy_cores())))


def configure_threads(verbose: bool = False) -> int:
    """Set the CPU thread count for this process and its children; return it.

    ``PX_LIGHTNING_THREADS=N`` wins, then an ``OMP_NUM_THREADS`` the user set, then :func:`choose_threads`.
    The count goes to ``OMP_NUM_THREADS`` (read by torch when it is imported, and by worker processes) and,
    if torch is already imported, to ``torch.set_num_threads``. With ``verbose``, a line on stderr says so
    when fewer threads than cores were chosen because the machine is busy.

    Example:
        >>> configure_threads()   # before `import torch`
        2
    """
    given = os.environ.get(THREADS_VARIABLE) or os.environ.get("OMP_NUM_THREADS")
    if given:
        try:
            threads = int(given)
        except ValueError:
            threads = 0
        if threads < 1:
            from px_lightning._cli_errors import CommandLineError

            name = THREADS_VARIABLE if os.environ.get(THREADS_VARIABLE) else "OMP_NUM_THREADS"
            raise CommandLineError(
                f"{name}={given}: expected a positive number of CPU threads, e.g. {name}=2"
            )
    else:
        threads = choose_threads()
        cores = _usable_cores()
        if verbose and threads < cores:
            print(
                f"px-lightning: using {threads} CPU thread{'s' if threads > 1 else ''} of {cores}: other "
                f"programs keep the rest busy (set {THREADS_VARIABLE}=N to choose)",
                file=sys.stderr,
                flush=True,
            )
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in LIGHTNING_TIPS


def quiet_console() -> None:
    """Drop Lightning's advertising tips and the known harmless warnings (exact messages) from the console.

    Called by ``px-lightning`` only; importing px-lightning filters nothing.

    Example:
        >>> quiet_console()
    """
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):  # once, however often main() runs
            logger.addFilter(_DropTips())
    for message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message))


def cli_main(args: Any = None):
    """Run the ``px-lightning`` command line (``fit``, ``validate``, ``test``, ``predict``) and return it.

    ``args`` (a list of strings, or a dict) replaces ``sys.argv[1:]``. The returned CLI holds the
    ``trainer``, ``model`` and ``datamodule`` it ran, for inspection from Python (the tests do this). A
    mistake in the command or its files raises ``px_lightning._cli_errors.CommandLineError``, whose message
    names the option; :func:`main` prints it.

    Example:
        >>> cli = cli_main(["fit", "--config", "configs/quickstart.yaml", "--trainer.max_epochs=1"])
        >>> cli.trainer.callback_metrics["test/acc"]
    """
    from px_lightning._cli_app import run

    return run(args)


def main(args: list[str] | None = None) -> None:
    """The ``px-lightning`` console script: :func:`cli_main`, returning nothing (exit status 0 on success).

    A mistake in the command prints ``px-lightning: error: <what, where, what is allowed>`` and exits with
    status 2; ``--debug`` (anywhere in the command) or ``JSONARGPARSE_DEBUG=1`` raises it with its traceback.

    Example:
        >>> main(["fit", "--config", "configs/quickstart.yaml"])
    """
    argv = list(sys.argv[1:] if args is None else args)
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        os.environ["JSONARGPARSE_DEBUG"] = "true"
    # jsonargparse reads the switch itself and accepts only true/false: take 1/0 (the usual spelling) too.
    switch = {"1": "true", "0": "false"}.get(os.environ.get("JSONARGPARSE_DEBUG", ""))
    if switch:
        os.environ["JSONARGPARSE_DEBUG"] = switch
    if argv in ([], ["-h"], ["--help"]):  # answered without importing torch or Lightning
        listing = "\n".join(f"  {name:<10} {text}" for name, text in SUBCOMMANDS.items())
        print(HELP.format(description=description(), subcommands=listing, threads=THREADS_VARIABLE))
        return
    from px_lightning._cli_errors import CommandLineError, debug_requested

    try:
        configure_threads(verbose=True)
        quiet_console()
        if args is None:
            sys.argv[1:] = argv  # `--debug` removed; LightningCLI reads sys.argv itself
            cli_main(None)
        else:
            cli_main(argv)
    except CommandLineError as err:
        if debug_requested():
            raise
        print(f"px-lightning: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""The ``LightningCLI`` behind ``px-lightning``: imported only once a subcommand runs (Lightning is slow to import).

``px_lightning.cli`` is the light entry point (help, threads, error printing); this module holds the
LightningCLI subclass and the run, and turns every mistake in the command into a ``CommandLineError`` whose
message names the option as the user wrote it.

Example:
    >>> from px_lightning._cli_app import run
    >>> cli = run(["fit", "--config", "configs/quickstart.yaml", "--trainer.fast_dev_run=1"])
"""

from __future__ import annotations

import importlib
import inspect
import logging
import shutil
import sys
from pathlib import Path

import lightning.pytorch as pl
from jsonargparse import ArgumentError
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from px_lightning._cli_errors import (
    CommandLineError,
    debug_requested,
    explain_build_error,
    explain_parse_error,
    explain_run_error,
    locate_option,
)
from px_lightning.cli import description

__all__ = ["PXLightningCLI", "run"]


def _root_error(err: BaseException) -> BaseException:
    """The first exception of ``err``'s chain raised outside jsonargparse: the class's own message.

    jsonargparse wraps an error raised while it builds a class (a callback's ValueError, say) in its own
    "Does not validate against any of the Union subtypes" error, which buries the message.
    """
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    for candidate in seen:
        tb = candidate.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None and "jsonargparse" not in tb.tb_frame.f_code.co_filename:
            return candidate
    return err


_SEED_LOG = logging.getLogger("lightning.fabric.utilities.seed")


class _HoldRecords(logging.Filter):
    """Keeps the records it stops, to be handled later."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@rank_zero_only
def _print_density_table(model: nn.Module, datamodule: pl.LightningDataModule | None = None) -> None:
    from px_lightning.pruning import density_table, format_savings, get_masks, savings_report

    print(density_table(model), flush=True)
    if datamodule is None or not get_masks(model):
        return  # without masks (a loaded checkpoint) the savings would count the dense layout
    # What the masks save, on one test input (its shape sets the FLOPs).
    batch = next(iter(datamodule.test_dataloader()))
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    print(format_savings(savings_report(model, x[:1].to(next(model.parameters()).device))), flush=True)


class PXLightningCLI(LightningCLI):
    """``LightningCLI`` with one extra option, ``--test_after_fit``, and errors in the user's terms.

    With ``--test_after_fit=true``, ``fit`` goes on to ``Trainer.test`` on the datamodule's test set with the
    weights the fit ended with (the in-memory model, masks in place), then prints the per-layer density
    table of the trained model. The option is accepted by every subcommand, so one config file serves
    ``fit``, ``validate`` and ``test``; only ``fit`` acts on it.

    A bad option, key, value or file raises ``CommandLineError`` (one short message naming the option as
    written on the command line or in the config file) instead of printing a usage text; a run that fails
    before its first training step removes the log folder it created.
    """

    def _argv(self) -> list[str]:
        args = getattr(self, "_px_args", None)
        return list(args) if isinstance(args, (list, tuple)) else sys.argv[1:]

    def _subcommand_name(self) -> str:
        argv = self._argv()
        return next((a for a in argv if a in self.subcommands()), "fit")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After `fit`, run `test` with the trained in-memory model and print its per-layer density "
            "table (used by `fit` only).",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        self._px_args = args
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            if debug_requested():
                raise
            subcommand = self._subcommand_name()
            sub = getattr(parser, "_subcommands_action", None)
            sub_parser = sub.choices.get(subcommand) if sub is not None else None
            options = [s for a in getattr(sub_parser, "_actions", []) for s in a.option_strings]
            message = explain_parse_error(str(err), self._argv(), options, subcommand)
            raise CommandLineError(message) from None

    def _set_seed(self) -> None:
        # "Seed set to 0" is held back until the configured objects are built, so that a refused value's
        # message is the first thing the user reads.
        held = _HoldRecords()
        _SEED_LOG.addFilter(held)
        try:
            super()._set_seed()
        finally:
            _SEED_LOG.removeFilter(held)
        self._held_records = held.records

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        # Lightning's own names ("last", "best", "hpc", "registry...") and URLs are Lightning's to resolve.
        path_like = isinstance(ckpt_path, str) and ("/" in ckpt_path or ckpt_path.endswith(".ckpt"))
        if path_like and "://" not in ckpt_path and not Path(ckpt_path).is_file():
            found = locate_option("ckpt_path", self._argv())
            where = found[0] if found else f"ckpt_path={ckpt_path}"
            raise CommandLineError(
                f"{where}: checkpoint file not found: {ckpt_path} (a path relative to "
                f"{Path.cwd()}; a fit saves them under logs/<name>/version_N/checkpoints/)"
            )
        self._refuse_optimizer_override(config)

    def _refuse_optimizer_override(self, config) -> None:
        # LightningCLI's `--optimizer` / `--lr_scheduler` replace the module's configure_optimizers as a whole:
        # with ImageClassifier that silently drops the config's own scheduler (model.init_args.lr_scheduler)
        # and optimizer settings. Refuse it where the module configures its optimizers itself.
        given = [key for key in ("optimizer", "lr_scheduler") if config.get(key) is not None]
        if not given:
            return
        model_cls = _class_of(config.get("model"))
        if model_cls is None or model_cls.configure_optimizers is pl.LightningModule.configure_optimizers:
            return
        options = " and ".join(f"--{k}" for k in given)
        own = [k for k in ("optimizer", "lr_scheduler") if k in _init_parameters(model_cls)]
        if "optimizer" in own:
            advice = (
                "set them through the model's own arguments instead, e.g. --model.init_args.optimizer=Adam "
                "--model.init_args.optimizer.lr=0.001"
                + (" (and --model.init_args.lr_scheduler=...)" if "lr_scheduler" in own else "")
            )
        else:
            name = model_cls.__name__
            advice = f"set the optimizer through {name}'s own arguments (--model.help {name})"
        raise CommandLineError(
            f"{options} would replace {model_cls.__name__}.configure_optimizers, dropping the optimizer and "
            f"scheduler the config sets for it (only half of the config would apply); {advice}"
        )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            if debug_requested():
                raise
            # The class's own message (a bad callback value, a missing pre-trained file) under the option the
            # user wrote, not jsonargparse's traceback through every Union subtype it tried.
            config = self.config[self.subcommand] if self.subcommand else self.config
            root = _root_error(err)
            if root is err:  # jsonargparse's own complaint: keep its first line
                root = type(err)(str(err).splitlines()[0])
                root.__traceback__ = err.__traceback__
            raise CommandLineError(
                explain_build_error(root, config, self._argv(), self._subcommand_name())
            ) from None

    def _run_subcommand(self, subcommand: str) -> None:
        for record in getattr(self, "_held_records", []):
            _SEED_LOG.handle(record)
        before = _log_dirs(self.trainer)
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            # A run that stops before its first step leaves nothing worth keeping: no empty version_N/.
            if self.trainer.global_step == 0:
                _remove_new_log_dirs(before)
            if isinstance(err, FileNotFoundError) and not debug_requested():
                raise CommandLineError(explain_run_error(err, self._argv(), subcommand)) from None
            raise

    def after_fit(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if not config.get("test_after_fit", False):
            return
        # fast_dev_run limits the test loop too, so a smoke run stays a smoke run.
        self.trainer.test(self.model, datamodule=self.datamodule)
        _print_density_table(self.model, self.datamodule)

    def after_test(self) -> None:
        # `px-lightning test --ckpt_path=...`: what the tested model really is (the loaded weights carry no
        # masks, so the table counts their non-zero entries).
        _print_density_table(self.model)


def _log_dirs(trainer: pl.Trainer) -> list[tuple[Path, list[Path]]]:
    """Each logger's version folder with the ancestors (up to its save_dir) that do not exist yet."""
    found = []
    for logger in trainer.loggers:
        try:
            log_dir = logger.log_dir
            save_dir = logger.save_dir
        except (AttributeError, TypeError):
            continue
        if not log_dir or not save_dir:
            continue
        log_dir, save_dir = Path(log_dir), Path(save_dir)
        if log_dir.exists():
            continue  # the user's own folder (a fixed version): never removed
        new = [log_dir]
        parent = log_dir.parent
        while not parent.exists() and save_dir in (parent, *parent.parents):
            new.append(parent)
            parent = parent.parent
        found.append((log_dir, new))
    return found


def _remove_new_log_dirs(before: list[tuple[Path, list[Path]]]) -> None:
    for log_dir, new in before:
        if log_dir.exists() and not any(log_dir.rglob("*.ckpt")):
            shutil.rmtree(log_dir, ignore_errors=True)
        for folder in new[1:]:  # the experiment folder and save_dir, if this run made them and they are empty
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()


def _class_of(model_config) -> type | None:
    """The LightningModule class a parsed ``model`` entry names (``class_path``), or None."""
    class_path = getattr(model_config, "class_path", None)
    if class_path is None and isinstance(model_config, dict):
        class_path = model_config.get("class_path")
    if not isinstance(class_path, str):
        return None
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, pl.LightningModule) else None


def _init_parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def run(args: ArgsType = None) -> PXLightningCLI:
    """Build and run the ``px-lightning`` LightningCLI on ``args`` (default ``sys.argv[1:]``); return it.

    Raises ``CommandLineError`` for a mistake in the command or its config files.

    Example:
        >>> cli = run(["fit", "--config", "configs/quickstart.yaml", "--trainer.max_epochs=1"])
    """
    # Imported so that short class names (`--model=ImageClassifier`, `--data=CIFAR10DataModule`) resolve.
    from px_lightning import callbacks, data, modules  # noqa: F401

    return PXLightningCLI(
        model_class=pl.LightningModule,
        datamodule_class=pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # A rerun into the same log folder must not fail on the config.yaml the last run saved.
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            # A mistyped option must fail, not be taken for the option it abbreviates (`--trainer.max_epoch`).
            "allow_abbrev": False,
            "description": description(),
            # Errors are raised (and reworded by PXLightningCLI), not printed after a 50-line usage text.
            "exit_on_error": False,
        },
        args=args,
    )

"""The ``px-lightning`` command line: a ``LightningCLI`` over px-lightning's modules and datamodules.

Models and datamodules are chosen by ``class_path`` (subclass mode), so any ``LightningModule`` or
``LightningDataModule`` importable by its dotted path works too; the pruning callback is configured like
any Lightning callback, under ``trainer.callbacks``.

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

import importlib
import inspect
import os
import traceback

import lightning.pytorch as pl
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

# The one per-layer table (the callback prints it after pruning); re-exported here for `cli.density_table`.
from px_lightning.callbacks.foresight import density_table

__all__ = ["PXLightningCLI", "cli_main", "density_table", "main"]

DESCRIPTION = (
    "px-lightning: prune vision networks at initialisation (PX and the baselines) and train them sparse. "
    "A LightningCLI: `px-lightning fit|validate|test|predict --config FILE`; the pruning callback is "
    "configured under trainer.callbacks (e.g. --trainer.callbacks.init_args.method=snip). "
    "Start with `px-lightning fit --config configs/quickstart.yaml`."
)


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


@rank_zero_only
def _print_density_table(model: nn.Module) -> None:
    print(density_table(model), flush=True)


class PXLightningCLI(LightningCLI):
    """``LightningCLI`` with one extra option, ``--test_after_fit``.

    With ``--test_after_fit=true``, ``fit`` goes on to ``Trainer.test`` on the datamodule's test set with the
    weights the fit ended with (the in-memory model, masks in place), then prints the per-layer density
    table of the trained model. The option is accepted by every subcommand, so one config file serves
    ``fit``, ``validate`` and ``test``; only ``fit`` acts on it.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After `fit`, run `test` with the trained in-memory model and print its per-layer density "
            "table (used by `fit` only).",
        )

    def before_instantiate_classes(self) -> None:
        # LightningCLI's `--optimizer` / `--lr_scheduler` replace the module's configure_optimizers as a whole:
        # with ImageClassifier that silently drops the config's own scheduler (model.init_args.lr_scheduler)
        # and optimizer settings. Refuse it where the module configures its optimizers itself.
        config = self.config[self.subcommand] if self.subcommand else self.config
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
        self._parser(self.subcommand).error(
            f"{options} would replace {model_cls.__name__}.configure_optimizers, dropping the optimizer and "
            f"scheduler the config sets for it (only half of the config would apply); {advice}"
        )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            if os.environ.get("JSONARGPARSE_DEBUG"):  # jsonargparse's own switch for full tracebacks
                raise
            root = _root_error(err)
            message = str(root) if root is not err else str(err).splitlines()[0]
            # The class's own message (a bad callback value, a missing pre-trained file), not jsonargparse's
            # traceback through every Union subtype it tried; where it was raised, so that a bug in a user's
            # class is not mistaken for a usage error, and how to get the whole traceback.
            frames = traceback.extract_tb(root.__traceback__)
            where = f" (raised at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
            self._parser(self.subcommand).error(
                f"could not build the configured objects: {type(root).__name__}: {message}{where}; "
                "set JSONARGPARSE_DEBUG=1 for the full traceback"
            )

    def after_fit(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if not config.get("test_after_fit", False):
            return
        # fast_dev_run limits the test loop too, so a smoke run stays a smoke run.
        self.trainer.test(self.model, datamodule=self.datamodule)
        _print_density_table(self.model)

    def after_test(self) -> None:
        # `px-lightning test --ckpt_path=...`: what the tested model really is (the loaded weights carry no
        # masks, so the table counts their non-zero entries).
        _print_density_table(self.model)


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


def cli_main(args: ArgsType = None) -> PXLightningCLI:
    """Run the ``px-lightning`` command line (``fit``, ``validate``, ``test``, ``predict``) and return it.

    ``args`` (a list of strings, or a dict) replaces ``sys.argv[1:]``. The returned CLI holds the
    ``trainer``, ``model`` and ``datamodule`` it ran, for inspection from Python (the tests do this).

    Example:
        >>> cli = cli_main(["fit", "--config", "configs/quickstart.yaml", "--trainer.max_epochs=1"])
        >>> cli.trainer.callback_metrics["test/acc"]
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
        # A mistyped option must fail, not be taken for the option it abbreviates (`--trainer.max_epoch`).
        parser_kwargs={"allow_abbrev": False, "description": DESCRIPTION},
        args=args,
    )


def main(args: ArgsType = None) -> None:
    """The ``px-lightning`` console script: :func:`cli_main`, returning nothing (exit status 0 on success).

    Example:
        >>> main(["fit", "--config", "configs/quickstart.yaml"])
    """
    cli_main(args)


if __name__ == "__main__":
    main()

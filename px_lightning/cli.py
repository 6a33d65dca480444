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

import lightning.pytorch as pl
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from px_lightning.pruning import get_masks, prunable_parameters, sparsity_report


def density_table(model: nn.Module) -> str:
    """A per-layer density table of ``model``: kept / total weights of each prunable tensor.

    Reads the masks when the model carries them; on a model without masks (dense, or masks made
    permanent) it counts the non-zero entries of each prunable weight instead, so the table always
    says what the trained model really is.

    Example:
        >>> print(density_table(model))
    """
    if get_masks(model):
        report = sparsity_report(model)
        rows = [(n, r["kept"], r["total"]) for n, r in report["layers"].items()]
        source = "masks"
    else:
        rows = []
        for name, (module, attr) in prunable_parameters(model).items():
            weight = getattr(module, attr)
            rows.append((name, int((weight != 0).sum()), weight.numel()))
        source = "non-zero weights (no masks on the model)"
    width = max([len("layer")] + [len(n) for n, _, _ in rows])
    lines = [
        f"Per-layer density ({source})",
        f"{'layer':<{width}}  {'kept':>10}  {'total':>10}  {'density':>8}",
    ]
    for name, kept, total in rows:
        lines.append(f"{name:<{width}}  {kept:>10}  {total:>10}  {kept / total:>8.4f}")
    kept = sum(r[1] for r in rows)
    total = sum(r[2] for r in rows)
    lines.append(f"{'total':<{width}}  {kept:>10}  {total:>10}  {kept / max(total, 1):>8.4f}")
    return "\n".join(lines)


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

    def after_fit(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if not config.get("test_after_fit", False):
            return
        # fast_dev_run limits the test loop too, so a smoke run stays a smoke run.
        self.trainer.test(self.model, datamodule=self.datamodule)
        _print_density_table(self.model)


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
        parser_kwargs={"allow_abbrev": False},
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

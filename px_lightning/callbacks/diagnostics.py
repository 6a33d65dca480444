"""``PruningDiagnosticsCallback``: what pruning did, in TensorBoard.

At the start of training (after every ``on_fit_start``, so after ``ForesightPruningCallback`` has
installed its masks, whatever the callbacks' order) and, with ``every_n_epochs``, at the end of every
N-th training epoch, it logs to the trainer's ``TensorBoardLogger``:

- ``diagnostics/layer_density``: a bar chart image of the kept fraction of every masked tensor (collapsed
  layers in red), and the scalar ``diagnostics/density``;
- ``diagnostics/scores/<tensor>``: histograms of ``log10`` of the pruning method's scores of the kept
  weights (the scores the method gives the masked network, i.e. the last round's view), and
  ``diagnostics/scores/all``;
- ``ntk/trace_ratio``, ``ntk/top_eig_ratio/<i>``, ``ntk/alignment`` (kernel cosine similarity) and
  ``ntk/spectrum`` (a figure): the empirical NTK of the masked network on ``num_samples`` fixed scoring
  inputs against that of the dense network at initialisation (the weights as they were at ``setup``,
  before pruning zeroed the pruned entries). Computed with ``px_lightning.diagnostics``.

The scores are computed as ``ForesightPruningCallback`` computes them: with the LightningModule's
``loss_fn`` when it has one (SNIP, GraSP; a segmenter's loss ignores label 255), on the same scoring data
(all batches of the datamodule's ``scoring_dataloader()`` when it has one, else the first ``num_batches``
batches of the train dataloader). A ``scoring_dataloader()`` is deterministic, so it is read afresh at
every log; train batches are drawn once, at training start, and held for the run, so that epochs are
comparable. A shuffled train dataloader gives them other draws than the pruning callback's: give the
datamodule a ``scoring_dataloader()`` to score on exactly the pruning data. The NTK takes the first
``num_samples`` inputs of those batches, kept from the first log.

Figures are drawn on ``matplotlib.figure.Figure`` objects rendered with the Agg canvas directly: neither
pyplot nor the global matplotlib backend is touched (notebook plots keep their inline backend).

Only the global-zero rank computes and logs. Resuming from a checkpoint: the dense reference is the
module's weights at ``setup``, i.e. a fresh initialisation, not the run's original one.

Example:
    >>> trainer = L.Trainer(
    ...     logger=TensorBoardLogger("runs"),
    ...     callbacks=[
    ...         ForesightPruningCallback("px", density=0.05),
    ...         PruningDiagnosticsCallback(every_n_epochs=5),
    ...     ],
    ... )
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from typing_extensions import override

from ..diagnostics import empirical_ntk, plain_parameters, spectrum
from ..pruning import compute_scores, get_masks, sparsity_report
from ..pruning.scorers import Scorer, get_scorer
from ..pruning.scorers.base import batch_inputs
from ..pruning.validation import check_positive_int
from ._scoring_data import module_loss, scoring_source
from .foresight import ForesightPruningCallback

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_DEFAULT_NUM_BATCHES = 10  # ForesightPruningCallback's default


class PruningDiagnosticsCallback(pl.Callback):
    """Log per-layer densities, score histograms and NTK spectra of the pruned network to TensorBoard.

    Args:
        every_n_epochs: Also log at the end of every N-th training epoch (``None``: only at the start).
        num_samples: Scoring inputs the NTK is computed on (its size is ``num_samples * outputs``).
        top_k: Eigenvalues logged, largest first.
        chunk_size: Samples per Jacobian chunk (memory: two chunks of per-sample Jacobians).
        log_scores: Log score histograms.
        log_ntk: Log the NTK comparison.
        method: Scoring method for the histograms (name or ``Scorer``); ``None`` takes the method of the
            trainer's ``ForesightPruningCallback``.
        method_options: Options of ``method`` when it is a name.
        num_batches: Train batches the scores are computed on when the datamodule has no
            ``scoring_dataloader()``; ``None`` takes the ``ForesightPruningCallback``'s ``num_batches``
            (10 without one).

    Example:
        >>> PruningDiagnosticsCallback(every_n_epochs=1, num_samples=8, top_k=5)
    """

    def __init__(
        self,
        every_n_epochs: int | None = None,
        num_samples: int = 16,
        top_k: int = 10,
        chunk_size: int = 8,
        log_scores: bool = True,
        log_ntk: bool = True,
        method: str | Scorer | None = None,
        method_options: dict | None = None,
        num_batches: int | None = None,
    ) -> None:
        super().__init__()
        for argument, value in {"num_samples": num_samples, "top_k": top_k, "chunk_size": chunk_size}.items():
            check_positive_int(value, argument)
        # None: the pruning callback's num_batches; logging only at the start of training.
        for argument, value in {"num_batches": num_batches, "every_n_epochs": every_n_epochs}.items():
            if value is not None:
                check_positive_int(value, argument)
        self.every_n_epochs = every_n_epochs
        self.num_samples, self.top_k, self.chunk_size = num_samples, top_k, chunk_size
        self.log_scores, self.log_ntk = log_scores, log_ntk
        # None: the pruning callback's scorer, read at each log (it builds its fit's scorer at fit start).
        self.scorer = None if method is None else get_scorer(method, **(method_options or {}))
        self._pruning: ForesightPruningCallback | None = None
        self.num_batches = num_batches
        self._dense: dict[str, Tensor] | None = None
        self._batches: list | None = None
        self._ntk_inputs: Tensor | None = None
        self._dense_spectrum = None

    # -- hooks -------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
            raise ValueError(
                "PruningDiagnosticsCallback logs to TensorBoard, but the trainer has no TensorBoardLogger "
                f"(loggers: {[type(lg).__name__ for lg in trainer.loggers]}); pass "
                "logger=TensorBoardLogger(save_dir) to the Trainer"
            )
        pruning = [cb for cb in trainer.callbacks if isinstance(cb, ForesightPruningCallback)]
        if self.num_batches is None:
            self.num_batches = pruning[0].num_batches if pruning else _DEFAULT_NUM_BATCHES
        self._pruning = pruning[0] if pruning else None
        if self.log_scores and self.scorer is None and self._pruning is None:
            raise ValueError(
                "PruningDiagnosticsCallback: no scoring method for the score histograms: add a "
                "ForesightPruningCallback to the trainer, give method=..., or set log_scores=False"
            )
        # The dense reference: the weights before pruning (ForesightPruningCallback prunes at fit start).
        self._dense = {n: t.detach().cpu().clone() for n, t in plain_parameters(pl_module).items()}

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_all(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._log_all(trainer, pl_module)

    # -- logging -----------------------------------------------------------------------------------
    def _experiment(self, trainer: pl.Trainer):
        return next(lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)).experiment

    def _log_all(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        masks = get_masks(pl_module)
        if not masks:
            raise RuntimeError(
                "PruningDiagnosticsCallback: the module carries no pruning masks at training start; add a "
                "ForesightPruningCallback (or apply_masks before fit)"
            )
        writer, step = self._experiment(trainer), trainer.global_step
        batches = self._scoring_batches(trainer)
        was_training = pl_module.training
        try:
            self._log_density(writer, pl_module, step)
            if self.log_scores:
                self._log_scores(writer, pl_module, batches, step)
            if self.log_ntk:
                self._log_ntk(writer, pl_module, batches, masks, step)
        finally:
            pl_module.train(was_training)
        writer.flush()

    def _log_density(self, writer, pl_module, step: int) -> None:
        report = sparsity_report(pl_module)
        names = list(report["layers"])
        dens = [report["layers"][n]["density"] for n in names]
        fig, ax = _figure((max(4.0, 0.35 * len(names) + 2), 3.6))
        colors = ["tab:red" if d == 0 else "tab:blue" for d in dens]
        ax.bar(range(len(names)), [100 * d for d in dens], color=colors)
        ax.axhline(
            100 * report["density"], color="black", lw=1, ls="--", label=f"total {report['density']:.2%}"
        )
        ax.set_xticks(range(len(names)), [n.removesuffix(".weight") for n in names], rotation=90, fontsize=7)
        ax.set_ylabel("kept weights (%)")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.legend(fontsize=8)
        writer.add_image("diagnostics/layer_density", _render(fig), step, dataformats="HWC")
        writer.add_scalar("diagnostics/density", report["density"], step)

    def _log_scores(self, writer, pl_module, batches: list, step: int) -> None:
        masks = get_masks(pl_module)
        # The pruning callback's rule: the module's own loss (e.g. ignoring label 255) for SNIP and GraSP.
        scorer = self.scorer if self.scorer is not None else self._pruning.scorer
        scores = compute_scores(
            pl_module, scorer, batches, loss_fn=module_loss(pl_module), include=list(masks)
        )
        kept_all = []
        for name, s in scores.items():
            kept = s[masks[name].to(s.device)].double()
            kept = kept[kept > 0]
            if kept.numel():
                values = kept.log10().cpu()
                writer.add_histogram(f"diagnostics/scores/{name}", values, step)
                kept_all.append(values)
        if kept_all:
            writer.add_histogram("diagnostics/scores/all", torch.cat(kept_all), step)

    def _log_ntk(self, writer, pl_module, batches: list, masks, step: int) -> None:
        if self._ntk_inputs is None:  # the first num_samples scoring inputs, kept: the kernel's fixed points
            ref = next(pl_module.parameters())
            xs, count = [], 0
            for batch in batches:
                x, _ = batch_inputs(batch, ref)
                xs.append(x[: self.num_samples - count])
                count += len(xs[-1])
                if count >= self.num_samples:
                    break
            self._ntk_inputs = torch.cat(xs)
        x = self._ntk_inputs
        report = self._compare(pl_module, x, masks)
        writer.add_scalar("ntk/trace_ratio", report["trace_ratio"], step)
        writer.add_scalar("ntk/masked_trace", report["masked"].trace, step)
        writer.add_scalar("ntk/dense_trace", report["dense"].trace, step)
        writer.add_scalar("ntk/alignment", report["alignment"], step)
        for i, r in enumerate(report["top_ratio"].tolist()):
            writer.add_scalar(f"ntk/top_eig_ratio/{i}", r, step)
        writer.add_image("ntk/spectrum", _render(_spectrum_figure(report)), step, dataformats="HWC")

    def _compare(self, pl_module, x, masks) -> dict:
        device = next(pl_module.parameters()).device
        if self._dense_spectrum is None:  # the dense reference does not change: compute it once
            dense_weights = {n: t.to(device) for n, t in self._dense.items()}
            kernel = empirical_ntk(
                pl_module, x, dense=True, weights=dense_weights, chunk_size=self.chunk_size
            )
            self._dense_spectrum = (kernel, spectrum(kernel, self.top_k))
        k_dense, dense = self._dense_spectrum
        k_masked = empirical_ntk(pl_module, x, masks=masks, chunk_size=self.chunk_size)
        masked = spectrum(k_masked, self.top_k)
        tiny = torch.finfo(torch.float64).tiny
        return {
            "dense": dense,
            "masked": masked,
            "trace_ratio": masked.trace / dense.trace if dense.trace else math.nan,
            "top_ratio": masked.top / dense.top.clamp_min(tiny),
            "alignment": float(
                (k_dense * k_masked).sum() / (k_dense.norm() * k_masked.norm()).clamp_min(tiny)
            ),
        }

    def _scoring_batches(self, trainer: pl.Trainer) -> list:
        """The pruning callback's scoring data: the same batches at every log."""
        if self._batches is not None:  # train batches: drawn once, so that epochs are comparable
            return self._batches
        # A scoring_dataloader() is deterministic by contract: read afresh at each log rather than held.
        loader, limit, source = scoring_source(trainer, self.num_batches)
        batches = [] if loader is None else list(itertools.islice(iter(loader), limit))
        if not batches:
            raise ValueError(
                f"PruningDiagnosticsCallback: {source} yielded no batch to compute diagnostics on"
            )
        if limit is not None:
            self._batches = batches
        return batches


def _figure(figsize: tuple[float, float]):
    """A figure and its axes, outside pyplot: no global state, the user's backend left alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="tight")
    return fig, fig.add_subplot()


def _render(fig: Figure) -> np.ndarray:
    """The figure as an ``(H, W, 3)`` uint8 RGB array, drawn by the Agg canvas (not the global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _spectrum_figure(report: dict) -> Figure:
    fig, ax = _figure((5, 3.6))
    for key, style in (("dense", "-"), ("masked", "--")):
        eig = report[key].eigenvalues.clamp_min(0).cpu()
        ax.plot(range(1, len(eig) + 1), eig.numpy(), style, label=f"{key} (trace {report[key].trace:.3g})")
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("NTK eigenvalue")
    ax.legend(fontsize=8)
    return fig

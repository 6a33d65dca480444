"""ForesightPruningCallback: prune a LightningModule at fit start and train it sparse.

How the masks travel through a fit (see ``shared/LIGHTNING_NOTES.md`` for why each step sits where it does):

1. ``setup(stage="fit")``, before the DDP wrap: an all-ones boolean mask parametrization on every prunable
   tensor (so DDP hooks the parametrized weights), the mask buffers excluded from DDP's per-step buffer
   broadcast (the callback keeps them identical itself), and a ``load_state_dict`` pre-hook that maps
   plain checkpoint keys (``net.conv1.weight``) onto the parametrized ones.
2. ``on_fit_start``, on the module's device: score and threshold (or take the masks restored from a
   checkpoint, without scoring), make every rank agree, fill the placeholders in place, zero the pruned
   entries of the trainable tensors, log the densities.
3. ``on_save_checkpoint``: the module's state is written under plain keys with masked values and the masks
   go into the callback's own state, so a checkpoint loads strictly into a fresh module with no callback
   (``load_from_checkpoint``) and a resumed fit (``ckpt_path=...``) restores the masks instead of scoring.
   A dense checkpoint (no masks in it) is pruned at fit start, its optimizer state matched to the masks.
4. ``teardown(stage="fit")``, in the workers of a spawning launcher only: ``state_dict()`` gives the same
   plain keys, so the rank-0 weights the launcher loads non-strictly into the main process's plain module
   arrive with the pruned entries at zero.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from ..pruning import (
    ZeroScoresError,
    apply_masks,
    density_table,
    find_masks,
    format_savings,
    get_masks,
    parse_pattern,
    prunable_parameters,
    remove_masks,
    save_sparse,
    savings_report,
    sparsity_report,
)
from ..pruning.masks import WeightMask
from ..pruning.scorers import Scorer, get_scorer
from ..pruning.targets import as_patterns
from ..pruning.validation import (
    check_density,
    check_positive_int,
    check_rounds,
    check_schedule,
    check_scope,
    check_sparsity,
)
from ._checkpoint import PlainKeyLoader, PlainKeyWriter, match_dense_optimizer_states, to_plain_keys
from ._distributed import all_reduce_sum, broadcast_masks, check_same_batches, shared_generator
from ._masked import mask_module, original, owner, zero_pruned
from ._options import options_for
from ._scoring_data import draw_scoring_batches, module_loss

__all__ = ["ForesightPruningCallback"]

DISTRIBUTED_SCORING = ("auto", "shard", "replicate")


class ForesightPruningCallback(Callback):
    """Prune at fit start (PX or a baseline), train sparse, checkpoint and resume with the masks.

    Args:
        method: Scoring method, a name (``"px"``, ``"snip"``, ``"grasp"``, ``"synflow"``, ``"magnitude"``,
            ``"random"``, and any other name ``px_lightning.pruning`` knows) or a ``Scorer`` object.
        density: Fraction of the prunable weights to keep, in (0, 1]. Give this or ``sparsity``.
            ``density=1.0`` is the dense baseline: no scoring, all-ones masks (so the run takes the same
            path as a pruned one: checkpoints, resume, logs and the density table; the mask multiply costs
            about 0.3% of a step, benchmarks/README.md).
        sparsity: Fraction to prune, in [0, 1) (``density = 1 - sparsity``). Give this or ``density``.
        rounds: Scoring rounds (iterative pruning); ``None``: the method's ``default_rounds`` (1 for one-shot
            methods, 20 for NTK-SAP, 100 otherwise).
        scope: ``"global"`` (one threshold over all layers) or ``"local"`` (each layer to ``density``).
        schedule: Density after each round, ``"exponential"`` (published) or ``"linear"``.
        num_batches: Train batches to score on when the datamodule has no ``scoring_dataloader()``.
            The scoring batch size matters for PX: its data path runs BatchNorm in train mode, whose
            statistics are those of each scoring batch, so other batch sizes give other masks. Without a
            ``scoring_dataloader()`` the batches are the train dataloader's, so changing ``batch_size``
            (e.g. dividing it by the number of DDP processes) changes the masks; a ``scoring_dataloader()``
            with a fixed batch size keeps them (px-lightning's DataModules: ``scoring_batch_size``).
        include: Name patterns (globs or module prefixes) of the tensors to prune; default: the weight of
            every Conv and Linear layer of the LightningModule (names as in ``named_parameters()``).
        exclude: Name patterns removed from the prunable tensors (e.g. ``["net.fc"]``).
        reinit: Re-initialise the kept weights after pruning (a published sanity check): each layer's
            weights are randomly permuted, so the layer keeps the distribution of its own initialiser.
        reshuffle: Randomly permute each layer's mask after pruning, keeping per-layer densities (the
            other published sanity check; ``find_masks(..., reshuffle=True)``, seeded alike on every rank).
        make_permanent: At fit end remove the parametrizations, leaving plain weights with the pruned
            entries at exactly zero.
        verbose: Print the per-layer density table (rank zero) after pruning, and the effective density
            (``effective_masks``: kept weights on an input-to-output path), which is also logged as
            ``pruning/effective_density`` when the callback scored (not on resume) a network whose
            normalisation layers are BatchNorm.
        method_options: Options of the scoring method, e.g. ``{"kernel_norm": "eval"}`` for PX or
            ``{"seed": 0}`` for random; or keyed by method name, ``{"px": {"head": "body"}}``, so that only
            the chosen method's options apply (a config can state PX's options and still switch ``method``
            with one override). The callback adds none of its own: ``method="px"`` with no options is
            ``find_masks(model, "px")``'s PX, the CVPR 2024 computation (``variant="cvpr2024"``); PX's other
            variants and options are those of ``PXScorer`` (e.g. ``{"variant": "2025-eval", "head": "body",
            "bn_warmup": True, "layer_floor": 0.2}``, the 2025 code made well-posed with the options against
            layer collapse; ``{"kernel_norm": "train"}`` the 2025 code as published, degenerate on BatchNorm
            networks:
            ``shared/conformance/README.md``). SNIP and GraSP score with the LightningModule's ``loss_fn``
            attribute when it has one (so a segmenter's ``ignore_index=255`` holds), else cross-entropy.
        distributed_scoring: Under DDP, ``"shard"``: each rank scores its share of whole scoring batches
            and the summable part of the scores (``Scorer.partial_scores``) is summed across ranks before
            each round's threshold (data-parallel); ``"replicate"``: every rank scores all batches (no
            faster than one device, exactly the single-process masks); ``"auto"`` (default): shard where
            the scorer declares sharding exact (``Scorer.shardable``: PX without ``bn_warmup``, whose
            signed gradient sums add over batches), replicate otherwise. SNIP and GraSP sharded are not the
            one-process scores (IoU about 0.6: SNIP normalises per call, GraSP's Hessian term is not additive),
            and the data-free methods gain nothing from it. Rank 0's masks are broadcast at the end.
        invert: Keep each layer's lowest-scored weights instead of its highest, at the per-layer counts the
            method finds (the third published sanity check; ``find_masks(..., invert=True)``).
        pattern: N:M masks, e.g. ``"2:4"``: at most N of every M consecutive weights along each output's
            input dimension are kept, inside the same budget (``find_masks(..., pattern=...)``).
        export_sparse: A file path: at fit end (rank zero) the pruned network (the module's ``model``
            attribute when it has one, else the module) is written with ``save_sparse``, kept values and
            masks only; ``load_sparse(path, freshly_built_network)`` loads it back with its masks.
    Example:
        >>> trainer = L.Trainer(callbacks=[ForesightPruningCallback(method="px", density=0.018, rounds=100)])
        >>> trainer.fit(model, datamodule=dm)

    In a LightningCLI YAML config::

        trainer:
          callbacks:
            - class_path: px_lightning.callbacks.ForesightPruningCallback
              init_args: {method: px, sparsity: 0.98, rounds: 100}

    Strategies: single device, ``ddp`` (multi-node through ``num_nodes``) and the spawning DDP variants
    (``ddp_spawn``, ``ddp_notebook``, ``ddp_fork``). FSDP, DeepSpeed and the model-parallel strategy cannot
    carry parametrized masks and are refused at setup. Under a spawning variant the workers score, prune and
    train exactly as under ``ddp`` and their checkpoints carry the masks; the main process then receives rank
    0's final weights as plain tensors with the pruned entries exactly zero (as with ``make_permanent=True``),
    but not the masks: ``get_masks(model)`` is empty there and the callback in the main process does not hold
    them. A following ``trainer.test``/``validate``/``predict`` of that model uses the pruned weights; to
    train on with the same masks, resume from a checkpoint of the fit (``fit(..., ckpt_path=...)``), since a
    new fit of the returned model would score it again. A module that already has masks keeps them through a
    ``ddp_fork``/``ddp_notebook`` fit (the main process has them too); ``ddp_spawn`` cannot pickle it: resume
    with ``ckpt_path`` instead.

    Resuming (``fit(..., ckpt_path=...)``) a checkpoint written with this callback keeps its masks without
    scoring; a callback given another ``method`` or ``density`` than the checkpoint's warns (rank zero),
    naming both, and keeps the checkpoint's masks. ``YourModule.load_from_checkpoint(path)`` gives the
    pruned weights without masks; :func:`restore_masks` re-installs them before fine-tuning.

    Resuming a dense checkpoint (from a fit without this callback) with ``fit(..., ckpt_path=...)`` prunes
    the restored, trained weights at fit start and trains on from the checkpoint's step and optimizer state
    (matched to the pruned parameters, zero at the pruned entries).
    """

    def __init__(
        self,
        method: str | Scorer = "px",
        density: float | None = None,
        sparsity: float | None = None,
        rounds: int | None = None,
        scope: Literal["global", "local"] = "global",
        schedule: Literal["exponential", "linear"] = "exponential",
        num_batches: int = 10,
        include: str | list[str] | None = None,
        exclude: str | list[str] | None = None,
        reinit: bool = False,
        reshuffle: bool = False,
        make_permanent: bool = False,
        verbose: bool = True,
        method_options: dict[str, Any] | None = None,
        distributed_scoring: Literal["auto", "shard", "replicate"] = "auto",
        invert: bool = False,
        pattern: str | None = None,
        export_sparse: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if (density is None) == (sparsity is None):
            raise ValueError(
                "ForesightPruningCallback needs exactly one of density (fraction kept) or sparsity (fraction "
                f"pruned); got density={density!r}, sparsity={sparsity!r}: remove one (on the px-lightning "
                "command line, over a config that sets density, add --trainer.callbacks.init_args.density=null; "
                "over one that sets sparsity, --trainer.callbacks.init_args.sparsity=null)"
                if density is not None
                else "ForesightPruningCallback needs density (fraction kept) or sparsity (fraction pruned): "
                "give one, e.g. density=0.1"
            )
        # The pruning layer's own checks, so that the callback fails when it is built with find_masks' words.
        self.density = check_density(1.0 - check_sparsity(sparsity) if sparsity is not None else density)
        self.rounds = check_rounds(rounds, allow_none=True)
        self.scope = check_scope(scope)
        self.schedule = check_schedule(schedule)
        self.num_batches = check_positive_int(num_batches, "num_batches")
        if distributed_scoring not in DISTRIBUTED_SCORING:
            raise ValueError(
                f"distributed_scoring must be 'auto', 'shard' or 'replicate', got {distributed_scoring!r}"
            )
        flags = {
            "reinit": reinit,
            "reshuffle": reshuffle,
            "make_permanent": make_permanent,
            "verbose": verbose,
            "invert": invert,
        }
        for argument, value in flags.items():
            if not isinstance(value, bool):
                raise TypeError(f"{argument} must be True or False, got {value!r}")
        if method_options is not None and not isinstance(method_options, dict):
            raise TypeError(f"method_options must be a mapping or None, got {type(method_options).__name__}")
        self.method = method
        # As given: the callback's PX is find_masks' PX, defaults included.
        self.method_options = options_for(method, method_options or {})
        # Built now so that a wrong method name or option fails when the callback is built; never changed.
        self.scorer = get_scorer(method, **self.method_options)
        # As find_masks reads them: a single string is one pattern, not a sequence of one-letter patterns.
        self.include = as_patterns(include, "include") or None
        self.exclude = as_patterns(exclude, "exclude") or None
        if reshuffle and invert:
            raise ValueError(
                "reshuffle and invert are two different sanity checks: set one of them, not both"
            )
        if pattern is not None:
            parse_pattern(pattern)
            if self.density >= 1.0:
                raise ValueError(f"pattern={pattern!r} needs a density below 1: density 1 keeps every weight")
        if export_sparse is not None and not isinstance(export_sparse, (str, os.PathLike)):
            raise TypeError(f"export_sparse must be a file path or None, got {type(export_sparse).__name__}")
        self.reinit = reinit
        self.reshuffle = reshuffle
        self.invert = invert
        self.pattern = pattern
        self.export_sparse = export_sparse
        self.savings: dict | None = None  # savings_report of the pruned module, set at fit start when scored
        self.make_permanent = make_permanent
        self.verbose = verbose
        self.distributed_scoring = distributed_scoring
        self.report: dict | None = None  # sparsity_report of the pruned module, set at fit start
        self._masks: dict[str, Tensor] | None = None  # found or restored masks (CPU): no rescoring when set
        self._names: list[str] = []
        self._loader = PlainKeyLoader()
        self._hook_handle = None
        self._source = ""
        self._example: Tensor | None = None  # one scoring input (CPU), for the effective density
        self._module_id: int | None = None  # the module of the last fit (same module: masks kept)
        self._dense_checkpoint: dict | None = None  # a resumed checkpoint without masks, until fit start
        self._state_hook = None  # spawn workers only: state_dict() gives plain keys after the fit
        self._masked_before_fit = False  # the module had masks at setup (they exist in the main process too)

    @property
    @override
    def state_key(self) -> str:
        # The class name whatever the settings (Lightning's default, stated): a resume with another method or
        # density must find the checkpoint's masks (and warns), and restore_masks looks for this key.
        return self.__class__.__qualname__

    # ---------------------------------------------------------------- setup: placeholders before the wrap
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._check_strategy(trainer)
        self._dense_checkpoint = None
        if self._state_hook is not None:
            self._state_hook.remove()
            self._state_hook = None
        if self._module_id != id(pl_module):
            # Another module than the last fit's (the callback reused in a sweep): its own pruning, its own
            # hook. A checkpoint's masks, if this is a resume, are loaded after setup.
            self._masks = None
            if self._hook_handle is not None:
                self._hook_handle.remove()
                self._hook_handle = None
            self._module_id = id(pl_module)
        existing = get_masks(pl_module)
        # Masks installed before this fit (restore_masks, apply_masks, an earlier fit) are on the main
        # process's module too: a spawning launcher's parametrized keys then load there as they are.
        self._masked_before_fit = bool(existing)
        targets = list(prunable_parameters(pl_module, self.include, self.exclude))
        placeholders = {}
        for name in targets:
            if name not in existing:
                tensor = getattr(*owner(pl_module, name))
                placeholders[name] = torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
        apply_masks(pl_module, placeholders)
        self._names = targets
        self._loader.names = targets
        if self._hook_handle is None:
            self._hook_handle = pl_module.register_load_state_dict_pre_hook(self._loader)
        # DDP would broadcast every buffer, the masks too, from rank 0 at each training forward; the masks
        # only change here and at fit start, where every rank fills the same values, so DDP skips them.
        mask_buffers = [f"{n}.mask" for n, m in pl_module.named_modules() if isinstance(m, WeightMask)]
        ignored = set(getattr(pl_module, "_ddp_params_and_buffers_to_ignore", ())) | set(mask_buffers)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(pl_module, sorted(ignored))

    @staticmethod
    def _check_strategy(trainer: pl.Trainer) -> None:
        strategy = trainer.strategy
        if isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
            raise TypeError(
                f"ForesightPruningCallback cannot run under {type(strategy).__name__}: it shards or flattens the "
                "parameters, so the mask parametrizations cannot be carried; use strategy='ddp' (or one device)"
            )

    # ---------------------------------------------------------------- fit start: score or restore, fill
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        installed = set(get_masks(pl_module))
        missing = [n for n in self._names if n not in installed]
        if missing:
            raise RuntimeError(f"mask placeholders missing at fit start for {missing[:5]}; setup did not run")
        if self._masks is not None:  # restored from a checkpoint (or found by an earlier fit): no scoring
            if set(self._masks) != set(self._names):
                raise ValueError(
                    "the checkpoint's pruning masks cover other tensors than this model's prunable ones "
                    f"(checkpoint only: {sorted(set(self._masks) - set(self._names))[:5]}, model only: "
                    f"{sorted(set(self._names) - set(self._masks))[:5]}); use the same model and "
                    "include/exclude as the run that wrote the checkpoint"
                )
            apply_masks(pl_module, self._masks)
        else:
            dense, self._dense_checkpoint = self._dense_checkpoint, None
            if dense is not None:
                rank_zero_info(
                    f"ForesightPruningCallback: the checkpoint {trainer.ckpt_path} has no pruning masks "
                    "(written without this callback): pruning its trained weights "
                    f"(step {dense.get('global_step')}) now; training resumes from its step and optimizer "
                    "state, the pruned entries' state zeroed"
                )
            # Seeded alike on every rank, for the reshuffle (in find_masks) and the re-initialisation.
            generator = shared_generator(trainer.strategy) if (self.reshuffle or self.reinit) else None
            if self.density >= 1.0:
                # The dense baseline: nothing to prune, so no scoring (and no scoring data needed). All-ones
                # masks keep the run on the same path as a pruned one: checkpoints, resume, DDP, logs.
                rank_zero_info(
                    "ForesightPruningCallback: density=1.0, the dense baseline: no scoring, all-ones masks"
                )
                masks = {n: torch.ones_like(mask_module(pl_module, n).mask) for n in self._names}
            else:
                masks = self._score(trainer, pl_module, generator)
            if self.reinit:
                with torch.no_grad():
                    for n in masks:
                        weights = original(pl_module, n)
                        order = torch.randperm(weights.numel(), generator=generator).to(weights.device)
                        weights.copy_(weights.detach().flatten()[order].view_as(weights))
            apply_masks(pl_module, masks)
            self._masks = {n: m.detach().to("cpu", torch.bool).clone() for n, m in masks.items()}
            if dense is not None:
                where = f"the dense checkpoint ckpt_path={trainer.ckpt_path!r}"
                match_dense_optimizer_states(trainer.optimizers, pl_module, self._names, dense, where)
        zero_pruned(pl_module, self._names)
        example, self._example = self._example, None
        self.report = sparsity_report(pl_module, _effective_input(example))
        # What the masks save needs an input: known when this fit scored (not on resume or at density 1).
        self.savings = (
            None if example is None else savings_report(pl_module, example.to(self._device(pl_module)))
        )
        self._log(trainer)

    def _score(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, generator: torch.Generator | None
    ) -> dict[str, Tensor]:
        batches, self._source = draw_scoring_batches(trainer, self.num_batches, self.scorer.needs_data)
        if batches:
            first = batches[0] if isinstance(batches[0], Tensor) else batches[0][0]
            self._example = first[:1].detach().cpu()
        # The strategy's world: under DDP its process group exists from setup on (LIGHTNING_NOTES.md).
        distributed = trainer.world_size > 1
        mine, reduce_scores = batches, None
        if distributed and self.shard_scoring:
            if self.scorer.needs_data and len(batches) < trainer.world_size:
                raise ValueError(
                    f"{len(batches)} scoring batches for {trainer.world_size} ranks: distributed_scoring='shard' "
                    "gives each rank whole batches; raise num_batches (or the scoring_dataloader's size) to "
                    "at least the world size, or set distributed_scoring='replicate'"
                )
            if any(isinstance(m, nn.SyncBatchNorm) for m in pl_module.modules()):
                raise ValueError(
                    "distributed_scoring='shard' with SyncBatchNorm would mix different ranks' scoring batches "
                    "in the normalisation statistics (and hang on unequal shares): set "
                    "distributed_scoring='replicate', or train without sync_batchnorm"
                )
            check_same_batches(batches, trainer.strategy)
            mine = batches[trainer.global_rank :: trainer.world_size]
            reduce_scores = functools.partial(all_reduce_sum, strategy=trainer.strategy)
        bar = self._progress_bar(trainer)
        try:
            masks = find_masks(
                pl_module,
                self.scorer,
                mine,
                density=self.density,
                rounds=self.rounds,
                scope=self.scope,
                schedule=self.schedule,
                loss_fn=module_loss(pl_module),
                include=self.include,
                exclude=self.exclude,
                progress=None if bar is None else lambda done, total: _advance(bar, done, total),
                reduce_scores=reduce_scores,
                reshuffle=self.reshuffle,
                invert=self.invert,
                generator=generator,
                pattern=self.pattern,
            )
        except ZeroScoresError as err:
            raise ZeroScoresError(
                f"ForesightPruningCallback: {err}. The scoring data came from {self._source}; "
                "change method, method_options or the scoring data",
                err.method,
            ) from err
        finally:
            if bar is not None:
                bar.close()
        if distributed:  # exact agreement whatever the ranks' float round-off: rank 0's masks everywhere
            masks = broadcast_masks(masks, trainer.strategy)
        return masks

    @property
    def shard_scoring(self) -> bool:
        """Whether DDP ranks score shares of the batches (``distributed_scoring``, ``"auto"`` resolved).

        ``"auto"`` shards where the scorer declares exact sharding (``Scorer.shardable``):
        BatchNorm warm-up on a rank's share, or per-layer normalisation of a rank's partial scores, would
        not give one process's scores.
        """
        if self.distributed_scoring == "auto":
            return self.scorer.shardable
        return self.distributed_scoring == "shard"

    def _progress_bar(self, trainer: pl.Trainer):
        rounds = self.rounds if self.rounds is not None else self.scorer.default_rounds
        if trainer.progress_bar_callback is None or not trainer.is_global_zero or rounds < 2:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=rounds, desc=f"Pruning ({self.scorer.name})", unit="round", leave=False, dynamic_ncols=True
        )

    @staticmethod
    def _device(module: nn.Module) -> torch.device:
        return next(module.parameters()).device

    def _log(self, trainer: pl.Trainer) -> None:
        report = self.report
        metrics = {"pruning/density": report["density"]}
        metrics.update({f"pruning/density/{n}": v["density"] for n, v in report["layers"].items()})
        if "effective_density" in report:
            metrics["pruning/effective_density"] = report["effective_density"]
        if self.savings is not None:
            metrics["pruning/flops_ratio"] = self.savings["flops_ratio"]
            metrics["pruning/params_ratio"] = self.savings["params_ratio"]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.verbose:
            rank_zero_info(density_table(trainer.lightning_module))
            if self.savings is not None:
                rank_zero_info(format_savings(self.savings))
            if "effective_density" in report:
                rank_zero_info(
                    f"ForesightPruningCallback: effective density {report['effective_density']:.4f} "
                    f"({report['effective']} of the {report['kept']} kept weights lie on an input-output path)"
                )

    # ---------------------------------------------------------------- checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"masks": self._masks, "density": self.density, "method": self.scorer.name}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        masks = state_dict.get("masks")
        self._masks = None if masks is None else {n: m.to(torch.bool) for n, m in masks.items()}
        if masks is None:
            return
        saved_method, saved_density = state_dict.get("method"), state_dict.get("density")
        differs = []
        if saved_method is not None and str(saved_method).lower() != str(self.scorer.name).lower():
            differs.append(f"method {saved_method!r} (this callback: {self.scorer.name!r})")
        if saved_density is not None and not math.isclose(float(saved_density), self.density, rel_tol=1e-9):
            differs.append(f"density {saved_density} (this callback: {self.density})")
        if differs:
            rank_zero_warn(
                f"ForesightPruningCallback: the checkpoint's masks were found with {' and '.join(differs)}; "
                "resuming keeps the checkpoint's masks and does not score again. To prune with this callback's "
                "settings, start a new fit without ckpt_path (or load the weights only: "
                "YourModule.load_from_checkpoint(path))"
            )

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        states = checkpoint.get("callbacks") or {}
        # Checkpoints of Lightning before 1.5 keyed callback states by class (Lightning's legacy key).
        state = states.get(self.state_key, states.get(self._legacy_state_key))
        if not state or state.get("masks") is None:
            # A dense checkpoint (a fit without this callback): its weights are loaded by now, through the
            # plain-key pre-hook; at fit start they are pruned and optimizer state matched to the masks.
            self._masks = None
            self._dense_checkpoint = checkpoint

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get("state_dict")
        if not state:
            return
        checkpoint["state_dict"] = type(state)(to_plain_keys(state, list(get_masks(pl_module))))

    # ---------------------------------------------------------------- fit end
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.export_sparse is not None:
            # The network a user rebuilds (an ImageClassifier's or SemanticSegmenter's ``model``), masks
            # still on: load_sparse(path, freshly_built_network) gives it back, masks installed.
            if trainer.is_global_zero:
                network = getattr(pl_module, "model", None)
                network = network if isinstance(network, nn.Module) else pl_module
                os.makedirs(os.path.dirname(os.path.abspath(self.export_sparse)), exist_ok=True)
                save_sparse(network, self.export_sparse)
                rank_zero_info(f"ForesightPruningCallback: sparse model written to {self.export_sparse}")
            trainer.strategy.barrier()
        if not self.make_permanent:
            return
        remove_masks(pl_module)
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None
        ignored = [
            n
            for n in getattr(pl_module, "_ddp_params_and_buffers_to_ignore", ())
            if ".parametrizations." not in n
        ]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(pl_module, ignored)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
            return
        names = list(get_masks(pl_module))
        if not names or self._state_hook is not None or self._masked_before_fit:
            return
        # A spawning launcher (ddp_spawn, ddp_notebook, ddp_fork) returns rank 0's state_dict() to the main
        # process, whose module never had masks, and loads it there with strict=False: parametrized keys
        # would be dropped silently, leaving the pruned layers at their initial weights. From here on (the
        # last hook of the worker's fit, after on_fit_end and any checkpoint) state_dict() gives the plain
        # keys with masked values, as checkpoints do; the worker's module keeps its masks.
        self._state_hook = pl_module.register_state_dict_post_hook(PlainKeyWriter(names))
        if self.verbose:
            rank_zero_info(
                "ForesightPruningCallback: the main process receives the pruned weights as plain tensors "
                "(pruned entries zero, no masks); resume from a checkpoint to keep training with the masks"
            )


def _advance(bar, done: int, total: int) -> None:
    bar.update(done - bar.n)


def _effective_input(example: Tensor | None) -> Tensor | None:
    """The input for ``sparsity_report``'s effective counts, or None where there is none to use."""
    if example is None or not example.is_floating_point():
        return None  # not scored here (restored masks, density 1, no scoring data), or token inputs
    return example

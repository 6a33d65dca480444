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

import itertools
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..pruning import (
    apply_masks,
    density_table,
    find_masks,
    get_masks,
    prunable_parameters,
    remove_masks,
    sparsity_report,
)
from ..pruning.connectivity import unmodelled_norms
from ..pruning.masks import WeightMask
from ..pruning.schedule import flatten_named, split_like
from ..pruning.scorers import SCORERS, PXScorer, Scorer, get_scorer
from ..pruning.targets import as_patterns


def _split_name(name: str) -> tuple[str, str]:
    module_name, _, attr = name.rpartition(".")
    return module_name, attr


def _mask_module(model: nn.Module, name: str) -> WeightMask:
    module_name, attr = _split_name(name)
    module = model.get_submodule(module_name) if module_name else model
    return next(p for p in module.parametrizations[attr] if isinstance(p, WeightMask))


def _original(model: nn.Module, name: str) -> Tensor:
    module_name, attr = _split_name(name)
    module = model.get_submodule(module_name) if module_name else model
    return module.parametrizations[attr].original


def _keys(name: str) -> tuple[str, str]:
    """State-dict keys of a masked tensor: its trainable ``original`` and its mask buffer."""
    module_name, attr = _split_name(name)
    base = f"{module_name}.parametrizations.{attr}" if module_name else f"parametrizations.{attr}"
    return f"{base}.original", f"{base}.0.mask"


def _plain_name(name: str) -> str:
    """``net.conv.parametrizations.weight.original`` -> ``net.conv.weight``; other names unchanged."""
    if not name.endswith(".original"):
        return name
    container, _, attr = name[: -len(".original")].rpartition(".")
    if container != "parametrizations" and not container.endswith(".parametrizations"):
        return name
    owner = container[: -len("parametrizations")].rstrip(".")
    return f"{owner}.{attr}" if owner else attr


def _to_plain_keys(state: dict, names: Sequence[str], prefix: str = "") -> dict:
    """``state`` with each masked tensor's ``original``/``mask`` pair replaced by its plain key and values.

    The plain entry takes the original's position, so the order is the module's own; the result loads
    strictly into the same module without parametrizations (or, through the callback's pre-hook, with them).
    """
    replace = {}
    for name in names:
        original_key, mask_key = (prefix + key for key in _keys(name))
        if original_key in state and mask_key in state:
            with torch.no_grad():
                value = state[original_key] * state[mask_key].to(state[original_key].dtype)
            replace[original_key] = (prefix + name, value)
            replace[mask_key] = None
    rebuilt = {}
    for key, value in state.items():
        if key not in replace:
            rebuilt[key] = value
        elif replace[key] is not None:
            rebuilt[replace[key][0]] = replace[key][1]
    return rebuilt


class _PlainKeyWriter:
    """``state_dict`` post-hook: the masked tensors under their plain keys (see ``_to_plain_keys``)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def __call__(self, module, state_dict, prefix, local_metadata) -> None:
        rebuilt = _to_plain_keys(state_dict, self.names, prefix)
        state_dict.clear()  # in place: the hook API keeps the caller's dict (and its _metadata)
        state_dict.update(rebuilt)


def _module_loss(pl_module: pl.LightningModule) -> nn.Module | None:
    """The module's own ``loss_fn`` for the loss-based scorers (SNIP, GraSP), if it has one.

    A segmenter's loss ignores label 255; the default cross-entropy would fail on those pixels.
    """
    loss_fn = getattr(pl_module, "loss_fn", None)
    return loss_fn if callable(loss_fn) else None


class _PlainKeyLoader:
    """``load_state_dict`` pre-hook mapping plain keys (``conv.weight``) onto a parametrized module's keys.

    A checkpoint written by the callback holds plain keys; the module carries mask placeholders since
    ``setup``. The value goes to ``original``; a mask absent from the state dict keeps the module's
    current one (the callback fills the right one from its own state at fit start). Holds names only, so
    deep copies of the module (scoring copies) stay cheap.
    """

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        for name in self.names:
            original_key, mask_key = _keys(name)
            plain = prefix + name
            if plain in state_dict and prefix + original_key not in state_dict:
                state_dict[prefix + original_key] = state_dict.pop(plain)
                if prefix + mask_key not in state_dict:
                    try:
                        state_dict[prefix + mask_key] = _mask_module(module, name).mask.clone()
                    except (AttributeError, StopIteration, KeyError):
                        pass  # no mask on the module (made permanent): the strict load reports the key


#: PX options the callback uses unless ``method_options`` sets them. The published scoring (``head="published"``,
#: no BatchNorm warm-up, no floor) collapses layers at low density; together these three were the best PX
#: of the quality benchmark (benchmarks/README.md, "Quality": the floor never binds on the plain CNN and
#: keeps the ResNet's last branch alive). ``compute_scores``/``find_masks`` keep the published defaults.
#: ``bn_warmup`` is a default only for a network at initialisation: when ``method_options`` does not set it,
#: the callback turns it off at fit start if any BatchNorm layer holds statistics other than the initial
#: ones (a pre-trained backbone, a trained checkpoint), so PX scores with those statistics.
PX_CALLBACK_DEFAULTS: dict[str, Any] = {"head": "body", "bn_warmup": True, "layer_floor": 0.2}


def _options_for(method: str | Scorer, options: dict[str, Any]) -> dict[str, Any]:
    """The options of ``method`` from ``method_options``, flat (``{head: body}``) or per method.

    The per-method form (``{px: {head: body}, snip: {}}``: every key a method name) lets a config state
    PX's options and still switch ``method`` with one override: the options of the other methods are not
    passed to the chosen one.
    """
    per_method = [k for k in options if isinstance(k, str) and k.lower() in SCORERS]
    if not options or not per_method:
        return dict(options)
    if len(per_method) != len(options):
        flat = [k for k in options if k not in per_method]
        raise ValueError(
            f"method_options mixes per-method keys ({', '.join(map(str, per_method))}) with options "
            f"({', '.join(map(str, flat))}): use one form, either {{option: value}} or {{method: {{option: value}}}}"
        )
    for key, value in options.items():
        if value is not None and not isinstance(value, dict):
            raise ValueError(
                f"method_options[{key!r}] must be a mapping of {key}'s options (method_options keyed by method "
                f"name), got {value!r}"
            )
    name = method.lower() if isinstance(method, str) else getattr(method, "name", "")
    chosen = {k.lower(): v for k, v in options.items()}.get(name)
    return dict(chosen or {})


def _initial_bn_statistics(module: nn.Module) -> bool | None:
    """Whether every BatchNorm layer still has its initial running statistics (None: no such layer).

    Initial: no batch tracked, running mean exactly 0 and variance exactly 1. A pre-trained file often
    carries ``num_batches_tracked == 0`` with trained statistics, hence the value check.
    """
    found = False
    for m in module.modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.running_mean is None:
            continue
        found = True
        tracked = m.num_batches_tracked
        if tracked is not None and int(tracked) != 0:
            return False
        if not (bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all())):
            return False
    return True if found else None


def _checkpoint_state(checkpoint: dict[str, Any], where: str) -> dict[str, Any]:
    """The ForesightPruningCallback state (with masks) of a loaded Lightning checkpoint."""
    states = checkpoint.get("callbacks")
    states = states if isinstance(states, dict) else {}  # none at all: not written by a Trainer fit
    found = [
        state
        for key, state in states.items()
        if str(key).startswith("ForesightPruningCallback") and isinstance(state, dict) and state.get("masks")
    ]
    if not found:
        raise ValueError(
            f"{where} holds no pruning masks: it was not written by a fit with ForesightPruningCallback (or "
            "the masks were made permanent). Its weights alone load with YourModule.load_from_checkpoint(path)"
        )
    if len(found) > 1:
        raise ValueError(
            f"{where} holds the masks of {len(found)} ForesightPruningCallbacks; read the one you want from "
            "checkpoint['callbacks'][<state key>]['masks'] and install it with px_lightning.pruning.apply_masks"
        )
    return found[0]


def restore_masks(module: nn.Module, checkpoint: str | os.PathLike | dict[str, Any]) -> dict[str, Tensor]:
    """Re-install the pruning masks of a checkpoint written with :class:`ForesightPruningCallback`.

    ``YourModule.load_from_checkpoint(path)`` gives the pruned weights (pruned entries exactly zero) but no
    masks: training that module again lets the pruned weights grow back. ``restore_masks`` reads the masks
    from the callback's state in the checkpoint and installs them on ``module`` as parametrizations (as
    :func:`px_lightning.pruning.apply_masks` does, names as in the module that saved it, e.g.
    ``model.conv1.weight`` for an ``ImageClassifier``), sets the pruned entries to zero, and returns them.
    Fine-tuning the module then keeps the pruned weights at zero. Not needed to resume a fit
    (``trainer.fit(..., ckpt_path=path)`` with the callback restores them itself).

    Args:
        module: The module to mask, usually the one ``load_from_checkpoint`` returned.
        checkpoint: The checkpoint's path, or the dict ``torch.load`` gave for it.

    Example:
        >>> module = ImageClassifier.load_from_checkpoint(path)
        >>> masks = restore_masks(module, path)   # {"model.conv1.weight": bool tensor, ...}
        >>> L.Trainer(max_epochs=5).fit(module, datamodule=dm)   # fine-tunes sparse
    """
    where = "the checkpoint dict" if isinstance(checkpoint, dict) else f"the checkpoint {str(checkpoint)!r}"
    if not isinstance(checkpoint, dict):
        # weights_only=False: Lightning checkpoints may hold hyperparameter objects a weights-only load refuses.
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
    masks = {n: m.to(torch.bool) for n, m in _checkpoint_state(checkpoint, where)["masks"].items()}
    targets = set(prunable_parameters(module))
    unknown = sorted(set(masks) - targets)
    if unknown:
        raise ValueError(
            f"the masks of {where} name tensors that {type(module).__name__} does not have or cannot mask: "
            f"{unknown[:5]}; give the same kind of module as the one that saved it (the LightningModule, "
            "not its inner network)"
        )
    apply_masks(module, masks)
    _zero_pruned(module, list(masks))
    return get_masks(module)


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
            other published sanity check).
        make_permanent: At fit end remove the parametrizations, leaving plain weights with the pruned
            entries at exactly zero.
        verbose: Print the per-layer density table (rank zero) after pruning, and the effective density
            (``effective_masks``: kept weights on an input-to-output path), which is also logged as
            ``pruning/effective_density`` when the callback scored (not on resume) a network whose
            normalisation layers are BatchNorm.
        method_options: Options of the scoring method, e.g. ``{"kernel_norm": "eval"}`` for PX or
            ``{"seed": 0}`` for random; or keyed by method name, ``{"px": {"head": "body"}}``, so that only
            the chosen method's options apply (a config can state PX's options and still switch ``method``
            with one override). For ``method="px"`` the callback adds ``head="body"``, ``bn_warmup=True``
            and ``layer_floor=0.2`` unless given here (``PX_CALLBACK_DEFAULTS``: they keep the classifier
            and the residual blocks alive at low density). ``bn_warmup`` left unset is decided at fit start:
            on only if every BatchNorm layer still has its initial statistics (0/1, no batch tracked); a
            pre-trained or trained network is scored with its own statistics (``bn_warmup=False``, logged).
            ``{"kernel_norm": "train", "head": "published", "bn_warmup": False, "layer_floor": 0}`` is the
            authors' scoring exactly (``kernel_norm="train"`` is degenerate on BatchNorm networks:
            ``shared/conformance/README.md``). SNIP and GraSP score with the LightningModule's ``loss_fn``
            attribute when it has one (so a segmenter's ``ignore_index=255`` holds), else cross-entropy.
        distributed_scoring: Under DDP, ``"shard"``: each rank scores its share of whole scoring batches
            and the scores are summed across ranks before each round's threshold (data-parallel);
            ``"replicate"``: every rank scores all batches (no faster than one device, exactly the
            single-process masks); ``"auto"`` (default): shard for PX without ``bn_warmup``, replicate
            otherwise.
            Sharding gives one process's masks only where scores add over batches: PX nearly does (IoU
            0.9996 with one process on a CIFAR ResNet-20, one-shot at density 0.1, two shards), SNIP and
            GraSP do not (IoU about 0.6: SNIP normalises per call, GraSP's Hessian term is not additive),
            and the data-free methods gain nothing from it. Rank 0's masks are broadcast at the end.
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
        if sparsity is not None:
            if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
                raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
            density = 1.0 - float(sparsity)
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
            raise ValueError(f"density must be in (0, 1], got {density!r}")
        if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
            raise ValueError(f"rounds must be an integer >= 1 or None, got {rounds!r}")
        if scope not in ("global", "local"):
            raise ValueError(f"scope must be 'global' or 'local', got {scope!r}")
        if schedule not in ("exponential", "linear"):
            raise ValueError(f"schedule must be 'exponential' or 'linear', got {schedule!r}")
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(f"num_batches must be an integer >= 1, got {num_batches!r}")
        if distributed_scoring not in ("auto", "shard", "replicate"):
            raise ValueError(
                f"distributed_scoring must be 'auto', 'shard' or 'replicate', got {distributed_scoring!r}"
            )
        if method_options is not None and not isinstance(method_options, dict):
            raise TypeError(f"method_options must be a mapping or None, got {type(method_options).__name__}")
        self.method = method
        self.method_options = _options_for(method, method_options or {})
        # bn_warmup left to the callback: decided at fit start from the model's BatchNorm statistics.
        self._auto_bn_warmup = False
        if isinstance(method, str) and method.lower() == "px":
            # The user's options win; the defaults are the measured best against layer collapse.
            self._auto_bn_warmup = "bn_warmup" not in self.method_options
            self.method_options = {**PX_CALLBACK_DEFAULTS, **self.method_options}
        # Resolve now so that a wrong method name or option fails when the callback is built.
        self.scorer = get_scorer(method, **self.method_options)
        self.density = float(density)
        self.rounds = rounds
        self.scope = scope
        self.schedule = schedule
        self.num_batches = num_batches
        # As find_masks reads them: a single string is one pattern, not a sequence of one-letter patterns.
        self.include = as_patterns(include, "include") or None
        self.exclude = as_patterns(exclude, "exclude") or None
        self.reinit = reinit
        self.reshuffle = reshuffle
        self.make_permanent = make_permanent
        self.verbose = verbose
        self.distributed_scoring = distributed_scoring
        self.report: dict | None = None  # sparsity_report of the pruned module, set at fit start
        self._masks: dict[str, Tensor] | None = None  # found or restored masks (CPU): no rescoring when set
        self._names: list[str] = []
        self._loader = _PlainKeyLoader()
        self._hook_handle = None
        self._source = ""
        self._example: Tensor | None = None  # one scoring input (CPU), for the effective density
        self._module_id: int | None = None  # the module of the last fit (same module: masks kept)
        self._dense_checkpoint: dict | None = None  # a resumed checkpoint without masks, until fit start
        self._state_hook = None  # spawn workers only: state_dict() gives plain keys after the fit
        self._masked_before_fit = False  # the module had masks at setup (they exist in the main process too)

    # ---------------------------------------------------------------- setup: placeholders before the wrap
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
                module_name, attr = _split_name(name)
                tensor = getattr(pl_module.get_submodule(module_name) if module_name else pl_module, attr)
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
            if self.density >= 1.0:
                # The dense baseline: nothing to prune, so no scoring (and no scoring data needed). All-ones
                # masks keep the run on the same path as a pruned one: checkpoints, resume, DDP, logs.
                rank_zero_info(
                    "ForesightPruningCallback: density=1.0, the dense baseline: no scoring, all-ones masks"
                )
                masks = {n: torch.ones_like(_mask_module(pl_module, n).mask) for n in self._names}
            else:
                self._resolve_bn_warmup(trainer, pl_module)
                masks = self._score(trainer, pl_module)
            generator = self._shared_generator(trainer) if (self.reshuffle or self.reinit) else None
            if self.reshuffle:
                masks = {n: _permuted(m, generator) for n, m in masks.items()}
            if self.reinit:
                with torch.no_grad():
                    for n in masks:
                        original = _original(pl_module, n)
                        original.copy_(_permuted(original.detach(), generator))
            apply_masks(pl_module, masks)
            self._masks = {n: m.detach().to("cpu", torch.bool).clone() for n, m in masks.items()}
            if dense is not None:
                self._match_dense_optimizer_states(trainer, pl_module, dense)
        _zero_pruned(pl_module, self._names)
        example, self._example = self._example, None
        self.report = sparsity_report(pl_module, _effective_input(pl_module, example))
        self._log(trainer)

    def _resolve_bn_warmup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """PX's ``bn_warmup`` when ``method_options`` leaves it to the callback: on only at initialisation.

        Warming BatchNorm up replaces the running statistics of the scoring copies with the scoring data's;
        on a network at initialisation (all 0/1) that is the measured improvement, but trained statistics
        (a pre-trained backbone, a dense checkpoint) are what PX should score with.
        """
        if not self._auto_bn_warmup or not isinstance(self.scorer, PXScorer):
            return
        initial = _initial_bn_statistics(pl_module)
        # Rank 0 decides for every rank, so all ranks score the same way (DDP syncs buffers anyway).
        initial = trainer.strategy.broadcast(initial, src=0)
        self.scorer.bn_warmup = initial is True
        self.method_options["bn_warmup"] = self.scorer.bn_warmup
        if initial is False:
            rank_zero_info(
                "ForesightPruningCallback: PX bn_warmup=False: the model's BatchNorm layers hold trained "
                "running statistics (not the initial 0/1; e.g. a pre-trained backbone), which PX scores with. "
                "Set method_options={'px': {'bn_warmup': True}} to estimate them on the scoring data instead"
            )
        elif initial is None:
            rank_zero_info("ForesightPruningCallback: PX bn_warmup=False: the model has no BatchNorm layer")

    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        batches = self._scoring_batches(trainer)
        distributed = trainer.world_size > 1 and dist.is_available() and dist.is_initialized()
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
            _check_same_batches(batches)
            mine = batches[trainer.global_rank :: trainer.world_size]
            reduce_scores = _all_reduce_sum
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
                loss_fn=_module_loss(pl_module),
                include=self.include,
                exclude=self.exclude,
                progress=None if bar is None else lambda done, total: _advance(bar, done, total),
                reduce_scores=reduce_scores,
            )
        except RuntimeError as err:
            if "all zero" in str(err):
                raise RuntimeError(
                    f"ForesightPruningCallback: {err}. The scoring data came from {self._source}; "
                    "change method, method_options or the scoring data"
                ) from err
            raise
        finally:
            if bar is not None:
                bar.close()
        if distributed:  # exact agreement whatever the ranks' float round-off: rank 0's masks everywhere
            masks = _broadcast_masks(masks)
        return masks

    @property
    def shard_scoring(self) -> bool:
        """Whether DDP ranks score shares of the batches (``distributed_scoring``, ``"auto"`` resolved)."""
        if self.distributed_scoring == "auto":
            # BatchNorm warm-up on a rank's share would see other statistics than one process on all batches.
            # So would per-layer normalisation of a rank's partial scores.
            scorer = self.scorer
            return isinstance(scorer, PXScorer) and not scorer.bn_warmup and scorer.layer_norm == "none"
        return self.distributed_scoring == "shard"

    def _scoring_batches(self, trainer: pl.Trainer) -> list:
        loader, limit, self._source = _scoring_source(trainer, self.num_batches)
        if loader is None:
            batches = []
        else:
            try:
                batches = list(itertools.islice(iter(loader), limit))
            except TypeError as err:
                raise TypeError(
                    f"cannot iterate the scoring data ({self._source}, a {type(loader).__name__}); give the "
                    "datamodule a scoring_dataloader() returning a DataLoader"
                ) from err
        if not batches and self.scorer.needs_data:
            raise ValueError(
                f"ForesightPruningCallback: no scoring data: {self._source} yielded no batch. Give the "
                "datamodule data (check its dataset and setup()) or a non-empty scoring_dataloader()"
            )
        for batch in batches[:1]:
            ok = isinstance(batch, Tensor) or (
                isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor)
            )
            if not ok:
                raise TypeError(
                    f"scoring batches must be (inputs, targets) pairs or input tensors; {self._source} gave a "
                    f"{type(batch).__name__}: give the datamodule a scoring_dataloader() yielding pairs"
                )
        if batches:
            first = batches[0] if isinstance(batches[0], Tensor) else batches[0][0]
            self._example = first[:1].detach().cpu()
        return batches

    def _progress_bar(self, trainer: pl.Trainer):
        rounds = self.rounds if self.rounds is not None else self.scorer.default_rounds
        if trainer.progress_bar_callback is None or not trainer.is_global_zero or rounds < 2:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=rounds, desc=f"Pruning ({self.scorer.name})", unit="round", leave=False, dynamic_ncols=True
        )

    @staticmethod
    def _shared_generator(trainer: pl.Trainer) -> torch.Generator:
        # One seed drawn on rank 0 (from the global RNG, so seed_everything makes it reproducible) and sent to
        # every rank: reshuffled masks and re-initialised weights are then the same everywhere.
        seed = int(torch.randint(0, 2**62, (1,)).item())
        seed = trainer.strategy.broadcast(seed, src=0)
        return torch.Generator().manual_seed(seed)

    def _log(self, trainer: pl.Trainer) -> None:
        report = self.report
        metrics = {"pruning/density": report["density"]}
        metrics.update({f"pruning/density/{n}": v["density"] for n, v in report["layers"].items()})
        if "effective_density" in report:
            metrics["pruning/effective_density"] = report["effective_density"]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.verbose:
            rank_zero_info(density_table(trainer.lightning_module))
            if "effective_density" in report:
                rank_zero_info(
                    f"ForesightPruningCallback: effective density {report['effective_density']:.4f} "
                    f"({report['effective']} of the {report['kept']} kept weights lie on an input-output path)"
                )

    def _match_dense_optimizer_states(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Fit a dense checkpoint's optimizer state to the pruned module before Lightning restores it.

        A parametrized weight leaves its module's own parameters for
        ``<module>.parametrizations.weight.original``, so in ``parameters()`` it now comes after the module's
        other direct parameters (``conv.bias`` first): the dense run's optimizer listed it before. Each
        parameter group's saved ids are put back in the current order (both runs list a group in module
        order, which is checked), every state tensor's shape is checked against its parameter, and the
        pruned entries' state (momentum, Adam moments) is zeroed so that the pruned entries of the trainable
        tensors stay exactly zero.
        """
        saved_states = checkpoint.get("optimizer_states") or []
        where = f"the dense checkpoint ckpt_path={trainer.ckpt_path!r}"
        advice = (
            "load its weights only (YourModule.load_from_checkpoint(path), then fit without ckpt_path), or "
            "resume it without this callback"
        )
        names_now = {id(p): _plain_name(n) for n, p in pl_module.named_parameters()}
        position_now = {id(p): i for i, (_, p) in enumerate(pl_module.named_parameters())}
        dense_position = {key: i for i, key in enumerate(checkpoint.get("state_dict") or {})}
        masks = {n: _mask_module(pl_module, n).mask for n in self._names}
        for optimizer, saved in zip(trainer.optimizers, saved_states):
            for group, saved_group in zip(optimizer.param_groups, saved.get("param_groups", [])):
                params, saved_ids = group["params"], list(saved_group["params"])
                if len(params) != len(saved_ids):
                    return  # another optimizer layout: torch's load_state_dict reports it
                names = [names_now.get(id(p)) for p in params]
                if any(n not in dense_position for n in names):
                    raise ValueError(
                        f"cannot match the optimizer state of {where} to the pruned module: the optimizer "
                        f"holds parameters that are not in the checkpoint's state_dict; {advice}"
                    )
                dense_order = sorted(range(len(params)), key=lambda k: dense_position[names[k]])
                if dense_order != list(range(len(params))):
                    positions = [position_now[id(p)] for p in params]
                    if positions != sorted(positions):
                        raise ValueError(
                            f"cannot match the optimizer state of {where} to the pruned module: "
                            "configure_optimizers lists parameters out of module order, so the dense run's "
                            f"order cannot be recovered; {advice}"
                        )
                    reordered = [0] * len(params)
                    for rank, k in enumerate(dense_order):  # the dense run listed names[k] at this rank
                        reordered[k] = saved_ids[rank]
                    if "param_names" in saved_group:
                        by_id = dict(zip(saved_ids, saved_group["param_names"]))
                        saved_group["param_names"] = [by_id[i] for i in reordered]
                    saved_group["params"] = saved_ids = reordered
                for k, param in enumerate(params):
                    state = saved.get("state", {}).get(saved_ids[k], {})
                    mask = masks.get(names[k])
                    for key, value in state.items():
                        if not isinstance(value, Tensor) or value.dim() == 0:
                            continue
                        if value.shape != param.shape:
                            raise ValueError(
                                f"the optimizer state {key!r} of {names[k]} in {where} has shape "
                                f"{tuple(value.shape)}, the parameter {tuple(param.shape)}; {advice}"
                            )
                        if mask is not None:
                            state[key] = value * mask.to(value.device, value.dtype)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"masks": self._masks, "density": self.density, "method": self.scorer.name}

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

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        states = checkpoint.get("callbacks") or {}
        state = states.get(self.state_key, states.get(self._legacy_state_key))
        if not state or state.get("masks") is None:
            # A dense checkpoint (a fit without this callback): its weights are loaded by now, through the
            # plain-key pre-hook; at fit start they are pruned and optimizer state matched to the masks.
            self._masks = None
            self._dense_checkpoint = checkpoint

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get("state_dict")
        if not state:
            return
        checkpoint["state_dict"] = type(state)(_to_plain_keys(state, list(get_masks(pl_module))))

    # ---------------------------------------------------------------- fit end
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
        self._state_hook = pl_module.register_state_dict_post_hook(_PlainKeyWriter(names))
        if self.verbose:
            rank_zero_info(
                "ForesightPruningCallback: the main process receives the pruned weights as plain tensors "
                "(pruned entries zero, no masks); resume from a checkpoint to keep training with the masks"
            )


def _scoring_source(trainer: pl.Trainer, num_batches: int) -> tuple[Any, int | None, str]:
    """Where the scoring data comes from: ``(loader, how many batches or None for all, description)``.

    The datamodule's ``scoring_dataloader()``, all of it, when it has one; else the first ``num_batches``
    batches of the train dataloader. The diagnostics callback scores on the same data.
    """
    datamodule = trainer.datamodule
    if datamodule is not None and callable(getattr(datamodule, "scoring_dataloader", None)):
        return datamodule.scoring_dataloader(), None, f"{type(datamodule).__name__}.scoring_dataloader()"
    # The fit loop sets its dataloaders up after on_fit_start; ask its source directly (the datamodule's or
    # module's train_dataloader(), or the loaders given to fit) for a plain loader, without the
    # DistributedSampler.
    return (
        trainer.fit_loop._data_source.dataloader(),
        num_batches,
        f"the first {num_batches} batches of the train dataloader (the datamodule has no scoring_dataloader())",
    )


def _zero_pruned(module: nn.Module, names: Sequence[str]) -> None:
    # The pruned entries of the trainable tensors at zero: their gradients are zero, so SGD (momentum,
    # weight decay) and Adam leave them there, and a resumed run continues bit for bit.
    with torch.no_grad():
        for n in names:
            _original(module, n).mul_(_mask_module(module, n).mask)


def _permuted(t: Tensor, generator: torch.Generator) -> Tensor:
    perm = torch.randperm(t.numel(), generator=generator).to(t.device)
    return t.flatten()[perm].view_as(t)


def _advance(bar, done: int, total: int) -> None:
    bar.update(done - bar.n)


def _all_reduce_sum(scores: dict[str, Tensor]) -> dict[str, Tensor]:
    # In place, a bucket of layers per collective: one collective per layer would cost ResNet-50 161 of them
    # a round, one for all layers a second full-size copy of the scores (100 MB there).
    bucket: dict[str, Tensor] = {}
    size = 0
    for name, score in scores.items():
        bucket[name] = score
        size += score.numel()
        if size >= _BUCKET:
            _all_reduce_in_place(bucket)
            bucket, size = {}, 0
    if bucket:
        _all_reduce_in_place(bucket)
    return scores


# Values per all-reduce bucket (16 MiB of float32 scores); a larger layer goes in one bucket.
_BUCKET = 1 << 22


def _all_reduce_in_place(tensors: dict[str, Tensor]) -> None:
    only = next(iter(tensors.values()))
    if len(tensors) == 1 and only.is_contiguous():
        dist.all_reduce(only, op=dist.ReduceOp.SUM)
        return
    flat = flatten_named(tensors)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for t, summed in zip(tensors.values(), split_like(flat, tensors).values()):
        t.copy_(summed)


def _broadcast_masks(masks: dict[str, Tensor]) -> dict[str, Tensor]:
    flat = flatten_named(masks).to(torch.uint8)  # not every backend takes bool tensors
    dist.broadcast(flat, src=0)
    return {n: m.to(torch.bool) for n, m in split_like(flat, masks).items()}


def _check_same_batches(batches: Sequence) -> None:
    # Sharding needs the same list on every rank; a cheap fingerprint of the inputs catches shuffled loaders.
    prints = []
    for batch in batches:
        x = batch if isinstance(batch, Tensor) else batch[0]
        xd = x.detach().double()
        prints.append((tuple(x.shape), round(float(xd.sum()), 6), round(float((xd * xd).sum()), 6)))
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, prints)
    if any(g != gathered[0] for g in gathered):
        raise ValueError(
            "the scoring batches differ across ranks (a shuffled train dataloader?), so sharded scoring would "
            "mix different data: give the datamodule a deterministic scoring_dataloader(), seed the run "
            "(seed_everything), or set distributed_scoring='replicate'"
        )


def _effective_input(module: nn.Module, example: Tensor | None) -> Tensor | None:
    """The input for ``sparsity_report``'s effective counts, or None where they would not be exact."""
    if example is None or not example.is_floating_point():
        return None  # not scored here (restored masks, density 1, no scoring data), or token inputs
    return None if unmodelled_norms(module) else example

"""Checkpoints of a pruned fit under plain keys: the state-dict hooks, ``restore_masks``, dense resumes.

A parametrized tensor's state-dict keys are ``<module>.parametrizations.<attr>.original`` and
``<module>.parametrizations.<attr>.0.mask``. The callback writes checkpoints under the plain key
(``<module>.<attr>``, masked values) and keeps the masks in its own state, so a checkpoint loads strictly
into a fresh module without the callback; a pre-hook maps plain keys back onto a parametrized module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..pruning import apply_masks, get_masks, prunable_parameters
from ._masked import mask_module, split_name, zero_pruned

#: The callback's entry in ``checkpoint["callbacks"]`` starts so (its ``state_key``, the class name).
STATE_KEY_PREFIX = "ForesightPruningCallback"


def masked_keys(name: str) -> tuple[str, str]:
    """State-dict keys of a masked tensor: its trainable ``original`` and its mask buffer."""
    module_name, attr = split_name(name)
    base = f"{module_name}.parametrizations.{attr}" if module_name else f"parametrizations.{attr}"
    return f"{base}.original", f"{base}.0.mask"


def plain_name(name: str) -> str:
    """``net.conv.parametrizations.weight.original`` -> ``net.conv.weight``; other names unchanged."""
    if not name.endswith(".original"):
        return name
    container, _, attr = name[: -len(".original")].rpartition(".")
    if container != "parametrizations" and not container.endswith(".parametrizations"):
        return name
    owner = container[: -len("parametrizations")].rstrip(".")
    return f"{owner}.{attr}" if owner else attr


def to_plain_keys(state: dict, names: Sequence[str], prefix: str = "") -> dict:
    """``state`` with each masked tensor's ``original``/``mask`` pair replaced by its plain key and values.

    The plain entry takes the original's position, so the order is the module's own; the result loads
    strictly into the same module without parametrizations (or, through ``PlainKeyLoader``, with them).

    Example:
        >>> checkpoint["state_dict"] = to_plain_keys(checkpoint["state_dict"], list(get_masks(module)))
    """
    replace = {}
    for name in names:
        original_key, mask_key = (prefix + key for key in masked_keys(name))
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


class PlainKeyWriter:
    """``state_dict`` post-hook: the masked tensors under their plain keys (see ``to_plain_keys``).

    Example:
        >>> handle = module.register_state_dict_post_hook(PlainKeyWriter(list(get_masks(module))))
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def __call__(self, module, state_dict, prefix, local_metadata) -> None:
        rebuilt = to_plain_keys(state_dict, self.names, prefix)
        state_dict.clear()  # in place: the hook API keeps the caller's dict (and its _metadata)
        state_dict.update(rebuilt)


class PlainKeyLoader:
    """``load_state_dict`` pre-hook mapping plain keys (``conv.weight``) onto a parametrized module's keys.

    A checkpoint written by the callback holds plain keys; the module carries mask placeholders since
    ``setup``. The value goes to ``original``; a mask absent from the state dict keeps the module's
    current one (the callback fills the right one from its own state at fit start). Holds names only, so
    deep copies of the module (scoring copies) stay cheap.

    Example:
        >>> loader = PlainKeyLoader(); loader.names = list(get_masks(module))
        >>> module.register_load_state_dict_pre_hook(loader)
    """

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        for name in self.names:
            original_key, mask_key = masked_keys(name)
            plain = prefix + name
            if plain in state_dict and prefix + original_key not in state_dict:
                state_dict[prefix + original_key] = state_dict.pop(plain)
                if prefix + mask_key not in state_dict:
                    try:
                        state_dict[prefix + mask_key] = mask_module(module, name).mask.clone()
                    except (AttributeError, StopIteration, KeyError):
                        pass  # no mask on the module (made permanent): the strict load reports the key


def _checkpoint_state(checkpoint: dict[str, Any], where: str) -> dict[str, Any]:
    """The ForesightPruningCallback state (with masks) of a loaded Lightning checkpoint."""
    states = checkpoint.get("callbacks")
    states = states if isinstance(states, dict) else {}  # none at all: not written by a Trainer fit
    found = [
        state
        for key, state in states.items()
        if str(key).startswith(STATE_KEY_PREFIX) and isinstance(state, dict) and state.get("masks")
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
    zero_pruned(module, list(masks))
    return get_masks(module)


def match_dense_optimizer_states(
    optimizers: Sequence[torch.optim.Optimizer],
    module: nn.Module,
    names: Sequence[str],
    checkpoint: dict[str, Any],
    where: str,
) -> None:
    """Fit a dense checkpoint's optimizer state (in place) to the pruned ``module`` before it is restored.

    A parametrized weight leaves its module's own parameters for
    ``<module>.parametrizations.weight.original``, so in ``parameters()`` it now comes after the module's
    other direct parameters (``conv.bias`` first): the dense run's optimizer listed it before. Each
    parameter group's saved ids are put back in the current order (both runs list a group in module
    order, which is checked), every state tensor's shape is checked against its parameter, and the
    pruned entries' state (momentum, Adam moments) is zeroed so that the pruned entries of the trainable
    tensors stay exactly zero. ``names`` are the masked tensors, ``where`` names the checkpoint in errors.

    Example:
        >>> match_dense_optimizer_states(trainer.optimizers, module, names, checkpoint, "the checkpoint")
    """
    saved_states = checkpoint.get("optimizer_states") or []
    advice = (
        "load its weights only (YourModule.load_from_checkpoint(path), then fit without ckpt_path), or "
        "resume it without this callback"
    )
    names_now = {id(p): plain_name(n) for n, p in module.named_parameters()}
    position_now = {id(p): i for i, (_, p) in enumerate(module.named_parameters())}
    dense_position = {key: i for i, key in enumerate(checkpoint.get("state_dict") or {})}
    masks = {n: mask_module(module, n).mask for n in names}
    for optimizer, saved in zip(optimizers, saved_states):
        for group, saved_group in zip(optimizer.param_groups, saved.get("param_groups", [])):
            params, saved_ids = group["params"], list(saved_group["params"])
            if len(params) != len(saved_ids):
                return  # another optimizer layout: torch's load_state_dict reports it
            param_names = [names_now.get(id(p)) for p in params]
            if any(n not in dense_position for n in param_names):
                raise ValueError(
                    f"cannot match the optimizer state of {where} to the pruned module: the optimizer "
                    f"holds parameters that are not in the checkpoint's state_dict; {advice}"
                )
            dense_order = sorted(range(len(params)), key=lambda k: dense_position[param_names[k]])
            if dense_order != list(range(len(params))):
                positions = [position_now[id(p)] for p in params]
                if positions != sorted(positions):
                    raise ValueError(
                        f"cannot match the optimizer state of {where} to the pruned module: "
                        "configure_optimizers lists parameters out of module order, so the dense run's "
                        f"order cannot be recovered; {advice}"
                    )
                reordered = [0] * len(params)
                for rank, k in enumerate(dense_order):  # the dense run listed param_names[k] at this rank
                    reordered[k] = saved_ids[rank]
                if "param_names" in saved_group:
                    by_id = dict(zip(saved_ids, saved_group["param_names"]))
                    saved_group["param_names"] = [by_id[i] for i in reordered]
                saved_group["params"] = saved_ids = reordered
            for k, param in enumerate(params):
                state = saved.get("state", {}).get(saved_ids[k], {})
                mask = masks.get(param_names[k])
                for key, value in state.items():
                    if not isinstance(value, Tensor) or value.dim() == 0:
                        continue
                    if value.shape != param.shape:
                        raise ValueError(
                            f"the optimizer state {key!r} of {param_names[k]} in {where} has shape "
                            f"{tuple(value.shape)}, the parameter {tuple(param.shape)}; {advice}"
                        )
                    if mask is not None:
                        state[key] = value * mask.to(value.device, value.dtype)

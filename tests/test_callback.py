"""ForesightPruningCallback in real single-process Trainer fits on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callback_helpers import (
    CountingMagnitude,
    CountingPX,
    LitClassifier,
    ScoringDataModule,
    TensorDataModule,
    make_tensors,
    trainer_kwargs,
)
from helpers import run_two_ranks

import px_lightning
from px_lightning.callbacks import ForesightPruningCallback
from px_lightning.pruning import effective_masks, find_masks, get_masks


def _expected_kept(total: int, density: float) -> int:
    # The published threshold: prune the k = int((1 - d) * n) lowest scores, keep those strictly above.
    return total - int((1.0 - density) * total)


def _originals(module: LitClassifier) -> dict[str, torch.Tensor]:
    out = {}
    for name in get_masks(module):
        mod_name, _, attr = name.rpartition(".")
        out[name] = module.get_submodule(mod_name).parametrizations[attr].original.detach().clone()
    return out


def _effective(module: LitClassifier) -> dict[str, torch.Tensor]:
    out = {}
    for name in get_masks(module):
        mod_name, _, attr = name.rpartition(".")
        out[name] = getattr(module.get_submodule(mod_name), attr).detach().clone()
    return out


def test_importable_from_package_root():
    assert px_lightning.ForesightPruningCallback is ForesightPruningCallback


def test_fit_sgd_density_zero_weights_and_logged_densities(tmp_path):
    pl.seed_everything(0)
    module = LitClassifier(optimizer="sgd", weight_decay=5e-3)
    init = {n: p.detach().clone() for n, p in module.named_parameters()}
    scorer = CountingPX()
    callback = ForesightPruningCallback(method=scorer, density=0.2, rounds=3, num_batches=2)
    logger = TensorBoardLogger(str(tmp_path), name="tb", default_hp_metric=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=logger, max_steps=6), callbacks=[callback])
    trainer.fit(module, datamodule=TensorDataModule(make_tensors(64)))

    assert scorer.calls == 3 and scorer.batch_counts == [2, 2, 2]  # num_batches train batches, each round
    masks = get_masks(module)
    assert set(masks) == {"net.conv1.weight", "net.conv2.weight", "net.hidden.weight", "net.fc.weight"}
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert abs(kept - _expected_kept(total, 0.2)) <= 1
    assert callback.report["kept"] == kept

    # Pruned entries exactly zero, effective and trainable, after SGD with momentum and weight decay;
    # the kept entries trained.
    effective, originals = _effective(module), _originals(module)
    for name, mask in masks.items():
        assert bool((effective[name][~mask] == 0).all()), name
        assert bool((originals[name][~mask] == 0).all()), name
        start = init[name]
        assert not torch.equal(effective[name][mask], start[mask]), f"{name} did not train"

    # Densities in the TensorBoard event file, as the masks give them.
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "pruning/density" in tags
    assert events.Scalars("pruning/density")[0].value == pytest.approx(kept / total, abs=1e-6)
    for name, mask in masks.items():
        values = events.Scalars(f"pruning/density/{name}")
        assert values[0].value == pytest.approx(float(mask.float().mean()), abs=1e-6)
    # The effective density: kept weights on an input-output path of the masked network, at most the density.
    effective_kept = sum(int(m.sum()) for m in effective_masks(module, make_tensors(2).tensors[0]).values())
    assert 0 < effective_kept <= kept and callback.report["effective"] == effective_kept
    logged = events.Scalars("pruning/effective_density")[0].value
    assert logged == pytest.approx(effective_kept / total, abs=1e-6)


def test_fit_adam_accumulation_clipping_bf16(tmp_path, capsys):
    pl.seed_everything(1)
    module = LitClassifier(optimizer="adam", lr=1e-2, weight_decay=1e-3)
    callback = ForesightPruningCallback(method="px", sparsity=0.9, rounds=2, num_batches=1, scope="local")
    trainer = pl.Trainer(
        **trainer_kwargs(
            tmp_path,
            max_steps=3,
            accumulate_grad_batches=2,
            gradient_clip_val=0.5,
            precision="bf16-mixed",
            enable_progress_bar=True,
        ),
        callbacks=[callback],
    )
    trainer.fit(module, datamodule=TensorDataModule(make_tensors(96)))
    masks = get_masks(module)
    for name, mask in masks.items():  # local scope: every layer to the density
        assert abs(int(mask.sum()) - _expected_kept(mask.numel(), 0.1)) <= 1, name
    effective, originals = _effective(module), _originals(module)
    for name, mask in masks.items():
        assert bool((effective[name][~mask] == 0).all()) and bool((originals[name][~mask] == 0).all())
    err = capsys.readouterr().err
    assert "Pruning (px)" in err  # the rounds' progress bar, shown since enable_progress_bar=True


class CountingGradScaler(torch.amp.GradScaler):
    """The real GradScaler, counting the losses it scaled and the optimizer steps it took."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scaled = 0
        self.steps = 0

    def scale(self, outputs):
        self.scaled += 1
        return super().scale(outputs)

    def step(self, optimizer, *args, **kwargs):
        self.steps += 1
        return super().step(optimizer, *args, **kwargs)


def test_fit_sgd_momentum_clipping_16_mixed_with_a_cpu_grad_scaler(tmp_path):
    # precision="16-mixed" alone falls back to bf16 on the CPU; an explicit plugin runs float16 autocast with
    # a GradScaler there.
    from lightning.pytorch.plugins import MixedPrecision

    pl.seed_everything(9)
    module = LitClassifier(optimizer="sgd", weight_decay=5e-3)
    dtypes = []
    module.net.hidden.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    scaler = CountingGradScaler("cpu", init_scale=2.0**8, growth_interval=1)
    callback = ForesightPruningCallback(method="px", density=0.2, rounds=2, num_batches=1, verbose=False)
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, max_steps=3, accumulate_grad_batches=2, gradient_clip_val=0.5),
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        callbacks=[callback],
    )
    trainer.fit(module, datamodule=TensorDataModule(make_tensors(96)))
    assert torch.float16 in dtypes  # the training forwards ran under float16 autocast
    # Six micro-batch losses scaled, three optimizer steps through the scaler, the scale doubled after each
    # (growth_interval=1, no inf/NaN gradient).
    assert (scaler.scaled, scaler.steps) == (6, 3)
    assert scaler.get_scale() == 2.0**11
    masks = get_masks(module)
    total = sum(m.numel() for m in masks.values())
    assert abs(sum(int(m.sum()) for m in masks.values()) - _expected_kept(total, 0.2)) <= 1
    effective, originals = _effective(module), _originals(module)
    for name, mask in masks.items():
        assert bool((effective[name][~mask] == 0).all()) and bool((originals[name][~mask] == 0).all()), name


def test_progress_bar_respects_enable_progress_bar_and_table_printed(tmp_path, capsys, caplog):
    pl.seed_everything(2)
    callback = ForesightPruningCallback(method="px", density=0.3, rounds=2, num_batches=1)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[callback])
    with caplog.at_level("INFO"):
        trainer.fit(LitClassifier(), datamodule=TensorDataModule(make_tensors(32)))
    assert "Pruning (px)" not in capsys.readouterr().err
    table = "\n".join(r.getMessage() for r in caplog.records)
    # The one table format of the library (px-lightning prints the same after test).
    assert "Per-layer density (masks)" in table and "net.hidden.weight" in table
    total = next(line for line in table.splitlines() if line.startswith("total"))
    assert float(total.split()[-1]) == pytest.approx(callback.report["density"], abs=1e-4)
    effective = callback.report["effective_density"]
    assert f"effective density {effective:.4f} ({callback.report['effective']} of the" in table


def test_scoring_dataloader_is_preferred(tmp_path):
    pl.seed_everything(3)
    scorer = CountingPX()
    callback = ForesightPruningCallback(method=scorer, density=0.5, rounds=2, num_batches=4)
    dm = ScoringDataModule(make_tensors(128), scoring=make_tensors(48, seed=7), batch_size=16)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[callback])
    trainer.fit(LitClassifier(), datamodule=dm)
    assert scorer.batch_counts == [3, 3]  # the 3 scoring batches, not num_batches=4 train batches


def _fit_and_save(tmp_path, max_steps, ckpt_in=None, scorer=None, seed=0):
    pl.seed_everything(seed)
    module = LitClassifier(optimizer="sgd", weight_decay=5e-3)
    scorer = scorer if scorer is not None else CountingPX()
    callback = ForesightPruningCallback(method=scorer, density=0.25, rounds=2, num_batches=2)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=max_steps), callbacks=[callback])
    trainer.fit(module, datamodule=TensorDataModule(make_tensors(64)), ckpt_path=ckpt_in)
    return module, trainer, scorer


def _momentum_by_name(module, trainer) -> dict[str, torch.Tensor]:
    state = trainer.optimizers[0].state
    return {n: state[p]["momentum_buffer"].clone() for n, p in module.named_parameters() if p in state}


def test_resume_restores_masks_and_optimizer_state_without_scoring(tmp_path):
    first, trainer, first_scorer = _fit_and_save(tmp_path / "a", max_steps=4)
    assert first_scorer.calls == 2
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)
    assert not any(".parametrizations." in k for k in state["state_dict"])  # plain keys, masked values
    assert "net.conv1.weight" in state["state_dict"]
    first_masks = get_masks(first)
    first_momentum = _momentum_by_name(first, trainer)
    assert len(first_momentum) == len(list(first.parameters()))

    # Restore only (max_steps already reached), into a module initialised differently: masks identical,
    # no scoring, every momentum buffer attached to the parameter of the same name.
    scorer = CountingPX()
    restored, restored_trainer, _ = _fit_and_save(tmp_path / "b", 4, ckpt_in=str(ckpt), scorer=scorer, seed=5)
    assert scorer.calls == 0
    restored_masks = get_masks(restored)
    assert set(restored_masks) == set(first_masks)
    assert all(torch.equal(first_masks[n], restored_masks[n]) for n in first_masks)
    for key, value in first.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key
    restored_momentum = _momentum_by_name(restored, restored_trainer)
    assert set(restored_momentum) == set(first_momentum)
    for name, buffer in first_momentum.items():
        assert torch.equal(buffer, restored_momentum[name]), name

    # Resume and train on: still no scoring, same masks, pruned entries still exactly zero.
    scorer = CountingPX()
    resumed, _, _ = _fit_and_save(tmp_path / "c", 8, ckpt_in=str(ckpt), scorer=scorer, seed=5)
    assert scorer.calls == 0
    effective, originals = _effective(resumed), _originals(resumed)
    for name, mask in get_masks(resumed).items():
        assert torch.equal(mask, first_masks[name])
        assert bool((effective[name][~mask] == 0).all()) and bool((originals[name][~mask] == 0).all())
        assert not torch.equal(effective[name], _effective(first)[name])  # it trained on


class _StepCounter(pl.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1


def _dense_checkpoint(tmp_path, module_cls=LitClassifier, max_steps=4):
    """A fit without the callback, its checkpoint, and the dense run's momentum buffers by name."""
    pl.seed_everything(0)
    dense = module_cls(optimizer="sgd", weight_decay=5e-3)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path / "dense", max_steps=max_steps))
    trainer.fit(dense, datamodule=TensorDataModule(make_tensors(64)))
    ckpt = tmp_path / "dense.ckpt"
    trainer.save_checkpoint(ckpt)
    return dense, ckpt, _momentum_by_name(dense, trainer)


def test_resume_from_a_dense_checkpoint_prunes_the_trained_weights(tmp_path, caplog):
    dense, ckpt, dense_momentum = _dense_checkpoint(tmp_path)
    # Magnitude pruning is data-free: the expected masks are those of the trained dense weights.
    expected = find_masks(dense, "magnitude", [], density=0.3)

    def resume(max_steps):
        pl.seed_everything(5)
        module, counter = LitClassifier(optimizer="sgd", weight_decay=5e-3), _StepCounter()
        callback = ForesightPruningCallback(method="magnitude", density=0.3)
        trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=max_steps), callbacks=[callback, counter])
        with caplog.at_level("INFO"):
            trainer.fit(module, datamodule=TensorDataModule(make_tensors(64)), ckpt_path=str(ckpt))
        return module, trainer, counter

    # Restore only (max_steps already reached): pruned on the restored weights, every momentum buffer on the
    # parameter of its name (the masked weights now come after their module's bias), zero where pruned.
    restored, trainer, counter = resume(max_steps=4)
    assert counter.batches == 0 and trainer.global_step == 4
    masks = get_masks(restored)
    assert set(masks) == set(expected) and all(torch.equal(masks[n], expected[n]) for n in expected)
    assert (
        "dense.ckpt has no pruning masks" in caplog.text
        and "pruning its trained weights (step 4)" in caplog.text
    )
    momentum = _momentum_by_name(restored, trainer)
    assert len(momentum) == len(dense_momentum)
    for name, buffer in momentum.items():
        plain = name.replace("parametrizations.weight.original", "weight")
        want = dense_momentum[plain] * masks[plain] if plain in masks else dense_momentum[plain]
        assert torch.equal(buffer, want), name
    effective = _effective(restored)
    dense_state = dense.state_dict()
    for name, mask in masks.items():
        assert torch.equal(effective[name], dense_state[name] * mask), name

    # Train on from step 4: two more steps, the pruned entries exactly zero (effective and trainable).
    resumed, trainer, counter = resume(max_steps=6)
    assert counter.batches == 2 and trainer.global_step == 6
    effective, originals = _effective(resumed), _originals(resumed)
    for name, mask in get_masks(resumed).items():
        assert torch.equal(mask, expected[name])
        assert bool((effective[name][~mask] == 0).all()) and bool((originals[name][~mask] == 0).all())
        assert not torch.equal(effective[name], dense_state[name] * mask), f"{name} did not train on"


class _ReversedOptimizerOrder(LitClassifier):
    def configure_optimizers(self):
        return torch.optim.SGD(list(self.parameters())[::-1], lr=0.05, momentum=0.9)


def test_dense_checkpoint_with_an_unrecoverable_optimizer_order_is_refused(tmp_path):
    _, ckpt, _ = _dense_checkpoint(tmp_path, module_cls=_ReversedOptimizerOrder, max_steps=1)
    callback = ForesightPruningCallback(method="magnitude", density=0.3)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=2), callbacks=[callback])
    with pytest.raises(ValueError, match=r"ckpt_path='.*dense\.ckpt'.*out of module order"):
        trainer.fit(
            _ReversedOptimizerOrder(), datamodule=TensorDataModule(make_tensors(64)), ckpt_path=str(ckpt)
        )


def test_load_from_checkpoint_predicts_like_the_saving_module(tmp_path):
    module, trainer, _ = _fit_and_save(tmp_path, max_steps=4)
    ckpt = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(ckpt)
    fresh = LitClassifier.load_from_checkpoint(ckpt)  # no callback, no masks: plain keys, strict load
    assert not get_masks(fresh)
    x = make_tensors(16, seed=11).tensors[0]
    module.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(module(x), fresh(x))
    for name, mask in get_masks(module).items():
        mod_name, _, attr = name.rpartition(".")
        assert bool((getattr(fresh.get_submodule(mod_name), attr)[~mask] == 0).all())
    # The plain-key checkpoint also loads strictly back into the parametrized module (the callback's
    # load_state_dict pre-hook), e.g. for trainer.test(ckpt_path=...) after the fit.
    masks_before = get_masks(module)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    module.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"], strict=True)
    with torch.no_grad():
        assert torch.equal(module(x), fresh(x))
    assert all(torch.equal(masks_before[n], m) for n, m in get_masks(module).items())


def test_make_permanent_and_reshuffle(tmp_path):
    def run(**kwargs):
        pl.seed_everything(4)
        module = LitClassifier()
        callback = ForesightPruningCallback(method="magnitude", density=0.3, scope="local", **kwargs)
        trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=2), callbacks=[callback])
        trainer.fit(module, datamodule=TensorDataModule(make_tensors(32)))
        return module, callback

    plain, _plain_cb = run()
    shuffled, _shuffled_cb = run(reshuffle=True)
    permanent, permanent_cb = run(make_permanent=True)
    assert not get_masks(permanent)
    assert not any(".parametrizations." in k for k in permanent.state_dict())
    for name, mask in permanent_cb._masks.items():
        mod_name, _, attr = name.rpartition(".")
        assert bool((getattr(permanent.get_submodule(mod_name), attr)[~mask] == 0).all())
    plain_masks, shuffled_masks = get_masks(plain), get_masks(shuffled)
    for name in plain_masks:  # same per-layer counts, other positions
        assert int(plain_masks[name].sum()) == int(shuffled_masks[name].sum())
    assert any(not torch.equal(plain_masks[n], shuffled_masks[n]) for n in plain_masks)


def test_reshuffle_keeps_weights_pruned_before_the_fit_pruned(tmp_path):
    # The callback's reshuffle is find_masks(..., reshuffle=True): the kept count of each layer moves among
    # the weights the search could keep, so masks already on the module before the fit stay in force.
    from px_lightning.pruning import apply_masks

    pl.seed_everything(5)
    module = LitClassifier()
    before = find_masks(module, "magnitude", density=0.6, scope="local")
    apply_masks(module, before)
    callback = ForesightPruningCallback(method="magnitude", density=0.3, scope="local", reshuffle=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=0), callbacks=[callback])
    trainer.fit(module, datamodule=TensorDataModule(make_tensors(16)))
    after = get_masks(module)
    assert set(after) == set(before)
    for name, mask in after.items():
        assert int(mask.sum()) == _expected_kept(mask.numel(), 0.3), name
        assert not bool((mask & ~before[name]).any()), name


def test_reinit_permutes_kept_weights(tmp_path):
    pl.seed_everything(6)
    module = LitClassifier()
    before = _effective_plain(module)
    callback = ForesightPruningCallback(method="magnitude", density=0.5, reinit=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=0), callbacks=[callback])
    trainer.fit(module, datamodule=TensorDataModule(make_tensors(16)))
    originals = _originals(module)
    for name, mask in get_masks(module).items():
        kept = originals[name][mask]
        # Kept weights re-drawn from the layer's own initial values (a permutation), in other positions.
        assert bool(torch.isin(kept, before[name].flatten()).all()), name
        assert not torch.equal(kept, before[name][mask]), name
        assert bool((originals[name][~mask] == 0).all())


def _effective_plain(module):
    return {
        f"{n}.weight": m.weight.detach().clone()
        for n, m in module.named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    }


# ---------------------------------------------------------------- wrong configurations
def test_both_density_and_sparsity_refused():
    # The message also says how to do it on the command line, where a config's value cannot be deleted.
    with pytest.raises(
        ValueError,
        match=r"exactly one of density .* or sparsity.*remove one.*--trainer\.callbacks\.init_args\.density=null",
    ):
        ForesightPruningCallback(method="px", density=0.1, sparsity=0.9)


def test_neither_density_nor_sparsity_refused():
    with pytest.raises(ValueError, match="needs density .* or sparsity"):
        ForesightPruningCallback(method="px")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "nope", "density": 0.1}, "unknown method 'nope'"),
        ({"density": 1.5}, "density must be in"),
        ({"sparsity": 1.0}, "sparsity must be in"),
        ({"density": 0.1, "rounds": 0}, "rounds must be"),
        ({"density": 0.1, "num_batches": 0}, "num_batches must be"),
        ({"density": 0.1, "scope": "layer"}, "scope must be"),
        ({"density": 0.1, "method": "px", "method_options": {"kernel_norm": "x"}}, "kernel_norm"),
    ],
)
def test_bad_arguments_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ForesightPruningCallback(**kwargs)


def test_datamodule_with_no_data_fails_at_fit_start(tmp_path):
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 3, 12, 12), torch.zeros(0, dtype=torch.long))
    callback = ForesightPruningCallback(method="px", density=0.1, rounds=2)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path), callbacks=[callback])
    with pytest.raises(ValueError, match="no scoring data: .*train dataloader.* yielded no batch"):
        trainer.fit(LitClassifier(), datamodule=TensorDataModule(empty))


def test_all_zero_scores_fail_at_fit_start(tmp_path):
    # No bias, no normalisation, all-zero inputs: every PX path carries zero, so every score is zero.
    callback = ForesightPruningCallback(method="px", density=0.1, rounds=2, num_batches=1)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path), callbacks=[callback])
    module = LitClassifier(norm=False, bias=False)
    with pytest.raises(
        RuntimeError, match="scores are all zero.*change method, method_options or the scoring"
    ):
        trainer.fit(module, datamodule=TensorDataModule(make_tensors(32, zeros=True)))


def test_built_from_a_lightningcli_style_yaml_config():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callback", type=ForesightPruningCallback)
    config = parser.parse_string(
        """
callback:
  class_path: px_lightning.callbacks.ForesightPruningCallback
  init_args:
    method: px
    sparsity: 0.98
    rounds: 100
    scope: local
    exclude: [net.fc]
    method_options: {kernel_norm: eval}
"""
    )
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    callback = instantiate(config).callback
    assert isinstance(callback, ForesightPruningCallback)
    assert callback.density == pytest.approx(0.02) and callback.rounds == 100 and callback.scope == "local"
    assert callback.exclude == ["net.fc"] and callback.scorer.kernel_norm == "eval"
    with pytest.raises(Exception, match=r'"scope"[\s\S]*Literal'):
        parser.parse_string(
            "callback:\n  class_path: px_lightning.callbacks.ForesightPruningCallback\n"
            "  init_args: {density: 0.1, scope: everywhere}\n"
        )


def test_fsdp_refused_with_a_clear_message():
    # FSDP needs a GPU to build a Trainer, so the refusal is checked on a real FSDPStrategy object alone.
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(
        TypeError, match="FSDPStrategy.*mask parametrizations cannot be carried.*strategy='ddp'"
    ):
        ForesightPruningCallback._check_strategy(SimpleNamespace(strategy=FSDPStrategy()))


def test_callback_reused_on_a_new_module_prunes_it_afresh(tmp_path):
    scorer = CountingPX()
    callback = ForesightPruningCallback(method=scorer, density=0.3, rounds=2, num_batches=1)
    pl.seed_everything(8)
    first, second = LitClassifier(), LitClassifier()
    for module in (first, first, second):  # the same module again: its masks kept, no rescoring
        trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[callback])
        trainer.fit(module, datamodule=TensorDataModule(make_tensors(16)))
    assert scorer.calls == 4  # two rounds for each of the two modules
    masks1, masks2 = get_masks(first), get_masks(second)
    assert any(not torch.equal(masks1[n], masks2[n]) for n in masks1)
    assert all(torch.equal(callback._masks[n], masks2[n]) for n in masks2)


@pytest.mark.parametrize(
    ("method", "mode", "shard"),
    [
        ("px", "auto", True),  # the default PX (cvpr2024): its gradient sums add over batches, exactly
        (CountingPX(), "auto", True),
        (CountingPX(bn_warmup=True), "auto", False),
        ("snip", "auto", False),
        ("grasp", "auto", False),
        ("magnitude", "auto", False),
        ("snip", "shard", True),
        ("px", "replicate", False),
    ],
)
def test_distributed_scoring_auto_shards_only_px(method, mode, shard):
    # Sharded SNIP/GraSP scores are not the one-process scores (normalised / non-additive per call).
    callback = ForesightPruningCallback(method=method, density=0.1, distributed_scoring=mode)
    assert callback.shard_scoring is shard


class _IgnoreIndexClassifier(LitClassifier):
    """A module whose loss ignores label 255, as a segmenter's does."""

    def __init__(self) -> None:
        super().__init__()
        self.loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self(x), y)


def test_loss_based_scorers_use_the_modules_loss_fn(tmp_path):
    # Labels 255 mark ignored examples: the default cross-entropy would fail on them while scoring.
    data = make_tensors(32)
    data.tensors[1][::3] = 255
    module = _IgnoreIndexClassifier()
    callback = ForesightPruningCallback(method="snip", density=0.3, verbose=False)
    pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_steps=1)).fit(
        module, datamodule=TensorDataModule(data)
    )
    assert abs(callback.report["density"] - 0.3) < 1e-3


def test_px_defaults_of_the_callback_and_the_published_override():
    # One PX everywhere: the callback adds no options; its PX is find_masks' default, the CVPR 2024 code.
    default = ForesightPruningCallback(method="px", density=0.1)
    assert default.method_options == {} and default.scorer.variant == "cvpr2024"
    authors = {"kernel_norm": "train", "head": "published", "bn_warmup": False, "layer_floor": 0}
    published = ForesightPruningCallback(method="PX", density=0.1, method_options=authors)
    scorer = published.scorer
    assert (scorer.kernel_norm, scorer.head, scorer.bn_warmup, scorer.layer_floor) == (
        "train",
        "published",
        False,
        0.0,
    )
    assert ForesightPruningCallback(method="snip", density=0.1).method_options == {}


def test_method_options_keyed_by_method_apply_to_the_chosen_method_only():
    # A config states PX's options and still switches method with one override (`method=snip`).
    options = {"px": {"head": "published", "layer_floor": 0.1}, "random": {"seed": 3}}
    px = ForesightPruningCallback(method="px", density=0.1, method_options=options)
    assert (px.scorer.head, px.scorer.layer_floor, px.scorer.bn_warmup) == ("published", 0.1, False)
    snip = ForesightPruningCallback(method="snip", density=0.1, method_options=options)
    assert snip.method_options == {} and snip.scorer.name == "snip"
    assert ForesightPruningCallback(method="random", density=0.1, method_options=options).scorer.seed == 3
    with pytest.raises(ValueError, match=r"method_options\['px'\] must be a mapping"):
        ForesightPruningCallback(method="px", density=0.1, method_options={"px": 0.2})
    # A flat dict is the chosen method's own: PX's options given to SNIP still fail, naming the scorer.
    with pytest.raises((TypeError, ValueError), match="(?i)snip"):
        ForesightPruningCallback(method="snip", density=0.1, method_options={"head": "body"})


def _px_fit(tmp_path, module, caplog, **options):
    callback = ForesightPruningCallback(method="px", density=0.3, rounds=2, num_batches=1, **options)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=0), callbacks=[callback])
    with caplog.at_level("INFO"):
        trainer.fit(module, datamodule=TensorDataModule(make_tensors(32)))
    return callback


@pytest.mark.parametrize("statistics", ["initial", "trained"])
def test_the_default_px_of_find_masks_and_of_the_callback_give_identical_masks(tmp_path, caplog, statistics):
    import copy

    batches = [next(iter(TensorDataModule(make_tensors(32)).train_dataloader()))]
    pl.seed_everything(12)
    module = LitClassifier()
    if statistics == "trained":  # running statistics away from 0/1, as a pre-trained backbone's
        module.train()
        with torch.no_grad():
            module(torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(1)) * 4 + 2)
    expected = find_masks(copy.deepcopy(module), "px", batches, density=0.3, rounds=2)
    callback = _px_fit(tmp_path, module, caplog)
    masks = get_masks(module)
    assert set(masks) == set(expected) and all(torch.equal(masks[n], expected[n]) for n in expected)
    assert callback.scorer.variant == "cvpr2024"


def test_px_options_set_by_the_user_are_used_as_given(tmp_path, caplog):
    pl.seed_everything(12)
    callback = _px_fit(tmp_path, LitClassifier(), caplog, method_options={"bn_warmup": True})
    assert callback.scorer.bn_warmup is True and callback.scorer.variant == "2025-eval"


def test_density_one_is_the_dense_baseline_without_scoring(tmp_path, caplog):
    pl.seed_everything(13)
    module, scorer = LitClassifier(), CountingPX()
    init = {n: p.detach().clone() for n, p in module.named_parameters()}
    callback = ForesightPruningCallback(method=scorer, density=1.0, rounds=5)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=2), callbacks=[callback])
    with caplog.at_level("INFO"):
        trainer.fit(module, datamodule=TensorDataModule(make_tensors(32)))
    assert scorer.calls == 0 and "density=1.0, the dense baseline: no scoring" in caplog.text
    masks = get_masks(module)
    assert masks and all(bool(m.all()) for m in masks.values())  # all-ones masks
    assert callback.report["density"] == 1.0
    effective = _effective(module)
    assert all(not torch.equal(effective[n], init[n]) for n in masks)  # every weight trained


def test_resume_with_another_method_or_density_warns_and_keeps_the_checkpoints_masks(tmp_path):
    first, trainer, _ = _fit_and_save(tmp_path / "a", max_steps=2)
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    pl.seed_everything(5)
    module, scorer = LitClassifier(), CountingMagnitude()
    callback = ForesightPruningCallback(method=scorer, density=0.5)
    resumed = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=2), callbacks=[callback])
    with pytest.warns(
        UserWarning,
        match=r"found with method 'px' \(this callback: 'magnitude'\) and density 0\.25 \(this callback: "
        r"0\.5\); resuming keeps the checkpoint's masks",
    ):
        resumed.fit(module, datamodule=TensorDataModule(make_tensors(64)), ckpt_path=str(ckpt))
    assert scorer.calls == 0
    first_masks, masks = get_masks(first), get_masks(module)
    assert all(torch.equal(first_masks[n], masks[n]) for n in first_masks)


def test_restore_masks_after_load_from_checkpoint_keeps_pruned_weights_zero(tmp_path):
    from px_lightning.callbacks import restore_masks

    saving, trainer, _ = _fit_and_save(tmp_path / "a", max_steps=2)
    ckpt = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(ckpt)
    saved_masks = get_masks(saving)

    def fine_tune(module):
        pl.Trainer(**trainer_kwargs(tmp_path / "ft", max_steps=3)).fit(
            module, datamodule=TensorDataModule(make_tensors(64, seed=3))
        )
        return {n: module.get_submodule(n.rpartition(".")[0]).weight.detach() for n in saved_masks}

    # Without the masks, fine-tuning lets the pruned weights grow back: the reason for restore_masks.
    plain = LitClassifier.load_from_checkpoint(ckpt)
    grown = fine_tune(plain)
    assert any(bool((grown[n][~m] != 0).any()) for n, m in saved_masks.items())

    loaded = LitClassifier.load_from_checkpoint(ckpt)
    restored = restore_masks(loaded, ckpt)
    masks = get_masks(loaded)
    assert set(masks) == set(saved_masks) == set(restored)
    assert all(torch.equal(masks[n], saved_masks[n]) for n in saved_masks)
    x = make_tensors(8, seed=11).tensors[0]
    saving.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(saving(x), loaded(x))
    weights = fine_tune(loaded)
    for name, mask in saved_masks.items():
        assert bool((weights[name][~mask] == 0).all()), name
        assert bool((_originals(loaded)[name][~mask] == 0).all()), name
    # The dict torch.load gives works too.
    again = LitClassifier.load_from_checkpoint(ckpt)
    restore_masks(again, torch.load(ckpt, weights_only=False))
    assert all(torch.equal(get_masks(again)[n], saved_masks[n]) for n in saved_masks)


def test_restore_masks_errors_name_the_checkpoint(tmp_path):
    from px_lightning.callbacks import restore_masks

    _, dense_ckpt, _ = _dense_checkpoint(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match=r"dense\.ckpt' holds no pruning masks.*load_from_checkpoint"):
        restore_masks(LitClassifier(), dense_ckpt)
    _, trainer, _ = _fit_and_save(tmp_path / "a", max_steps=1)
    ckpt = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"does not have or cannot mask: \['net\.conv1\.weight'"):
        restore_masks(LitClassifier().net, ckpt)  # the inner network: names lack the `net.` prefix


def test_a_single_string_include_or_exclude_is_one_pattern(tmp_path):
    # A str must not be read as a sequence of one-letter patterns: exclude="net.fc" keeps the classifier whole.
    module = LitClassifier()
    callback = ForesightPruningCallback(method="magnitude", density=0.2, exclude="net.fc")
    assert callback.exclude == ["net.fc"]
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[callback])
    trainer.fit(module, datamodule=TensorDataModule(make_tensors(16)))
    masks = get_masks(module)
    assert "net.fc.weight" not in masks and "net.hidden.weight" in masks
    assert ForesightPruningCallback(method="magnitude", density=0.2, include="net.conv1").include == [
        "net.conv1"
    ]


def test_method_options_mixing_the_flat_and_per_method_forms_is_refused():
    with pytest.raises(ValueError, match=r"mixes per-method keys \(px\) with options \(seed\): use one form"):
        ForesightPruningCallback(method="px", density=0.1, method_options={"px": {"head": "body"}, "seed": 0})


def test_score_all_reduce_in_buckets_sums_every_layer(tmp_path):
    # Two real gloo processes: small buckets mixing several layers, a large (and non-contiguous) layer
    # alone, a last partial bucket; every layer must come back as the sum over ranks, in its own shape.
    out = tmp_path / "summed.pt"
    run_two_ranks(Path(__file__).resolve().parent / "ddp_all_reduce_run.py", out)
    result = torch.load(out)
    assert list(result["summed"]) == list(result["base"])
    for name, base in result["base"].items():
        assert result["summed"][name].shape == base.shape, name
        torch.testing.assert_close(result["summed"][name], 3 * base, msg=name)

"""ForesightPruningCallback's constructor checks (the pruning layer's own), its scorers, its all-zero error."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callback_helpers import CountingPX, LitClassifier, TensorDataModule, make_tensors, trainer_kwargs
from helpers import run_two_ranks

from px_lightning.callbacks import ForesightPruningCallback
from px_lightning.pruning import ZeroScoresError, find_masks
from px_lightning.pruning import validation as checks
from px_lightning.pruning.scorers import MagnitudeScorer, get_scorer


@pytest.mark.parametrize(
    ("kwargs", "error", "check"),
    [
        ({"density": 0}, ValueError, lambda: checks.check_density(0)),
        ({"density": -0.1}, ValueError, lambda: checks.check_density(-0.1)),
        ({"density": 1.5}, ValueError, lambda: checks.check_density(1.5)),
        ({"density": "0.1"}, TypeError, lambda: checks.check_density("0.1")),
        ({"density": True}, TypeError, lambda: checks.check_density(True)),
        ({"sparsity": 1.0}, ValueError, lambda: checks.check_sparsity(1.0)),
        ({"sparsity": -0.5}, ValueError, lambda: checks.check_sparsity(-0.5)),
        ({"sparsity": None, "density": None}, ValueError, None),
        ({"density": 0.1, "rounds": 0}, ValueError, lambda: checks.check_rounds(0, allow_none=True)),
        ({"density": 0.1, "rounds": True}, TypeError, lambda: checks.check_rounds(True, allow_none=True)),
        ({"density": 0.1, "rounds": 2.5}, TypeError, lambda: checks.check_rounds(2.5, allow_none=True)),
        ({"density": 0.1, "scope": "layer"}, ValueError, lambda: checks.check_scope("layer")),
        ({"density": 0.1, "schedule": "cosine"}, ValueError, lambda: checks.check_schedule("cosine")),
        ({"density": 0.1, "num_batches": 0}, ValueError, lambda: checks.check_positive_int(0, "num_batches")),
        (
            {"density": 0.1, "num_batches": True},
            TypeError,
            lambda: checks.check_positive_int(True, "num_batches"),
        ),
    ],
)
def test_bad_values_are_refused_by_the_pruning_layers_checks(kwargs, error, check):
    # The constructor raises the shared check's exception with its exact words (argument, allowed, value).
    with pytest.raises(error) as raised:
        ForesightPruningCallback(**{"method": "magnitude", **kwargs})
    if check is None:
        assert "needs density" in str(raised.value)
        return
    with pytest.raises(error) as expected:
        check()
    assert str(raised.value) == str(expected.value)
    argument = next(
        k for k in ("rounds", "scope", "schedule", "num_batches", "sparsity", "density") if k in kwargs
    )
    assert str(raised.value).startswith(f"{argument} must be")
    assert repr(kwargs[argument]) in str(raised.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        (
            {"distributed_scoring": "all"},
            ValueError,
            "distributed_scoring must be 'auto', 'shard' or 'replicate'",
        ),
        ({"reinit": "yes"}, TypeError, "reinit must be True or False, got 'yes'"),
        ({"reshuffle": 1}, TypeError, "reshuffle must be True or False, got 1"),
        ({"make_permanent": None}, TypeError, "make_permanent must be True or False, got None"),
        ({"verbose": "no"}, TypeError, "verbose must be True or False"),
        ({"method_options": [("seed", 0)]}, TypeError, "method_options must be a mapping or None"),
        ({"include": 3}, TypeError, "include must be a list of name patterns"),
        ({"method": "random", "method_options": {"sede": 0}}, ValueError, "'sede' -> 'seed'"),
    ],
)
def test_the_callbacks_own_arguments_are_refused_naming_them(kwargs, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        ForesightPruningCallback(**{"method": "magnitude", "density": 0.1, **kwargs})


def test_sparsity_and_density_accepted_as_the_checks_return_them():
    assert ForesightPruningCallback(method="magnitude", sparsity=0).density == 1.0
    assert ForesightPruningCallback(method="magnitude", density=1).density == 1.0
    assert isinstance(ForesightPruningCallback(method="magnitude", density=1).density, float)


def _fit(tmp_path, callback, module, data=None) -> None:
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=0), callbacks=[callback])
    trainer.fit(module, datamodule=TensorDataModule(data if data is not None else make_tensors(32)))


def _options(scorer) -> dict:
    return {k: v for k, v in vars(scorer).items() if k not in ("calls", "batch_counts")}


def test_a_users_scorer_object_is_the_one_used_and_left_unchanged(tmp_path):
    scorer = CountingPX()  # a scorer object: used as it is
    before = _options(scorer)
    callback = ForesightPruningCallback(method=scorer, density=0.3, rounds=2, num_batches=1, verbose=False)
    pl.seed_everything(3)
    _fit(tmp_path, callback, LitClassifier())
    assert callback.scorer is scorer and scorer.calls == 2
    assert _options(scorer) == before


def test_px_scores_with_the_scorer_built_by_the_constructor_unchanged(tmp_path):
    callback = ForesightPruningCallback(method="px", density=0.3, rounds=2, num_batches=1, verbose=False)
    built = callback.scorer
    before = _options(built)
    assert callback.shard_scoring is True  # the default PX (cvpr2024) declares exact sharding
    pl.seed_everything(4)
    _fit(tmp_path, callback, LitClassifier())
    assert callback.scorer is built and _options(built) == before


def test_scorers_declare_whether_their_scoring_shards_exactly():
    assert get_scorer("px").shardable is True
    assert get_scorer("px", bn_warmup=True).shardable is False
    assert MagnitudeScorer().shardable is False and get_scorer("snip").shardable is False


def test_all_zero_scores_surface_as_zero_scores_error_naming_the_scoring_data(tmp_path):
    callback = ForesightPruningCallback(method="px", density=0.1, rounds=2, num_batches=1, verbose=False)
    with pytest.raises(ZeroScoresError) as raised:
        _fit(tmp_path, callback, LitClassifier(norm=False, bias=False), make_tensors(32, zeros=True))
    err = raised.value
    assert isinstance(err, RuntimeError) and err.method == "px"
    assert "px scores are all zero" in str(err)
    assert "the first 1 batches of the train dataloader" in str(err)
    assert isinstance(err.__cause__, ZeroScoresError)  # find_masks' own, kept as the cause


def test_find_masks_raises_zero_scores_error_that_pickles():
    model = LitClassifier(norm=False, bias=False)
    batches = [(torch.zeros(4, 3, 12, 12), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ZeroScoresError) as raised:
        find_masks(model, "px", batches, density=0.1, rounds=1)
    copy = pickle.loads(pickle.dumps(raised.value))
    assert (str(copy), copy.method) == (str(raised.value), "px")


def test_masks_broadcast_and_the_same_batches_check_across_two_processes(tmp_path):
    # Two real gloo processes through a DDPStrategy's collectives: rank 0's masks arrive everywhere, and
    # different scoring batches are refused on both ranks (neither goes on to score alone).
    out = tmp_path / "agree.pt"
    run_two_ranks(Path(__file__).resolve().parent / "ddp_all_reduce_run.py", out, "agree")
    results = [torch.load(f"{out}.rank{rank}") for rank in (0, 1)]
    assert any(not torch.equal(results[0]["masks"][n], results[1]["masks"][n]) for n in results[0]["masks"])
    for result in results:
        for name, mask in results[0]["masks"].items():
            assert result["received"][name].dtype == torch.bool
            assert torch.equal(result["received"][name], mask), name
        assert "the scoring batches differ across ranks" in result["refused"]

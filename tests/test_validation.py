"""Each argument is checked by the lowest public function that reads it, with a message naming it."""

import pytest
import torch

from px_lightning.pruning import density_schedule, find_masks, threshold_masks, validation


def _scores():
    return {"a.weight": torch.rand(4, 5), "b.weight": torch.rand(3)}


@pytest.mark.parametrize(
    "density, error",
    [(-0.1, ValueError), (0.0, ValueError), (1.5, ValueError), (float("nan"), ValueError)]
    + [(True, TypeError), ("0.1", TypeError), (None, TypeError)],
)
def test_threshold_masks_refuses_a_density_outside_0_1(density, error):
    with pytest.raises(error, match=r"density must be in \(0, 1\]"):
        threshold_masks(_scores(), density)


def test_threshold_masks_refuses_a_bad_scope_and_layer_floor():
    with pytest.raises(ValueError, match="scope must be 'global' or 'local', got 'layer'"):
        threshold_masks(_scores(), 0.5, "layer")
    with pytest.raises(ValueError, match="layer_floor must be in"):
        threshold_masks(_scores(), 0.5, layer_floor=1.5)


@pytest.mark.parametrize(
    "args, word, error",
    [((-0.5, 2), "density", ValueError), ((1.5, 2), "density", ValueError), ((0.5, 0), "rounds", ValueError)]
    + [((0.5, True), "rounds", TypeError)],
)
def test_density_schedule_refuses_bad_values(args, word, error):
    with pytest.raises(error, match=f"{word} must be"):
        density_schedule(*args)


def test_density_schedule_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="schedule must be 'exponential' or 'linear', got 'cosine'"):
        density_schedule(0.5, 2, "cosine")


def test_density_schedule_values():
    assert density_schedule(0.01, 2) == pytest.approx([0.1, 0.01])
    assert density_schedule(0.2, 4, "linear") == pytest.approx([0.8, 0.6, 0.4, 0.2])


@pytest.mark.parametrize(
    "rounds, error",
    [(True, TypeError), (0, ValueError), (-1, ValueError), (2.0, TypeError), ("3", TypeError)],
)
def test_find_masks_refuses_bad_rounds(rounds, error, tiny_mlp):
    with pytest.raises(error, match="rounds must be an integer >= 1"):
        find_masks(tiny_mlp, "magnitude", density=0.5, rounds=rounds)


def test_find_masks_takes_none_rounds_as_the_methods_default(tiny_mlp):
    masks = find_masks(tiny_mlp, "magnitude", density=0.5, rounds=None)
    assert sum(int(m.sum()) for m in masks.values()) == 48 - validation.pruned_count(48, 0.5)


def test_the_shared_checks():
    assert validation.check_density(1) == 1.0 and isinstance(validation.check_density(1), float)
    assert validation.check_sparsity(0.0) == 0.0
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        validation.check_sparsity(1.0)
    assert validation.check_rounds(None, allow_none=True) is None
    with pytest.raises(TypeError, match="rounds must be an integer >= 1, got None"):
        validation.check_rounds(None)
    with pytest.raises(ValueError, match="num_batches must be an integer >= 1, got 0"):
        validation.check_positive_int(0, "num_batches")
    assert validation.check_scope("local") == "local" and validation.check_schedule("linear") == "linear"


@pytest.mark.parametrize(
    "n, density, expected", [(10, 0.25, 7), (1000, 0.05, 950), (7, 1.0, 0), (3, 0.01, 2)]
)
def test_pruned_count_is_the_published_formula(n, density, expected):
    assert validation.pruned_count(n, density) == expected

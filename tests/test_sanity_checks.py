"""The literature's sanity checks in find_masks: reshuffle and invert keep each layer's kept count."""

import pytest
import torch

from px_lightning.pruning import apply_masks, compute_scores, find_masks


def _counts(masks):
    return {n: int(m.sum()) for n, m in masks.items()}


@pytest.mark.parametrize("method, rounds", [("magnitude", 1), ("synflow", 3), ("snip", 1)])
def test_reshuffle_keeps_each_layers_count_and_moves_the_weights(
    method, rounds, tiny_conv_linear, scoring_batches
):
    model, batches = tiny_conv_linear, scoring_batches
    plain = find_masks(model, method, batches, density=0.1, rounds=rounds)
    shuffled, again = (
        find_masks(
            model,
            method,
            batches,
            density=0.1,
            rounds=rounds,
            reshuffle=True,
            generator=torch.Generator().manual_seed(0),
        )
        for _ in range(2)
    )
    assert _counts(shuffled) == _counts(plain)
    assert all(torch.equal(shuffled[n], again[n]) for n in plain)  # seeded by the generator
    overlap = sum(int((shuffled[n] & plain[n]).sum()) for n in plain) / sum(_counts(plain).values())
    assert overlap < 0.5  # about the density by chance, far from 1


def test_invert_keeps_each_layers_lowest_scored_weights(tiny_conv_linear, scoring_batches):
    model, batches = tiny_conv_linear, scoring_batches
    plain = find_masks(model, "magnitude", batches, density=0.2)
    inverted = find_masks(model, "magnitude", batches, density=0.2, invert=True)
    assert _counts(inverted) == _counts(plain)
    for name, weight in (("0.weight", model[0].weight), ("3.weight", model[3].weight)):
        magnitude = weight.detach().abs()
        assert float(magnitude[inverted[name]].max()) <= float(magnitude[~inverted[name]].min())
        # The lowest k and the highest k of n weights share max(0, 2k - n) (no ties in random weights).
        k, n = int(plain[name].sum()), plain[name].numel()
        assert int((inverted[name] & plain[name]).sum()) == max(0, 2 * k - n)


def test_invert_ranks_by_the_first_rounds_scores_and_never_revives_a_pruned_weight(
    tiny_conv_linear, scoring_batches
):
    model, batches = tiny_conv_linear, scoring_batches
    start = find_masks(model, "magnitude", batches, density=0.5)
    apply_masks(model, start)
    scores = compute_scores(model, "synflow", batches)
    inverted = find_masks(model, "synflow", batches, density=0.1, rounds=2, invert=True)
    for name, mask in inverted.items():
        assert not bool((mask & ~start[name]).any())
        kept, dropped = scores[name][mask], scores[name][start[name] & ~mask]
        assert float(kept.max()) <= float(dropped.min())


def test_sanity_options_are_checked(tiny_conv_linear):
    model = tiny_conv_linear
    with pytest.raises(ValueError, match="reshuffle and invert"):
        find_masks(model, "magnitude", density=0.5, reshuffle=True, invert=True)
    with pytest.raises(TypeError, match="invert must be True or False, got 1"):
        find_masks(model, "magnitude", density=0.5, invert=1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        find_masks(model, "magnitude", density=0.5, reshuffle=True, generator=0)

"""N:M masks: the pattern in every eligible tensor, the global budget, pruned weights, parsing."""

import pytest
import torch
import torchvision
from torch import nn

from px_lightning.pruning import apply_masks, compute_scores, threshold_masks
from px_lightning.pruning.nm import (
    nm_allowed,
    nm_eligible,
    nm_masks,
    parse_pattern,
    satisfies_nm,
    semi_structured_linears,
)


def reference_nm(scores, density, n, m):
    """The test's own N:M selection: per group the n best by a full sort, then the published global
    threshold (k-th smallest of everything, k = int((1 - d) * total), strictly above) over the allowed."""
    ranked = []
    for s in scores.values():
        if s.dim() >= 2 and s.shape[1] % m == 0:
            g = s.permute(0, *range(2, s.dim()), 1).reshape(-1, m)
            order = g.argsort(dim=1, descending=True, stable=True)
            allowed = torch.zeros_like(g, dtype=torch.bool)
            allowed.scatter_(1, order[:, :n], True)
            moved = s.permute(0, *range(2, s.dim()), 1).shape
            allowed = allowed.reshape(moved).permute(0, s.dim() - 1, *range(1, s.dim() - 1))
            ranked.append(torch.where(allowed, s, torch.tensor(float("-inf"))))
        else:
            ranked.append(s)
    flat = torch.cat([r.flatten() for r in ranked])
    k = int((1 - density) * flat.numel())
    threshold = torch.kthvalue(flat, k).values
    return {name: r > threshold for name, r in zip(scores, ranked, strict=True)}


@pytest.fixture(scope="module")
def resnet18_scores():
    torch.manual_seed(0)
    return compute_scores(torchvision.models.resnet18(weights=None), "magnitude")


@pytest.mark.parametrize("density", [0.05, 0.3])
def test_2_4_masks_hold_the_pattern_in_every_eligible_layer_and_the_global_density(resnet18_scores, density):
    result = nm_masks(resnet18_scores, density, "2:4")
    assert result.unconstrained == ["conv1.weight"]  # 3 input channels
    assert set(result.constrained) == set(resnet18_scores) - {"conv1.weight"}
    for name in result.constrained:
        groups = result.masks[name].movedim(1, -1).reshape(-1, 4)
        assert int(groups.sum(1).max()) <= 2, name
        assert satisfies_nm(result.masks[name], "2:4")
    kept = sum(int(mask.sum()) for mask in result.masks.values())
    total = sum(mask.numel() for mask in result.masks.values())
    budget = total - int((1 - density) * total)  # what threshold_masks keeps without a pattern
    assert budget - 2 <= kept <= budget  # the budget is used, ties aside
    reference = reference_nm(resnet18_scores, density, 2, 4)
    assert all(torch.equal(result.masks[n], reference[n]) for n in reference)


def test_a_density_above_n_over_m_keeps_what_the_pattern_allows():
    scores = {"a.weight": torch.rand(8, 16), "b.weight": torch.rand(4, 8, 3, 3)}
    result = nm_masks(scores, 0.9, "2:4")
    assert all(int(m.sum()) == m.numel() // 2 for m in result.masks.values())
    assert all(satisfies_nm(m, "2:4") for m in result.masks.values())


def test_pruned_weights_stay_pruned_and_rank_below_kept_ones_with_signed_scores():
    torch.manual_seed(0)
    scores = {"w": torch.randn(6, 8)}  # signed, as GraSP gives
    pruned = {"w": torch.rand(6, 8) < 0.7}
    result = nm_masks(scores, 0.2, "1:4", pruned=pruned)
    mask = result.masks["w"]
    assert not bool((mask & ~pruned["w"]).any())
    assert satisfies_nm(mask, "1:4")
    # Within a group the best kept weight is chosen even where a pruned one scores higher.
    expected = nm_allowed(scores["w"].masked_fill(~pruned["w"], float("-inf")), 1, 4) & pruned["w"]
    assert not bool((mask & ~expected).any())


def test_layers_whose_input_dimension_is_not_a_multiple_of_m_are_left_free_and_reported():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    scores = compute_scores(model, "magnitude")
    result = nm_masks(scores, 0.4, "2:4")
    assert result.constrained == ["2.weight"] and result.unconstrained == ["0.weight"]
    assert satisfies_nm(result.masks["2.weight"], "2:4")
    with pytest.raises(ValueError, match="no groups of 4"):
        satisfies_nm(result.masks["0.weight"], "2:4")
    assert not nm_eligible((8, 10), 4) and nm_eligible((8, 12), 4) and not nm_eligible((12,), 4)


def test_local_scope_and_dense_tensors():
    torch.manual_seed(0)
    scores = {"a": torch.rand(16, 32), "b": torch.rand(16, 32) * 10, "c": torch.rand(4, 8)}
    local = nm_masks(scores, 0.25, "2:4", scope="local")
    assert all(int(local.masks[n].sum()) == 128 for n in ("a", "b"))  # each keeps its own quarter
    result = nm_masks(scores, 0.5, "2:4", dense=["c"])
    assert bool(result.masks["c"].all()) and "c" in result.unconstrained
    kept = sum(int(m.sum()) for m in result.masks.values())
    total = sum(s.numel() for s in scores.values())
    assert kept <= total - int(0.5 * total)
    reference = threshold_masks({"a": scores["a"]}, 1.0)  # threshold_masks agrees on the dense case
    assert bool(reference["a"].all())


def test_grouping_is_along_input_channels_at_each_kernel_tap():
    scores = torch.zeros(1, 4, 1, 2)
    scores[0, :, 0, 0] = torch.tensor([1.0, 4.0, 3.0, 2.0])  # tap (0, 0): channels 1 and 2 win
    scores[0, :, 0, 1] = torch.tensor([9.0, 0.0, 0.0, 8.0])  # tap (0, 1): channels 0 and 3 win
    allowed = nm_allowed(scores, 2, 4)
    assert allowed[0, :, 0, 0].tolist() == [False, True, True, False]
    assert allowed[0, :, 0, 1].tolist() == [True, False, False, True]


@pytest.mark.parametrize("bad", ["2-4", "4:2", "0:4", "4:4", "a:b", ""])
def test_bad_patterns_raise_a_clear_error(bad):
    with pytest.raises(ValueError, match="pattern must be 'N:M'"):
        parse_pattern(bad)


def test_pattern_forms():
    assert (
        parse_pattern("2:4") == (2, 4)
        and parse_pattern(" 1 : 8 ") == (1, 8)
        and parse_pattern((2, 4)) == (2, 4)
    )
    with pytest.raises(TypeError, match="pattern must be 'N:M'"):
        parse_pattern(2)
    with pytest.raises(ValueError, match="density"):
        nm_masks({"w": torch.rand(4, 4)}, 1.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal")
def test_semi_structured_conversion_refuses_clearly_without_a_gpu():
    model = nn.Sequential(nn.Linear(64, 64))
    apply_masks(model, nm_masks(compute_scores(model, "magnitude"), 0.5, "2:4").masks)
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        semi_structured_linears(model)


def test_find_masks_with_a_pattern_holds_it_in_every_round_and_the_budget():
    import warnings as _warnings

    from torch import nn as _nn

    from px_lightning.pruning import find_masks, satisfies_nm

    torch.manual_seed(0)
    model = _nn.Sequential(
        _nn.Conv2d(3, 8, 3), _nn.ReLU(), _nn.Conv2d(8, 16, 3), _nn.Flatten(), _nn.Linear(16 * 4 * 4, 10)
    )
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))]
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        masks = find_masks(model, "synflow", batches, density=0.3, rounds=3, pattern="2:4")
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) <= total - int(0.7 * total)
    assert satisfies_nm(masks["2.weight"], "2:4") and satisfies_nm(masks["4.weight"], "2:4")
    # The first conv has 3 input channels: not a multiple of 4, so it is left free and named.
    assert any("0.weight" in str(w.message) and "unconstrained" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="needs a density below 1"):
        find_masks(model, "magnitude", density=1.0, pattern="2:4")

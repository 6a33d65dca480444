"""Tensors zero by construction (torchvision's ViT head) are scored as if at their layer's default init."""

import math

import pytest
import torch
from helpers import small_vit, unchanged
from torch import nn

from px_lightning.pruning import apply_masks, compute_scores, find_masks
from px_lightning.pruning.copies import plain_copy
from px_lightning.pruning.scorers.px import VARIANTS
from px_lightning.pruning.zero_init import (
    at_default_init,
    default_init,
    read_zero_tensors_at_default_init,
    zero_initialised,
)


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return small_vit()


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0, 1]))]


@pytest.mark.parametrize("variant", VARIANTS)
def test_vit_with_zero_head_gets_nonzero_px_scores_deterministically_and_model_untouched(variant):
    model = _vit()
    assert not model.heads.head.weight.any()  # the architecture zero-initialises it
    with unchanged(model):
        first = compute_scores(model, "px", _batches(), variant=variant)
        second = compute_scores(model, "px", _batches(), variant=variant)
    # Without the substitution every path runs through a zero head and every score is 0.
    assert all(bool(s.any()) for s in first.values()), [n for n, s in first.items() if not s.any()]
    for n in first:
        assert torch.equal(first[n], second[n]), n
    assert not model.heads.head.weight.any()


def test_default_init_matches_torch_default_bounds_and_is_deterministic():
    like = torch.empty(0)
    linear = default_init("fc.weight", (64, 400), like)
    bound = 1 / math.sqrt(400)  # what nn.Linear's reset_parameters draws within
    assert linear.abs().max() <= bound and linear.abs().max() > 0.99 * bound
    conv = default_init("conv.weight", (8, 3, 5, 5), like)
    assert conv.abs().max() <= 1 / math.sqrt(75) and conv.abs().max() > 0.9 / math.sqrt(75)
    packed = default_init("attn.in_proj_weight", (96, 32), like)
    xavier = math.sqrt(6 / (32 + 96))
    assert packed.abs().max() <= xavier and packed.abs().max() > 0.95 * xavier
    assert torch.equal(linear, default_init("fc.weight", (64, 400), like))
    assert not torch.equal(linear, default_init("other.weight", (64, 400), like))
    # float32 holds the rounding of the float64 draw, so precisions agree to round-off
    single = default_init("fc.weight", (64, 400), torch.empty(0, dtype=torch.float64))
    assert torch.equal(single.float(), linear)


def test_pruned_tensors_stay_zero_and_partly_pruned_zero_tensors_keep_pruned_entries_zero():
    weights = {"a.weight": torch.zeros(4, 3), "b.weight": torch.zeros(4, 3), "c.weight": torch.randn(4, 3)}
    masks = {
        "a.weight": torch.zeros(4, 3, dtype=torch.bool),  # every entry pruned: zero because of the masks
        "b.weight": torch.tensor([[True, False, True]] * 4),
        "c.weight": torch.ones(4, 3, dtype=torch.bool),
    }
    assert zero_initialised(weights, masks) == ["b.weight"]
    out = at_default_init(weights, masks)
    assert out["a.weight"] is weights["a.weight"] and out["c.weight"] is weights["c.weight"]
    assert not out["b.weight"][:, 1].any() and out["b.weight"][:, [0, 2]].all()
    assert not weights["b.weight"].any()  # the dict passed in is unchanged


def test_read_zero_tensors_writes_into_the_copy_only():
    model = _vit()
    net = plain_copy(model)
    names = ["heads.head.weight", "conv_proj.weight"]
    replaced = read_zero_tensors_at_default_init(net, names)
    assert list(replaced) == ["heads.head.weight"]
    assert torch.equal(net.heads.head.weight, replaced["heads.head.weight"]) and net.heads.head.weight.any()
    assert not model.heads.head.weight.any()
    assert torch.equal(net.conv_proj.weight, model.conv_proj.weight)


def test_pruned_head_entries_keep_scoring_zero_in_later_rounds():
    model = _vit()
    masks = find_masks(model, "px", _batches(), density=0.3, rounds=2, include=["heads", "encoder"])
    head = masks["heads.head.weight"]
    assert head.any() and not head.all()
    apply_masks(model, masks)
    scores = compute_scores(model, "px", _batches())
    assert not scores["heads.head.weight"][~head].any() and scores["heads.head.weight"][head].any()

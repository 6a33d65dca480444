"""nn.MultiheadAttention's input projections are prunable tensors like any linear layer's weight."""

import pytest
import torch
from helpers import MODERN_NETWORKS, assert_same, snapshot
from torch import nn

from px_lightning.pruning import apply_masks, find_masks, get_masks, prunable_parameters
from px_lightning.pruning.sparse_io import load_sparse, save_sparse
from px_lightning.pruning.targets import linear_maps, weight_attributes

METHODS = [("px", {}), ("px", {"variant": "2025-eval"}), ("snip", {}), ("grasp", {}), ("synflow", {})]
METHODS += [("ntksap", {"seed": 0}), ("magnitude", {}), ("random", {"seed": 0})]


def test_packed_and_separate_projections_are_found_with_their_biases():
    packed, separate = nn.MultiheadAttention(8, 2), nn.MultiheadAttention(8, 2, kdim=6, vdim=5, bias=False)
    assert weight_attributes(packed) == ("in_proj_weight",)
    assert weight_attributes(separate) == ("q_proj_weight", "k_proj_weight", "v_proj_weight")
    assert list(prunable_parameters(separate)) == [
        "q_proj_weight",
        "k_proj_weight",
        "v_proj_weight",
        "out_proj.weight",
    ]
    model = nn.Sequential(packed, separate)
    # The packed bias belongs to the three row blocks of in_proj_weight; out_proj is a Linear of its own.
    assert linear_maps(model) == [
        ("0", "0.in_proj_weight", "0.in_proj_bias"),
        ("0.out_proj", "0.out_proj.weight", "0.out_proj.bias"),
        ("1", "1.q_proj_weight", None),
        ("1", "1.k_proj_weight", None),
        ("1", "1.v_proj_weight", None),
        ("1.out_proj", "1.out_proj.weight", None),
    ]
    assert list(prunable_parameters(model, exclude=["*in_proj_weight"])) == [
        "0.out_proj.weight",
        *(f"1.{p}_proj_weight" for p in "qkv"),
        "1.out_proj.weight",
    ]


@pytest.mark.parametrize("method, options", METHODS, ids=lambda v: v if isinstance(v, str) else "")
def test_every_method_prunes_a_vit_s_input_projections(method, options):
    torch.manual_seed(0)
    model = MODERN_NETWORKS["vit"]()
    before = snapshot(model)
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9]))]
    masks = find_masks(model, method, batches, density=0.2, rounds=1, **options)
    assert_same(before, snapshot(model))
    projections = [n for n in masks if n.endswith("in_proj_weight")]
    assert len(projections) == sum(isinstance(m, nn.MultiheadAttention) for m in model.modules()) > 0
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == pytest.approx(0.2 * sum(m.numel() for m in masks.values()), abs=2)
    assert all(0 < masks[n].sum() < masks[n].numel() for n in projections[:1])  # scored, not all or nothing


def test_masked_projections_stay_zero_through_training_and_survive_a_sparse_file(tmp_path):
    torch.manual_seed(0)
    model = MODERN_NETWORKS["vit"]()
    masks = find_masks(model, "magnitude", density=0.3)
    apply_masks(model, masks)
    name = next(n for n in masks if n.endswith("in_proj_weight"))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimiser.zero_grad()
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        optimiser.step()
    attention = model.get_submodule(name.rpartition(".")[0])
    assert torch.all(attention.in_proj_weight[~masks[name]] == 0)
    save_sparse(model, tmp_path / "vit.pt")
    torch.manual_seed(1)
    fresh = load_sparse(tmp_path / "vit.pt", MODERN_NETWORKS["vit"]())
    assert torch.equal(get_masks(fresh)[name], masks[name])
    model.eval(), fresh.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fresh(x), model(x))

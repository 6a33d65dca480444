"""Every baseline through ``find_masks`` on one small network of each modern kind (issue 14).

Squeeze-excitation gates (MobileNetV3-Small), a LayerNorm CNN with stochastic depth (ConvNeXt-style), a
ViT with torchvision's zero-initialised head, a Swin transformer (window attention, stochastic depth),
and ShuffleNet-V2 (channel split and shuffle). Random weights, batches of 2 random 32x32 images, density
0.05 in 2 rounds, as a user pointing the library at their network would call it. Each call must give
masks of the asked density with no all-zero scores, and leave the caller's model exactly as it was.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from helpers import MODERN_NETWORKS, assert_same, small_convnext, small_vit, snapshot
from torch import nn

from px_lightning.pruning import ZeroScoresError, compute_scores, find_masks, prunable_parameters
from px_lightning.pruning.scorers import get_scorer

BASELINES = ["snip", "grasp", "synflow", "ntksap", "magnitude", "random"]
DENSITY = 0.05


NETWORKS = MODERN_NETWORKS


def batches():
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(2, 3, 32, 32, generator=generator), torch.tensor([1, 7]))]


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("method", BASELINES)
def test_baseline_prunes_a_modern_network_to_the_density_and_leaves_it_untouched(method, network):
    torch.manual_seed(0)
    model = NETWORKS[network]()
    model.train()  # as a user's model is after construction: dropout and stochastic depth live
    before = snapshot(model)
    options = {"seed": 0} if method in ("ntksap", "random") else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = find_masks(model, method, batches(), density=DENSITY, rounds=2, **options)
    assert_same(before, snapshot(model))
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(kept - DENSITY * total) <= max(2, 1e-3 * total), (kept, total)
    assert not any("tied at the threshold" in str(w.message) for w in caught)
    # One scoring pass on the fresh network: finite, and not all zero (the failures issue 14 reports).
    scores = compute_scores(model, method, batches(), **options)
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert any(bool(s.any()) for s in scores.values())
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_train_mode_scorers_do_not_drop_branches_at_random(method):
    # Stochastic depth is live in train() mode: with it on, two calls would see different networks.
    model = small_convnext()
    first = compute_scores(model, method, batches())
    second = compute_scores(model, method, batches())
    for name, s in first.items():
        assert torch.equal(s, second[name]), name


def test_zero_head_is_scored_at_its_default_init_by_every_weight_reading_baseline():
    model = small_vit()
    assert not model.heads.head.weight.any()
    for method in ["snip", "grasp", "synflow", "magnitude"]:
        scores = compute_scores(model, method, batches())
        assert scores["heads.head.weight"].any(), method
        assert scores["conv_proj.weight"].any(), method
    assert not model.heads.head.weight.any()  # the caller's head stays zero


def test_grasp_differentiates_twice_through_attention_and_hardsigmoid():
    # The fused SDPA kernel (ViT) and hardsigmoid (MobileNetV3's gates) have no second derivative in
    # torch; GraSP's scores need one. The substitutes compute the same functions.
    for build in (small_vit, NETWORKS["mobilenet_v3_small"]):
        scores = compute_scores(build(), "grasp", batches())
        assert any(bool(s.any()) for s in scores.values())
    x = torch.linspace(-5, 5, 101)
    assert torch.allclose(torch.nn.functional.relu6(x + 3) / 6, torch.nn.functional.hardsigmoid(x))


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_pruned_weights_score_zero_in_later_rounds(method):
    # A search scores the plain weights under its current masks. A pruned weight's mask gradient
    # dL/dw_eff * w is not zero; scored as such it outranked kept weights, was thresholded in and dropped
    # again, and a 2-round SNIP kept far fewer weights than asked (none at all on RegNet-Y-400MF).
    model = NETWORKS["mobilenet_v3_small"]()
    weights = {n: p.detach() for n, p in model.named_parameters() if n in prunable_parameters(model)}
    generator = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(w.shape, generator=generator) < 0.5 for n, w in weights.items()}
    scores = get_scorer(method).score(model, weights, masks, batches())
    for name, mask in masks.items():
        assert not scores[name][~mask].any(), name
    assert any(bool(s[masks[n]].any()) for n, s in scores.items())


def test_snip_with_no_sensitivity_raises_zero_scores_not_nan():
    # Every ReLU is dead (a large negative bias): the loss does not depend on any weight, every
    # sensitivity is 0. SNIP normalised 0/0 to NaN before; now the search reports all-zero scores.
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[1].bias.fill_(-1e6)
    data = [(torch.randn(2, 3, 2, 2), torch.tensor([0, 2]))]
    with pytest.raises(ZeroScoresError, match="snip scores are all zero"):
        find_masks(model, "snip", data, density=0.5, rounds=1)


def test_synflow_collapse_in_its_first_round_is_named_in_the_error():
    # SynFlow's conservation law gives every layer on the main path the same total score, so ShuffleNet's
    # large 1x1 conv5 has the lowest score per weight and is emptied in a 2-round search to density 0.05;
    # round 2 then sees no path at all. The error says so; more rounds avoid the collapse.
    model = torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=10)
    with pytest.raises(ZeroScoresError, match=r"round 2 of 2: the earlier rounds pruned conv5\.0\.weight"):
        find_masks(model, "synflow", batches(), density=DENSITY, rounds=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layer collapse of the side branches of the downsampling units
        masks = find_masks(model, "synflow", batches(), density=DENSITY, rounds=5)
    assert masks["conv5.0.weight"].any()


def _relu_net(activation: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), activation(), nn.Conv2d(8, 8, 3, padding=1),
        activation(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    )  # fmt: skip


def test_synflow_reads_relu6_as_relu():
    # The all-ones pass of absolute weights exceeds ReLU6's ceiling at once: read as published, every
    # gradient behind it is 0. Read as ReLU (below the ceiling it is one), the scores are the ReLU net's.
    clipped, plain = _relu_net(nn.ReLU6), _relu_net(nn.ReLU)
    plain.load_state_dict(clipped.state_dict())
    data = [(torch.randn(2, 3, 8, 8), torch.tensor([1, 7]))]
    scores, reference = compute_scores(clipped, "synflow", data), compute_scores(plain, "synflow", data)
    for name, ref in reference.items():
        assert ref.abs().max() > 0
        torch.testing.assert_close(scores[name], ref, rtol=1e-6, atol=0)


def test_synflow_prunes_mobilenet_v2_in_two_rounds():
    # Its ReLU6 ceilings emptied the first layers in round 1, so round 2 found every path cut.
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=10)
    masks = find_masks(model, "synflow", batches(), density=DENSITY, rounds=2)
    kept, total = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
    assert kept / total == pytest.approx(DENSITY, abs=1e-3)
    assert all(m.any() for m in masks.values())


def test_a_collapse_with_batches_of_two_suggests_more_images():
    # ResNet-34 at 32x32 ends on 1x1 maps: SNIP's train()-mode BatchNorm there normalises 2 values per
    # channel, so round 1 empties the last stage and round 2 raises; with 8 images it prunes.
    model = torchvision.models.resnet34(weights=None, num_classes=10)
    with pytest.raises(ZeroScoresError, match=r"more images per batch: with batches of 2, a BatchNorm"):
        find_masks(model, "snip", batches(), density=DENSITY, rounds=2)
    generator = torch.Generator().manual_seed(0)
    eight = [(torch.randn(8, 3, 32, 32, generator=generator), torch.arange(8))]
    masks = find_masks(model, "snip", eight, density=DENSITY, rounds=2)
    assert sum(int(m.sum()) for m in masks.values()) / sum(
        m.numel() for m in masks.values()
    ) == pytest.approx(DENSITY, abs=1e-3)

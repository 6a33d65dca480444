"""PX scores and iterative masks of the authors' published code (../shared/conformance) reproduced."""

import copy

import pytest
import torch
from helpers import TOLERANCE
from helpers import load_conformance as load

from px_lightning.pruning import Scorer, compute_scores, find_masks

FILES = ["px_small_cnn.pt", "px_published_small_cnn_nonorm.pt", "px_resnet20.pt"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", FILES)
def test_px_scores_match_published(name, dtype):
    fixture, model, batches = load(name, dtype)
    before = copy.deepcopy(model.state_dict())
    scores = compute_scores(model, "px", batches, kernel_norm=fixture["kernel_norm"])
    assert set(scores) == set(fixture["scores"])
    for param, ref in fixture["scores"].items():
        err = (scores[param].double() - ref).abs().max() / ref.abs().max()
        assert err <= TOLERANCE[dtype], (param, float(err))
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", FILES)
def test_px_iterative_masks_match_published_float64(name):
    fixture, model, batches = load(name, torch.float64)
    masks = find_masks(
        model,
        "px",
        batches,
        density=fixture["density"],
        rounds=fixture["rounds"],
        kernel_norm=fixture["kernel_norm"],
    )
    for param, ref in fixture["masks"].items():
        assert torch.equal(masks[param].cpu(), ref), param


def test_published_kernel_mode_is_degenerate_on_batchnorm():
    # float64 ResNet-20 (BatchNorm before global pooling): the published train-mode kernel gives scores
    # that are round-off next to the default mode's. This is why kernel_norm="eval" is the default.
    _, model, batches = load("px_resnet20.pt", torch.float64)
    well_posed = compute_scores(model, "px", batches, kernel_norm="eval")
    with pytest.warns(UserWarning, match="round-off"):
        published = compute_scores(model, "px", batches, kernel_norm="train")
    name = "blocks.0.conv1.weight"
    assert published[name].abs().max() < 1e-6 * well_posed[name].abs().max()


class ZeroScorer(Scorer):
    # What the published kernel mode gave on a GPU for a BatchNorm CNN: every score exactly zero.
    one_shot = False

    def score(self, model, weights, masks, batches, loss_fn=None):
        return {n: torch.zeros_like(w) for n, w in weights.items()}


def test_all_zero_scores_raise_naming_kernel_norm():
    _, model, batches = load("px_small_cnn.pt", torch.float64)
    with pytest.raises(RuntimeError, match="kernel_norm"):
        find_masks(model, ZeroScorer(), batches, density=0.1, rounds=2)

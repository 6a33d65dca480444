"""Scores of the authors' published code (../shared/conformance/baselines_small_cnn.pt) reproduced."""

import copy

import pytest
import torch
from helpers import CONFORMANCE, TOLERANCE, conformance_models

from px_lightning.pruning import compute_scores

FIXTURE = torch.load(CONFORMANCE / "baselines_small_cnn.pt", weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "method, key", [("synflow", "SynFlow"), ("magnitude", "Mag"), ("snip", "SNIP"), ("grasp", "GraSP")]
)
def test_baseline_scores_match_published(method, key, dtype):
    model = conformance_models.build(FIXTURE["model"])
    model.load_state_dict(FIXTURE["state_dict"])
    model.to(dtype).train()
    before = copy.deepcopy(model.state_dict())
    batches = [(x.to(dtype), y) for x, y in FIXTURE["batches"]]
    scores = compute_scores(model, method, batches)
    reference = FIXTURE["scores"][key]
    assert set(scores) == set(reference)
    for name, ref in reference.items():
        err = (scores[name].double() - ref).abs().max() / ref.abs().max()
        assert err <= TOLERANCE[dtype], (name, float(err))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k

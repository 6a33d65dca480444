import copy

import pytest
import torch
import torchvision
from helpers import mlp, unchanged
from torch import nn

from px_lightning.pruning import apply_masks, compute_scores, find_masks, get_masks, sparsity_report


@pytest.mark.parametrize("method", ["px", "snip", "synflow", "magnitude"])
def test_torchvision_resnet18_masked_scoring_leaves_model_untouched(method):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))]
    masks = find_masks(model, "px", batches, density=0.2, rounds=2)
    apply_masks(model, masks)
    model.train()
    with unchanged(model):
        scores = compute_scores(model, method, batches)
    # scoring sees the masked network: a pruned weight scores zero (SNIP/SynFlow/PX multiply by the mask)
    for name, mask in masks.items():
        assert torch.all(scores[name][~mask] == 0), name
    assert abs(sparsity_report(model)["density"] - 0.2) < 1e-4
    assert set(get_masks(model)) == set(masks)


def test_find_masks_continues_from_installed_masks_px():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    batches = [torch.randn(2, 3, 32, 32)]  # bare inputs are accepted
    first = find_masks(model, "px", batches, density=0.5, rounds=1)
    apply_masks(model, first)
    second = find_masks(model, "px", batches, density=0.1, rounds=2)
    for name in first:
        assert not torch.any(second[name] & ~first[name]), name


class AtenHardsigmoid(torch.nn.Module):
    """hardsigmoid called as the aten operator, which GraSP's rewrite of ``F.hardsigmoid`` does not see."""

    def forward(self, x):
        return torch.ops.aten.hardsigmoid(x)


def test_grasp_without_second_derivative_says_so():
    # torch has no double backward for aten::hardsigmoid (MobileNetV3's squeeze-excitation gate)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), AtenHardsigmoid(), torch.nn.Linear(8, 3))
    with pytest.raises(RuntimeError, match="GraSP needs second derivatives"):
        compute_scores(model, "grasp", [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))])


def test_grasp_differentiates_hardsigmoid_twice():
    # F.hardsigmoid (nn.Hardsigmoid) is differentiated twice as relu6(x + 3) / 6: finite, non-zero scores.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Hardsigmoid(), torch.nn.Linear(8, 3))
    scores = compute_scores(model, "grasp", [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))])
    assert all(torch.isfinite(s).all() and s.any() for s in scores.values())


class DictOutput(torch.nn.Module):
    """A model whose forward returns a dict, as torchvision segmentation models do."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"out": self.net(x)}


@pytest.mark.parametrize("method", ["px", "snip", "grasp", "synflow"])
def test_dict_outputs_score_like_tensor_outputs(method):
    torch.manual_seed(0)
    net = mlp(4, 8, 3)
    batches = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))]
    plain = compute_scores(net, method, batches)
    wrapped = compute_scores(DictOutput(net), method, batches)
    for name, score in plain.items():
        torch.testing.assert_close(wrapped[f"net.{name}"], score)


def test_synflow_deep_network_beyond_float32_range():
    # R = 1' prod|W| 1 is about 64**30 here, past float32's 3e38: the scores must still be finite and
    # rank the weights as the float64 model's do.
    torch.manual_seed(0)
    layers = [nn.Linear(64, 64) for _ in range(30)]
    for layer in layers:
        nn.init.normal_(layer.weight)  # |W| row sums about 51: R about 51**30
    deep = nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())])
    batches = [torch.randn(2, 64)]
    scores = compute_scores(deep, "synflow", batches)
    assert all(torch.isfinite(s).all() and s.max() > 0 for s in scores.values())
    masks32 = find_masks(deep, "synflow", batches, density=0.2, rounds=3)
    masks64 = find_masks(
        copy.deepcopy(deep).double(), "synflow", [batches[0].double()], density=0.2, rounds=3
    )
    assert all(torch.equal(masks32[n], masks64[n]) for n in masks32)

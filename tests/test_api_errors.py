"""Bad input to the pruning API raises a clear error naming the argument; the valid cases keep working."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from px_lightning.pruning import apply_masks, compute_scores, find_masks, get_masks, sparsity_report
from px_lightning.pruning.scorers import get_scorer
from px_lightning.pruning.targets import prunable_parameters


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class Wrapped(nn.Module):
    """The network held as ``self.model``, as a LightningModule holds it: names start with ``model.``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Net()

    def forward(self, x):
        return self.model(x)


def data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.tensor([0, 1, 0, 1]))]


# include / exclude


def test_exclude_pattern_matching_nothing_raises():
    with pytest.raises(ValueError, match=r"exclude pattern 'classifier' matches no prunable tensor"):
        prunable_parameters(Net(), exclude=["classifier"])


def test_exclude_without_the_module_prefix_names_the_full_name_it_probably_means():
    # Inside a LightningModule the classifier is "model.fc": "fc" alone would silently prune it.
    with pytest.raises(
        ValueError, match=r"exclude pattern 'fc'.*did you mean 'model\.fc'.*model\.fc\.weight"
    ):
        find_masks(Wrapped(), "magnitude", density=0.5, exclude=["fc"])
    with pytest.raises(ValueError, match=r"include pattern 'conv'.*'model\.conv'"):
        compute_scores(Wrapped(), "magnitude", include=["conv"])
    # A glob is suggested anchored the same way.
    with pytest.raises(ValueError, match=r"exclude pattern 'f\*'.*'model\.f\*'"):
        prunable_parameters(Wrapped(), exclude=["f*"])


def test_exclude_patterns_that_match_still_work():
    model = Wrapped()
    assert set(prunable_parameters(model, exclude=["model.fc"])) == {"model.conv.weight"}
    assert set(prunable_parameters(model, exclude=["*.fc.weight"])) == {"model.conv.weight"}
    masks = find_masks(model, "magnitude", density=0.5, exclude=["model.fc"])
    assert set(masks) == {"model.conv.weight"}
    # A pattern naming a real tensor that include already left out is not a typo.
    assert set(prunable_parameters(model, include=["model.conv"], exclude=["model.fc"])) == {
        "model.conv.weight"
    }


def test_a_str_include_or_exclude_is_one_pattern():
    model = Net()
    assert set(prunable_parameters(model, exclude="fc")) == {"conv.weight"}
    assert set(prunable_parameters(model, include="fc")) == {"fc.weight"}
    assert set(find_masks(model, "magnitude", density=0.5, exclude="fc")) == {"conv.weight"}
    # Still checked as a pattern, not character by character.
    with pytest.raises(ValueError, match=r"exclude pattern 'head' matches no prunable tensor"):
        prunable_parameters(model, exclude="head")


@pytest.mark.parametrize("argument", ["include", "exclude"])
def test_non_str_patterns_raise_type_error_naming_the_argument(argument):
    with pytest.raises(TypeError, match=f"{argument} must be a list of name patterns"):
        prunable_parameters(Net(), **{argument: 3})
    with pytest.raises(TypeError, match=f"{argument} must hold non-empty str name patterns"):
        prunable_parameters(Net(), **{argument: ["fc", nn.Linear]})
    with pytest.raises(TypeError, match=f"{argument} must hold non-empty str name patterns"):
        prunable_parameters(Net(), **{argument: [""]})


# masks


def test_float_scores_as_masks_raise_naming_the_tensor_and_install_nothing():
    model = Net()
    good = torch.ones(4, 3, 3, 3, dtype=torch.bool)
    with pytest.raises(
        ValueError, match=r"masks\['fc\.weight'\] is a torch\.float32 tensor with values other"
    ):
        apply_masks(model, {"conv.weight": good, "fc.weight": torch.rand(2, 4) * 0.9 + 0.05})
    # Checked before anything is installed: the valid conv mask did not go in either.
    assert not parametrize.is_parametrized(model) and get_masks(model) == {}


def test_nan_or_int_non_binary_masks_raise():
    with pytest.raises(ValueError, match=r"masks\['fc\.weight'\]"):
        apply_masks(Net(), {"fc.weight": torch.full((2, 4), float("nan"))})
    with pytest.raises(ValueError, match=r"masks\['fc\.weight'\] is a torch\.int64 tensor"):
        apply_masks(Net(), {"fc.weight": torch.full((2, 4), 2)})


def test_binary_float_and_int_masks_are_accepted():
    model = Net()
    keep = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    apply_masks(model, {"fc.weight": keep})
    assert torch.equal(get_masks(model)["fc.weight"], keep.bool())
    assert sparsity_report(model)["density"] == 0.5
    assert torch.equal(model.fc.weight[keep == 0], torch.zeros(4))
    # Updating the installed mask with an int 0/1 mask.
    apply_masks(model, {"fc.weight": (1 - keep).long()})
    assert torch.equal(get_masks(model)["fc.weight"], keep == 0)
    with pytest.raises(ValueError, match=r"masks\['fc\.weight'\]"):
        apply_masks(model, {"fc.weight": keep * 0.5})
    assert torch.equal(get_masks(model)["fc.weight"], keep == 0)  # unchanged by the refused update


def test_non_tensor_masks_and_bad_names_and_shapes_raise():
    with pytest.raises(TypeError, match=r"masks\['fc\.weight'\] must be a torch\.Tensor"):
        apply_masks(Net(), {"fc.weight": [[1, 0, 1, 0], [1, 1, 1, 1]]})
    with pytest.raises(TypeError, match="masks must be a dict"):
        apply_masks(Net(), [torch.ones(2, 4, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"mask for 'fc\.weight' has shape \(4, 2\)"):
        apply_masks(Net(), {"fc.weight": torch.ones(4, 2, dtype=torch.bool)})
    with pytest.raises(KeyError, match="head.weight"):
        apply_masks(Net(), {"head.weight": torch.ones(2, 4, dtype=torch.bool)})


def test_weight_mask_refuses_scores():
    from px_lightning.pruning import WeightMask

    with pytest.raises(ValueError, match="mask is a torch.float32 tensor"):
        WeightMask(torch.rand(3, 3) * 0.5 + 0.25)
    assert WeightMask(torch.tensor([1.0, 0.0])).mask.dtype == torch.bool


# method options


def test_unknown_option_of_a_method_without_options():
    with pytest.raises(
        ValueError, match=r"method 'magnitude' got unknown option 'foo'; magnitude takes no options"
    ):
        compute_scores(Net(), "magnitude", foo=1)


def test_option_typo_names_the_option_and_lists_the_accepted_ones():
    from px_lightning.pruning import PXScorer

    accepted = [p for p in inspect.signature(PXScorer.__init__).parameters if p != "self"]
    with pytest.raises(
        ValueError, match=r"'kernel_nrom'.*did you mean 'kernel_nrom' -> 'kernel_norm'"
    ) as info:
        find_masks(Net(), "PX", data(), density=0.5, rounds=1, kernel_nrom="eval")
    assert "method 'px'" in str(info.value)
    assert all(name in str(info.value) for name in accepted)
    # Also a TypeError, as Python's own unexpected-keyword error is.
    with pytest.raises(TypeError, match="bogus"):
        get_scorer("snip", bogus=1)


@pytest.mark.parametrize("method", ["random", "ntksap"])
@pytest.mark.parametrize("seed", ["a", 1.5, True, 2**70])
def test_bad_seed_raises_when_the_scorer_is_made(method, seed):
    with pytest.raises(ValueError, match=f"{method}: seed"):
        get_scorer(method, seed=seed)
    with pytest.raises(ValueError, match=f"{method}: seed"):
        compute_scores(Net(), method, data(), seed=seed)


def test_grasp_temperature_checked():
    with pytest.raises(ValueError, match="grasp: temperature must be a positive number"):
        get_scorer("grasp", temperature="a")
    with pytest.raises(ValueError, match="temperature"):
        get_scorer("grasp", temperature=0)


def test_valid_options_still_work():
    model = Net()
    a = compute_scores(model, "random", seed=3)
    b = compute_scores(model, "random", seed=3)
    c = compute_scores(model, "random", seed=4)
    assert all(torch.equal(a[n], b[n]) for n in a) and not torch.equal(a["fc.weight"], c["fc.weight"])
    assert get_scorer("px", kernel_norm="train").kernel_norm == "train"
    assert get_scorer("grasp", temperature=100).temperature == 100
    masks = find_masks(model, "ntksap", data(), density=0.5, rounds=2, seed=0, epsilon=0.02)
    assert set(masks) == {"conv.weight", "fc.weight"}


# exports


def test_scorer_classes_and_weight_mask_are_exported():
    import px_lightning.pruning.masks as masks_module
    from px_lightning import pruning
    from px_lightning.pruning import scorers

    names = ["Scorer", "PXScorer", "SNIPScorer", "GraSPScorer", "SynFlowScorer", "MagnitudeScorer"]
    names += ["RandomScorer", "NTKSAPScorer"]
    for name in names:
        assert getattr(pruning, name) is getattr(scorers, name) and name in pruning.__all__
    assert pruning.WeightMask is masks_module.WeightMask and "WeightMask" in pruning.__all__
    # Each method's class is reachable under the public name its method resolves to.
    for method, cls in scorers.SCORERS.items():
        assert isinstance(get_scorer(method), getattr(pruning, cls.__name__))


def test_a_custom_scorer_from_the_public_base_class():
    from px_lightning.pruning import Scorer, WeightMask

    class RowIndex(Scorer):
        name = "row_index"
        needs_data = False

        def score(self, model, weights, masks, batches, loss_fn=None):
            return {
                n: torch.arange(w.shape[0], dtype=w.dtype).view(-1, *[1] * (w.dim() - 1)).expand_as(w) + 1.0
                for n, w in weights.items()
            }

    model = Net()
    masks = find_masks(model, RowIndex(), density=0.5, scope="local")
    assert masks["fc.weight"].tolist() == [[False] * 4, [True] * 4]
    apply_masks(model, masks)
    assert any(isinstance(p, WeightMask) for p in model.fc.parametrizations["weight"])
    with pytest.raises(ValueError, match="given with a scorer object"):
        compute_scores(model, RowIndex(), seed=0)


def test_scores_that_overflow_float32_are_refused_with_the_float64_remedy():
    """Weights of 1e20 make a float32 loss and its gradients overflow; the same model in float64 scores."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.mul_(1e20)
        model[2].weight.mul_(1e20)
    batches = [(torch.ones(2, 4), torch.tensor([0, 1]))]
    with pytest.raises(ValueError, match=r"overflowed torch.float32: score a float64 copy"):
        compute_scores(model, "snip", batches)
    wide = copy.deepcopy(model).double()
    scores = compute_scores(wide, "snip", [(batches[0][0].double(), batches[0][1])])
    assert all(bool(torch.isfinite(s).all()) for s in scores.values())

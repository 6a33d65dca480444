"""The pruning API on torchvision and segmentation-models-pytorch networks, unchanged (weights=None).

Each model is pruned with PX and one other method; afterwards the caller's model must be exactly as it
was: state_dict (BatchNorm statistics included), requires_grad, train/eval mode of every module, .grad
and hooks. Inputs are tiny (batch 2, 32x32 or 64x64) so the file stays fast on a CPU.
"""

import warnings

import pytest
import segmentation_models_pytorch as smp
import torch
import torchvision
from helpers import unchanged

from px_lightning.pruning import find_masks, prunable_parameters


def classifier_batch():
    return [(torch.randn(2, 3, 32, 32), torch.tensor([1, 7]))]


def segmentation_batch():
    return [(torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64)))]


CASES = {
    "resnet50": (lambda: torchvision.models.resnet50(weights=None, num_classes=10), classifier_batch, "snip"),
    # SynFlow rather than SNIP here: the 25088x4096 classifier makes each method cost seconds on a CPU
    "vgg16_bn": (
        lambda: torchvision.models.vgg16_bn(weights=None, num_classes=10),
        classifier_batch,
        "synflow",
    ),
    "mobilenet_v3_small": (
        lambda: torchvision.models.mobilenet_v3_small(weights=None, num_classes=10),
        classifier_batch,
        "ntksap",
    ),
    "deeplabv3plus_resnet50": (
        lambda: smp.DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None, classes=3),
        segmentation_batch,
        "snip",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_find_masks_leaves_caller_model_unchanged(name):
    build, data, other = CASES[name]
    torch.manual_seed(0)
    model = build()
    batches = data()
    # A caller's state worth preserving: non-default BN statistics, mixed modes, a frozen tensor, a .grad,
    # a hook.
    with torch.no_grad():
        model.train()
        model(batches[0][0])  # moves every BatchNorm's running statistics off their defaults
    model.eval()
    first_conv = next(iter(prunable_parameters(model)))
    model.get_parameter(first_conv).requires_grad_(False)
    last = list(prunable_parameters(model))[-1]
    model.get_parameter(last).grad = torch.full_like(model.get_parameter(last), 0.5)
    list(model.modules())[1].train()
    model.register_forward_hook(lambda module, inputs, output: None)
    total = sum(model.get_parameter(n).numel() for n in prunable_parameters(model))
    for method in ("px", other):
        with unchanged(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # layer collapse at this density is not the point here
            options = {"seed": 0} if method == "ntksap" else {}
            masks = find_masks(model, method, batches, density=0.1, rounds=1, **options)
        assert set(masks) == set(prunable_parameters(model))
        kept = sum(int(m.sum()) for m in masks.values())
        assert abs(kept - 0.1 * total) <= 1, method


@pytest.mark.parametrize(
    "method, options",
    [
        ("snip", {}),
        ("grasp", {}),
        ("synflow", {}),
        ("ntksap", {"seed": 0}),
        ("px", {"variant": "2025-eval"}),
        ("px", {}),
    ],
    ids=["snip", "grasp", "synflow", "ntksap", "px-2025-eval", "px"],
)
def test_googlenet_auxiliary_heads_score_zero_and_do_not_break_scoring(method, options):
    """GoogLeNet's auxiliary heads run in train() mode only and are not part of the prediction: a scorer
    finds no gradient for them (scored 0, not an error), and PX's copies run one graph whatever their
    BatchNorm mode (its gates are replayed call by call)."""
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, num_classes=10, init_weights=False)
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([1, 7]))]
    with unchanged(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the auxiliary heads collapse: warned
        masks = find_masks(model, method, batches, density=0.05, rounds=2, **options)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == pytest.approx(0.05 * sum(m.numel() for m in masks.values()), abs=2)
    assert not any(bool(m.any()) for n, m in masks.items() if n.startswith("aux"))


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "ntksap", "px"])
def test_zero_initialised_residual_branches_are_scored_at_a_unit_scale(method):
    """zero_init_residual=True sets each residual branch's last BatchNorm scale to 0: every path through the
    branch has weight 0, and every scorer used to prune the branches whole (and keep less than asked).
    The scorers read such a scale at 1, on their copies only."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10, zero_init_residual=True)
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([1, 7]))]
    options = {"seed": 0} if method == "ntksap" else {}
    with unchanged(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masks = find_masks(model, method, batches, density=0.05, rounds=2, **options)
    assert not model.layer1[0].bn2.weight.any()  # the caller's model keeps its zero scales
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == pytest.approx(0.05 * sum(m.numel() for m in masks.values()), abs=2)
    branches = [n for n in masks if n.endswith(("conv1.weight", "conv2.weight")) and n.startswith("layer")]
    emptied = [n for n in branches if not masks[n].any()]
    assert len(emptied) <= 2, emptied

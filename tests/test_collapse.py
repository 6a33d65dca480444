"""Layer collapse is visible: a warning names every layer pruned entirely, and sparsity_report flags it.

On the CIFAR ResNet-20 of the conformance models, PX in its default mode (kernel_norm="eval") prunes
whole residual branches at low density. Measured for benchmarks/README.md with 100 rounds at density
0.018 on 100 Gaussian 32x32 images; the test uses a cheap configuration with the same outcome (two
rounds, density 0.005, four 8x8 images: the residual branches of blocks 3 to 8 go entirely).
"""

import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

from px_lightning.pruning import apply_masks, find_masks, sparsity_report

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "conformance"))
from models import build, kaiming_init


def collapse_warning(record) -> list[str]:
    messages = [str(w.message) for w in record if "layer collapse" in str(w.message)]
    assert len(messages) == 1, messages
    return re.split(r",\s*", messages[0].split(":", 1)[1].strip())


def check_visible(model, masks, record):
    collapsed = sorted(n for n, m in masks.items() if not bool(m.any()))
    assert collapsed, "expected at least one layer pruned entirely"
    assert sorted(collapse_warning(record)) == collapsed  # the warning names exactly those layers
    apply_masks(model, masks)
    report = sparsity_report(model)
    assert sorted(n for n, v in report["layers"].items() if v["collapsed"]) == collapsed
    for name in collapsed:
        assert report["layers"][name]["kept"] == 0
    return collapsed


def test_px_2025_eval_collapses_resnet20_residual_branches():
    # The 2025 code made well-posed, with its published options (the library default before cvpr2024).
    torch.manual_seed(0)
    model = kaiming_init(build("resnet20"))
    torch.manual_seed(1)
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))]
    with pytest.warns(UserWarning, match="layer collapse") as record:
        masks = find_masks(model, "px", batches, density=0.005, rounds=2, variant="2025-eval")
    collapsed = check_visible(model, masks, record)
    # what collapses is the residual branches (the shortcuts keep the signal path), the last ones first
    assert all(re.fullmatch(r"blocks\.\d\.conv[12]\.weight", n) for n in collapsed), collapsed
    assert {"blocks.8.conv1.weight", "blocks.8.conv2.weight"} <= set(collapsed)
    assert masks["fc.weight"].any() and masks["conv.weight"].any()


def test_constructed_collapse_with_magnitude():
    # A layer whose weights are all tiny goes first under magnitude pruning: a collapse by construction.
    torch.manual_seed(0)
    model = kaiming_init(build("resnet20"))
    with torch.no_grad():
        model.blocks[4].conv2.weight.mul_(1e-6)
    with pytest.warns(UserWarning, match="layer collapse") as record:
        masks = find_masks(model, "magnitude", density=0.9)
    assert check_visible(model, masks, record) == ["blocks.4.conv2.weight"]


def test_no_warning_without_collapse():
    torch.manual_seed(0)
    model = kaiming_init(build("resnet20"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks = find_masks(model, "magnitude", density=0.5)
    apply_masks(model, masks)
    assert not any(v["collapsed"] for v in sparsity_report(model)["layers"].values())

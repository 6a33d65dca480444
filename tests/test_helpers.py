"""The shared ``unchanged`` check fails on each kind of change scoring must not make."""

import pytest
import torch
from helpers import TinyNet, unchanged
from torch.nn.utils import parametrize


def _changes():
    def bn_statistics(m):
        m.train()
        with torch.no_grad():
            m(torch.randn(2, 3, 8, 8))

    def weight(m):
        with torch.no_grad():
            m.fc.weight[0, 0] += 1

    def replaced_parameter(m):
        m.fc.weight = torch.nn.Parameter(m.fc.weight.detach().clone())

    def grad(m):
        m.fc.weight.grad = torch.zeros_like(m.fc.weight)

    def mode(m):
        m.bn1.train()

    def requires_grad(m):
        m.conv1.weight.requires_grad_(False)

    def hook(m):
        m.fc.register_forward_hook(lambda *args: None)

    def parametrization(m):
        parametrize.register_parametrization(m.fc, "weight", torch.nn.Identity())

    return [bn_statistics, weight, replaced_parameter, grad, mode, requires_grad, hook, parametrization]


@pytest.mark.parametrize("change", _changes(), ids=lambda f: f.__name__)
def test_unchanged_fails_on_each_change(change):
    torch.manual_seed(0)
    model = TinyNet().eval()
    with pytest.raises(AssertionError), unchanged(model):
        change(model)


def test_unchanged_passes_on_a_read_only_forward():
    torch.manual_seed(0)
    model = TinyNet().eval()
    with unchanged(model), torch.no_grad():
        model(torch.randn(2, 3, 8, 8))

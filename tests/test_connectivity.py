"""effective_masks / sparsity_report(model, x): kept weights on an input-to-output path."""

import copy
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import mlp
from torch import nn
from torch.nn.utils import parametrize

from px_lightning.pruning import apply_masks, effective_masks, find_masks, get_masks, sparsity_report


def _reference(layers: list[torch.Tensor]) -> list[torch.Tensor]:
    """Effective weights of an MLP chain from boolean reachability, layer by layer (masks (out, in))."""
    reached = [torch.ones(layers[0].shape[1], dtype=torch.bool)]  # units reached from the input
    for m in layers:
        reached.append((m & reached[-1]).any(1))
    reaches = [torch.ones(layers[-1].shape[0], dtype=torch.bool)]  # units that reach the output
    for m in reversed(layers):
        reaches.insert(0, (m & reaches[0][:, None]).any(0))
    return [m & reaches[i + 1][:, None] & reached[i][None, :] for i, m in enumerate(layers)]


def test_a_hand_made_case_with_biases_that_would_make_false_paths():
    # 2 -> 3 -> 1. Kept: in0->h0, in1->h1 (h1 reaches no output), h0->out, h2->out (h2 has no input; its
    # bias would feed it, which must not count).
    model = mlp(2, 3, 1)
    masks = {
        "0.weight": torch.tensor([[1, 0], [0, 1], [0, 0]], dtype=torch.bool),
        "2.weight": torch.tensor([[1, 0, 1]], dtype=torch.bool),
    }
    got = effective_masks(model, torch.zeros(4, 2), masks)
    assert got["0.weight"].tolist() == [[True, False], [False, False], [False, False]]
    assert got["2.weight"].tolist() == [[True, False, False]]


@pytest.mark.parametrize("seed", range(5))
def test_random_deep_chains_match_boolean_reachability(seed):
    torch.manual_seed(seed)
    sizes = [6, 9, 8, 9, 7, 3]
    model = nn.Sequential()
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        model.add_module(f"fc{i}", nn.Linear(a, b))
        model.add_module(f"act{i}", nn.ReLU() if i % 2 else nn.GELU())  # GELU(0) != 0: must not matter
    masks = {f"fc{i}.weight": torch.rand(b, a) < 0.25 for i, (a, b) in enumerate(itertools.pairwise(sizes))}
    got = effective_masks(model, torch.randn(2, sizes[0]), masks)
    expected = _reference(list(masks.values()))
    for (name, mask), ref in zip(masks.items(), expected):
        assert torch.equal(got[name], ref), name
    assert sum(int(m.sum()) for m in expected) > 0  # the cases are not trivially empty


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


def test_a_convolution_channel_cut_from_the_classifier_is_not_effective():
    torch.manual_seed(0)
    model = _ConvNet()
    with torch.no_grad():  # BatchNorm shifts that would feed every channel if they counted
        model.bn.bias.fill_(1.0)
        model.bn.running_mean.fill_(-3.0)
    conv = torch.zeros(4, 3, 3, 3, dtype=torch.bool)
    conv[0] = conv[1] = True  # channels 0 and 1 fed, 2 and 3 not
    fc = torch.zeros(2, 64, dtype=torch.bool)
    fc[:, 16:48] = True  # the classifier reads channels 1 and 2 (16 pooled positions each)
    got = effective_masks(model, torch.randn(1, 3, 8, 8), {"conv.weight": conv, "fc.weight": fc})
    assert got["conv.weight"][1].all() and not got["conv.weight"][0].any()
    assert got["fc.weight"][:, 16:32].all() and not got["fc.weight"][:, 32:48].any()


def test_installed_masks_are_read_and_the_model_is_left_unchanged():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    masks = find_masks(model, "random", density=0.3, seed=0)
    apply_masks(model, masks)
    before = copy.deepcopy(model.state_dict())
    installed = effective_masks(model, x)
    assert all(torch.equal(installed[n], m) for n, m in effective_masks(model, x, masks).items())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert parametrize.is_parametrized(model.conv1) and isinstance(model.maxpool, nn.MaxPool2d)
    kept = sum(int(m.sum()) for m in masks.values())
    effective = sum(int(m.sum()) for m in installed.values())
    assert 0.5 * kept < effective <= kept
    # At 32x32 the last stage runs on 1x1 maps, where a 3x3 convolution reads only its centre tap (the
    # others see padding): 8/9 of its weights lie on no path.
    small = effective_masks(model, torch.randn(2, 3, 32, 32))["layer4.1.conv2.weight"]
    centre = torch.zeros(3, 3, dtype=torch.bool)
    centre[1, 1] = True
    assert small[:, :, 1, 1].any() and not (small & ~centre).any()
    # Cutting the first convolution disconnects every weight from the input.
    cut = {**masks, "conv1.weight": torch.zeros_like(masks["conv1.weight"])}
    assert not any(m.any() for m in effective_masks(model, x, cut).values())


class _SEBlock(nn.Module):
    """conv -> x * sigmoid(fc2(relu(fc1(mean(x))))) -> linear: a squeeze-excitation gate in the main path,
    and an auxiliary head the output does not use (as GoogLeNet's in eval())."""

    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc1, self.fc2, self.gate = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 4, 1), gate
        self.head, self.aux = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        x = self.conv(x)
        x = x * self.gate(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("gate", [nn.Sigmoid(), nn.Hardsigmoid(inplace=True)], ids=["sigmoid", "hardsigmoid"])
def test_a_pruned_squeeze_excitation_gate_does_not_cut_what_it_scales(gate):
    torch.manual_seed(0)
    model = _SEBlock(gate)
    dense = {
        n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n.endswith("weight")
    }
    x = torch.randn(1, 3, 6, 6)
    got = effective_masks(model, x, dense)
    assert all(got[n].all() for n in ("conv.weight", "fc1.weight", "fc2.weight", "head.weight"))
    assert not got["aux.weight"].any()  # no gradient reaches it: nothing on a path
    # A sigmoid of a constant is a non-zero constant: the gated features still reach the output.
    cut = effective_masks(model, x, {**dense, "fc1.weight": torch.zeros(2, 4, 1, 1, dtype=torch.bool)})
    assert cut["conv.weight"].all() and cut["head.weight"].all()
    assert not cut["fc2.weight"].any()  # fed by nothing but fc1's bias


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True)

    def forward(self, x):
        tokens = self.embed(x)
        return self.attn(tokens, tokens, tokens, need_weights=False)[0]


def test_attention_biases_make_no_paths():
    torch.manual_seed(0)
    model = _Attention()
    masks = find_masks(model, "random", density=1.0)
    assert "attn.in_proj_weight" in masks
    assert effective_masks(model, torch.randn(1, 5, 4), masks)["attn.in_proj_weight"][16:].all()  # values
    masks["embed.weight"] = torch.zeros(8, 4, dtype=torch.bool)  # the input reaches no token
    got = effective_masks(model, torch.randn(1, 5, 4), masks)
    assert not any(m.any() for m in got.values())  # in_proj_bias, bias_k, bias_v: constants, no path


def test_sparsity_report_counts_effective_weights():
    model = mlp(2, 3, 1)
    apply_masks(
        model,
        {
            "0.weight": torch.tensor([[1, 0], [0, 1], [0, 0]], dtype=torch.bool),
            "2.weight": torch.tensor([[1, 0, 1]], dtype=torch.bool),
        },
    )
    report = sparsity_report(model, torch.zeros(1, 2))
    assert report["layers"]["0.weight"]["effective"] == 1 and report["layers"]["2.weight"]["effective"] == 1
    assert report["effective"] == 2 and report["effective_density"] == pytest.approx(2 / 9)
    assert "effective" not in sparsity_report(model)


def test_bad_input_is_named():
    model = mlp(2, 3, 1)
    with pytest.raises(ValueError, match="no masks installed"):
        effective_masks(model, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="no masks installed"):
        sparsity_report(model, torch.zeros(1, 2))
    masks = {"0.weight": torch.ones(3, 2, dtype=torch.bool)}
    with pytest.raises(TypeError, match="example_input must be a floating-point tensor"):
        effective_masks(model, torch.zeros(1, 2, dtype=torch.long), masks)
    with pytest.raises(ValueError, match=r"does not have: \['1.weight'\]"):
        effective_masks(model, torch.zeros(1, 2), {"1.weight": torch.ones(3, 3, dtype=torch.bool)})
    no_stats = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, track_running_stats=False), nn.Linear(3, 1))
    with pytest.raises(ValueError, match="effective_masks needs BatchNorm running statistics, but '1' has"):
        effective_masks(no_stats, torch.zeros(1, 2), masks)
    assert get_masks(model) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on BatchNorm networks
        effective_masks(
            _ConvNet(), torch.zeros(1, 3, 8, 8), {"conv.weight": torch.ones(4, 3, 3, 3, dtype=torch.bool)}
        )


def test_the_callback_reports_effective_counts_where_it_has_a_float_input():
    from px_lightning.callbacks.foresight import _effective_input

    x = torch.zeros(1, 2)
    assert _effective_input(x) is x
    assert _effective_input(None) is None  # masks restored, not scored: no scoring input
    assert _effective_input(torch.zeros(1, 2, dtype=torch.long)) is None  # token inputs


@pytest.mark.parametrize(
    "norm",
    [nn.LayerNorm(4), nn.RMSNorm(4), nn.GroupNorm(2, 4), nn.InstanceNorm1d(4)],
    ids=["LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm"],
)
def test_a_normalisation_connects_every_unit_of_its_group(norm):
    """A normalisation subtracts its group's mean (or divides by its spread): each output depends on every
    unit of its group. One kept weight feeds channel 0; the output layer reads one unit after the norm."""
    if isinstance(norm, (nn.LayerNorm, nn.RMSNorm)):  # one group: the 4 features
        net = nn.Sequential(nn.Linear(2, 4), norm, nn.Linear(4, 1))
        x, unit = torch.zeros(1, 2), {0: 0, 1: 1, 2: 2}  # channel -> the read feature
        groups = [{0, 1, 2, 3}]
    else:  # (N, 4 channels, 3 positions); GroupNorm(2, 4): channels {0, 1} and {2, 3}; InstanceNorm: each
        net = nn.Sequential(nn.Unflatten(1, (2, 3)), nn.Conv1d(2, 4, 1), norm, nn.Flatten(), nn.Linear(12, 1))
        x, unit = torch.zeros(1, 6), {0: 1, 1: 4, 2: 7}  # channel c at position 1 is feature 3c + 1
        groups = [{0, 1}, {2, 3}] if isinstance(norm, nn.GroupNorm) else [{0}, {1}, {2}, {3}]
    feed, read = (n for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1)
    for channel, feature in unit.items():
        feed_mask = torch.zeros_like(net.get_parameter(feed), dtype=torch.bool)
        feed_mask.view(4, -1)[0, 0] = True  # input 0 -> channel 0
        read_mask = torch.zeros_like(net.get_parameter(read), dtype=torch.bool)
        read_mask[0, feature] = True
        effective = effective_masks(net, x, {feed: feed_mask, read: read_mask})
        connected = any({0, channel} <= g for g in groups)
        assert bool(effective[feed].any()) is connected, (channel, effective)
        assert bool(effective[read].any()) is connected, (channel, effective)


def test_a_normalisation_weight_of_zero_cuts_its_unit():
    """LayerNorm's weight 0 on a unit: that output is a constant (its shift), so what reads it is cut."""
    net = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Linear(3, 1))
    with torch.no_grad():
        net[1].weight[2] = 0.0
    masks = {"0.weight": torch.ones(3, 2, dtype=torch.bool), "2.weight": torch.ones(1, 3, dtype=torch.bool)}
    effective = effective_masks(net, torch.zeros(1, 2), masks)
    assert effective["0.weight"].all()
    assert effective["2.weight"].tolist() == [[True, True, False]]


@pytest.mark.parametrize("name", ["vit", "convnext_style", "swin"])
def test_every_weight_of_a_dense_transformer_or_convnext_is_effective(name):
    """LayerNorm on the all-ones input used to give zeros (every weight after it cut off), and the query and
    key projections, which act only through the attention probabilities, had no gradient through a softmax
    of equal scores: read as reach, every weight of the dense network is on a path, and random masks at 5%
    leave most kept weights connected."""
    from helpers import MODERN_NETWORKS

    torch.manual_seed(0)
    model = MODERN_NETWORKS[name]()
    x = torch.zeros(1, 3, 32, 32)
    masks = find_masks(model, "random", [(x, torch.tensor([0]))], density=0.05, seed=0)
    dense = {n: torch.ones_like(m) for n, m in masks.items()}
    assert all(bool(m.all()) for m in effective_masks(model, x, dense).values())
    kept = sum(int(m.sum()) for m in masks.values())
    effective = sum(int(m.sum()) for m in effective_masks(model, x, masks).values())
    assert effective / kept > 0.75, effective / kept


@pytest.mark.parametrize("written", ["module", "sdpa"])
def test_query_and_key_weights_are_on_a_path_through_the_attention_probabilities(written):
    """Only the query and key projections kept (values dense): their weights reach the output through the
    probabilities, in nn.MultiheadAttention (written out) and in F.scaled_dot_product_attention."""

    class SDPA(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x))

    attention = nn.MultiheadAttention(4, 2, batch_first=True) if written == "module" else SDPA()
    net = nn.Sequential(attention) if written == "sdpa" else _First(attention)
    x = torch.zeros(1, 3, 4)
    names = ["0.in_proj_weight"] if written == "module" else ["0.q.weight", "0.k.weight"]
    masks = {n: torch.ones_like(net.get_parameter(n), dtype=torch.bool) for n in names}
    effective = effective_masks(net, x, masks)
    assert all(bool(m.all()) for m in effective.values())


class _First(nn.Module):
    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        self.add_module("0", attention)

    def forward(self, x):
        return self.get_submodule("0")(x, x, x)[0]


def test_a_module_with_its_own_state_dict_loader_is_examined():
    """torchvision's MNASNet refuses load_state_dict without version metadata; the copy's BatchNorm
    identity is written tensor by tensor, so effective_masks runs on it."""
    torch.manual_seed(0)
    model = torchvision.models.mnasnet0_5(num_classes=10)
    x = torch.zeros(1, 3, 32, 32)
    dense = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.dim() > 1}
    effective = effective_masks(model, x, dense)
    assert set(effective) == set(dense) and all(bool(m.any()) for m in effective.values())


def test_a_vit_without_its_patch_embedding_has_no_effective_weight():
    """The class token and the position embedding are added constants: with the patch embedding emptied no
    input reaches any token (PX cvpr2024 does this to the Digits ViT at 5%), so no kept weight is effective;
    they used to be read as reached."""
    from helpers import small_vit

    torch.manual_seed(0)
    model = small_vit()
    x = torch.zeros(1, 3, 32, 32)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.dim() > 1}
    masks = {n: m for n, m in masks.items() if n not in ("class_token", "encoder.pos_embedding")}
    masks["conv_proj.weight"] = torch.zeros_like(masks["conv_proj.weight"])
    effective = effective_masks(model, x, masks)
    assert not any(bool(m.any()) for m in effective.values())

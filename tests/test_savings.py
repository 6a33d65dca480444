"""savings_report: FLOPs against counts made here from each layer's output size, effective against
effective_masks, bytes against the real file, and the model left as it was."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import conv_linear
from torch import nn

from px_lightning.pruning import apply_masks, effective_masks, find_masks, get_masks
from px_lightning.pruning.savings import format_savings, savings_report
from px_lightning.pruning.sparse_io import save_sparse


def output_sizes(model, x, types=(nn.Conv2d, nn.Linear)):
    """Each conv/linear module's output shape on one eval forward (the test's own count)."""
    shapes, handles = {}, []

    def record(name):
        def hook(module, args, out):
            shapes[name] = out.shape

        return hook

    for name, module in model.named_modules():
        if isinstance(module, types):
            handles.append(module.register_forward_hook(record(name)))
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return shapes


@pytest.fixture(scope="module")
def resnet18_masked():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    apply_masks(model, find_masks(model, "random", density=0.1, seed=0))
    return model


def test_resnet18_flops_match_a_count_from_output_sizes_and_kept_weights(resnet18_masked):
    model = resnet18_masked
    x = torch.randn(2, 3, 48, 48)
    report = savings_report(model, x)
    shapes = output_sizes(copy.deepcopy(model), x)
    masks = get_masks(model)
    dense = kept = 0
    for name, shape in shapes.items():
        module = model.get_submodule(name)
        per_example = math.prod(shape[1:])  # output elements of one example
        if isinstance(module, nn.Conv2d):
            macs = per_example * module.in_channels // module.groups * math.prod(module.kernel_size)
            positions = math.prod(shape[2:])
        else:
            macs = per_example * module.in_features
            positions = per_example // module.out_features
        k = int(masks[f"{name}.weight"].sum())
        layer = report["layers"][f"{name}.weight"]
        assert layer["flops"]["dense"] == 2 * macs
        assert layer["flops"]["kept"] == 2 * k * positions
        dense, kept = dense + 2 * macs, kept + 2 * k * positions
    assert report["flops"]["dense"] == dense and report["flops"]["kept"] == kept
    assert report["flops"]["unprunable"] == {"attention": 0, "other": 0}
    assert report["flops_ratio"] == pytest.approx(kept / dense)
    # Random masks keep ~10% of each layer, so the FLOPs ratio is close to the density too.
    assert 0.08 < report["flops_ratio"] < 0.12


def test_dense_resnet18_matches_torchvision_published_operation_count():
    # torchvision states 1.814 GMACs ("GFLOPS" in its tables) for ResNet-18 at 224x224.
    model = torchvision.models.resnet18(weights=None)
    report = savings_report(model, torch.zeros(1, 3, 224, 224), effective=False)
    published = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["_ops"]
    assert report["flops"]["dense"] / 2e9 == pytest.approx(published, abs=5e-4)
    assert report["flops"]["kept"] == report["flops"]["dense"] and report["flops_ratio"] == 1.0
    assert report["params"]["kept"] == report["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert report["params_ratio"] == 1.0 and report["bytes"]["sparse"] == report["bytes"]["dense"]


def tiny_vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )


def test_tiny_vit_flops_count_attention_apart_and_in_the_totals():
    model = tiny_vit()
    apply_masks(model, find_masks(model, "random", density=0.25, seed=1))
    masks = get_masks(model)
    x = torch.randn(3, 3, 32, 32)
    report = savings_report(model, x)
    E, mlp, L, layers = 32, 64, (32 // 8) ** 2 + 1, 2  # 16 patches + the class token
    kept = {name: int(mask.sum()) for name, mask in masks.items()}.__getitem__
    prunable_dense = 2 * (E * 3 * 8 * 8 * 16 + layers * L * (3 * E * E + E * E + 2 * E * mlp) + E * 10)
    prunable_kept = 2 * kept("conv_proj.weight") * 16 + 2 * kept("heads.head.weight")
    for i in range(layers):
        block = f"encoder.layers.encoder_layer_{i}"
        names = (
            "self_attention.in_proj_weight",
            "self_attention.out_proj.weight",
            "mlp.0.weight",
            "mlp.3.weight",
        )
        for name in names:  # self-attention: every row of the packed projection sees the L tokens
            prunable_kept += 2 * kept(f"{block}.{name}") * L
    attention = 2 * layers * (2 * L * L * E)  # q @ k^T and attn @ v
    assert report["flops"]["unprunable"] == {"attention": attention, "other": 0}
    assert report["flops"]["dense"] == prunable_dense + attention
    assert report["flops"]["kept"] == prunable_kept + attention
    # Effective FLOPs: the same count over the kept weights on an input-output path (LayerNorm and the
    # attention probabilities read as reach by effective_masks), most of them at density 0.25.
    reached = {name: int(mask.sum()) for name, mask in effective_masks(model, x).items()}.__getitem__
    effective_kept = 2 * reached("conv_proj.weight") * 16 + 2 * reached("heads.head.weight")
    for i in range(layers):
        for name in names:
            effective_kept += 2 * reached(f"encoder.layers.encoder_layer_{i}.{name}") * L
    assert report["flops"]["effective"] == effective_kept + attention
    assert 0.9 * report["flops"]["kept"] < report["flops"]["effective"] <= report["flops"]["kept"]
    assert "effective" in format_savings(report) and "FLOPs/example" in format_savings(report)
    without = savings_report(model, x, effective=False)
    assert without["flops"]["effective"] is None and without["params"]["effective"] is None
    assert "effective" not in format_savings(without)


class CrossAttention(nn.Module):
    """Queries of 12 tokens attend to 7 keys of another size: the q, k and v rows see different tokens."""

    def __init__(self, packed: bool):
        super().__init__()
        kdim = None if packed else 6
        self.attn = nn.MultiheadAttention(8, 2, kdim=kdim, vdim=kdim, batch_first=True)

    def forward(self, x):
        query, memory = x[:, :12, :8], x[:, 12:, : self.attn.kdim]
        return self.attn(query, memory, memory, need_weights=False)[0]


@pytest.mark.parametrize("packed", [True, False])
def test_attention_projection_rows_count_the_tokens_through_them(packed):
    torch.manual_seed(0)
    model = CrossAttention(packed)
    masks = find_masks(model, "random", density=0.3, seed=2)
    apply_masks(model, masks)
    report = savings_report(model, torch.randn(2, 19, 8), effective=False)
    Lq, Lk, E, D = 12, 7, 8, 8 if packed else 6
    if packed:
        rows = masks["attn.in_proj_weight"].sum(1)
        kept = Lq * rows[:E].sum() + Lk * rows[E:].sum()  # query rows: 12 tokens; key and value rows: 7
        dense = Lq * E * E + 2 * Lk * E * E
    else:
        q, k, v = (int(masks[f"attn.{p}_proj_weight"].sum()) for p in "qkv")
        kept, dense = Lq * q + Lk * (k + v), Lq * E * E + 2 * Lk * E * D
    out_kept = Lq * int(masks["attn.out_proj.weight"].sum())
    attention = 2 * Lq * Lk * E
    assert report["flops"]["dense"] == 2 * (dense + Lq * E * E + attention)
    assert report["flops"]["kept"] == 2 * (int(kept) + out_kept + attention)
    assert report["flops"]["unprunable"] == {"attention": 2 * attention, "other": 0}


class SDPABlock(nn.Module):
    """Hand-written attention through F.scaled_dot_product_attention, with a matmul of its own."""

    def __init__(self, dim=16):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.mix = nn.Parameter(torch.randn(dim, dim))  # an unprunable parameter product

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (2, 8)).transpose(1, 2) for t in (q, k, v))  # 2 heads of 8
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return out @ self.mix


def test_scaled_dot_product_attention_and_matmuls_outside_modules_are_counted():
    model = SDPABlock()
    report = savings_report(model, torch.randn(4, 5, 16), effective=False)
    L, E = 5, 16
    assert report["flops"]["unprunable"] == {
        "attention": 2 * 2 * L * L * E,
        "other": 2 * L * E * E,
    }
    assert report["layers"]["qkv.weight"]["flops"]["dense"] == 2 * L * 3 * E * E
    assert report["flops"]["dense"] == 2 * (2 * L * L * E + L * E * E + L * 3 * E * E)


def chain_with_dead_unit():
    torch.manual_seed(0)
    model = conv_linear(channels=4, size=8, classes=5)
    first = torch.ones(4, 3, 3, 3, dtype=torch.bool)
    first[0] = False  # channel 0 is cut off from the input: the linear weights reading it are not effective
    apply_masks(model, {"0.weight": first, "3.weight": torch.rand(5, 144) < 0.5})
    return model


def test_effective_counts_are_effective_masks_and_effective_flops_follow():
    model = chain_with_dead_unit()
    x = torch.randn(2, 3, 8, 8)
    report = savings_report(model, x)
    effective = effective_masks(model, x)
    masks = get_masks(model)
    for name, mask in effective.items():
        layer = report["layers"][name]
        assert layer["params"]["effective"] == int(mask.sum())
        assert layer["params"]["kept"] == int(masks[name].sum())
    positions = {"0.weight": 36, "3.weight": 1}
    assert (
        report["layers"]["3.weight"]["params"]["effective"] < report["layers"]["3.weight"]["params"]["kept"]
    )
    assert report["flops"]["effective"] == sum(2 * int(m.sum()) * positions[n] for n, m in effective.items())
    biases = 4 + 5
    assert report["params"]["effective"] == biases + sum(int(m.sum()) for m in effective.values())
    assert report["params"]["kept"] == biases + sum(int(m.sum()) for m in masks.values())


def test_report_leaves_the_model_as_it_was():
    model = torchvision.models.resnet18(weights=None)
    apply_masks(model, find_masks(model, "magnitude", density=0.2))
    model.train()
    model.layer1.eval()  # mixed modes come back per module
    before = copy.deepcopy(model.state_dict())
    savings_report(model, torch.randn(2, 3, 32, 32))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and not model.layer1.training and model.layer2.training
    assert torch.backends.mha.get_fastpath_enabled()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bytes_match_the_file_save_sparse_writes(tmp_path, resnet18_masked):
    report = savings_report(resnet18_masked, torch.randn(1, 3, 32, 32), effective=False)
    path = tmp_path / "sparse.pt"
    save_sparse(resnet18_masked, path)
    size = path.stat().st_size
    # The payload plus the zip/pickle framing: a few hundred bytes per tensor at most.
    assert report["bytes"]["sparse"] <= size <= report["bytes"]["sparse"] + 400 * 150
    plain = {k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    assert report["bytes"]["dense"] == sum(t.numel() * t.element_size() for t in plain.values())
    assert report["bytes_ratio"] == report["bytes"]["sparse"] / report["bytes"]["dense"]
    assert report["bytes"]["prunable_dense"] == 4 * sum(
        m.numel() for m in get_masks(resnet18_masked).values()
    )


def test_bad_example_input_is_refused():
    with pytest.raises(TypeError, match="example_input"):
        savings_report(nn.Linear(2, 2), [1.0, 2.0])
    with pytest.raises(TypeError, match="model"):
        savings_report("resnet", torch.zeros(1, 2))


def test_inference_benchmark_runs_small_and_its_csr_network_matches(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"
    spec = importlib.util.spec_from_file_location("inference_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--arch", "resnet18", "--image-size", "32", "--batches", "1", "2", "--repeats", "1"]
    results = bench.main(
        [*argv, "--densities", "0.2", "--method", "random", "--output", str(tmp_path / "r.json")]
    )
    run = results["densities"]["0.2"]
    assert run["csr_vs_masked_max_relative_error"] < 1e-5 and run["file_ratio"] < 0.3
    assert {(r["variant"], r["batch"]) for r in results["runs"]} >= {("csr", 1), ("csr", 2), ("dense", 2)}

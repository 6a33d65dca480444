"""save_sparse / load_sparse: bit-identical round trip, the size target, refusals."""

import warnings

import pytest
import torch
import torchvision
from helpers import conv_linear, mlp, unchanged
from torch import nn

from px_lightning.pruning import apply_masks, find_masks, get_masks
from px_lightning.pruning.sparse_io import (
    encoded_nbytes,
    index_dtype,
    load_sparse,
    pack_bits,
    save_sparse,
    unpack_bits,
)


@pytest.fixture(scope="module")
def pruned_resnet18(tmp_path_factory):
    """ResNet-18 (weights=None) at density 0.05 from magnitude, trained a little so BatchNorm moved."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    dense_file = tmp_path_factory.mktemp("files") / "dense.pt"
    torch.save(model.state_dict(), dense_file)
    with warnings.catch_warnings():  # magnitude empties fc at this density from a random init (warned)
        warnings.simplefilter("ignore", UserWarning)
        apply_masks(model, find_masks(model, "magnitude", density=0.05))
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # running statistics differ from a fresh model's
    sparse_file = dense_file.parent / "sparse.pt"
    save_sparse(model, sparse_file)
    return model, dense_file, sparse_file


def test_density_005_resnet18_file_is_at_most_015_of_the_dense_state_dict(pruned_resnet18):
    _, dense_file, sparse_file = pruned_resnet18
    ratio = sparse_file.stat().st_size / dense_file.stat().st_size
    assert ratio <= 0.15, ratio


def test_round_trip_gives_bit_identical_outputs_masks_and_state(pruned_resnet18):
    model, _, sparse_file = pruned_resnet18
    torch.manual_seed(123)  # another initialisation: everything must come from the file
    fresh = load_sparse(sparse_file, torchvision.models.resnet18(weights=None))
    model.eval()
    fresh.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    saved, loaded = get_masks(model), get_masks(fresh)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        if name.endswith(".original"):  # pruned entries come back as zero; the masked value is the same
            mask = saved[name.replace(".parametrizations.weight.original", ".weight")]
            assert torch.equal(a * mask, b) and not bool(b[~mask].any())
        else:
            assert torch.equal(a, b), name


def test_file_is_weights_only_loadable_and_picks_the_smaller_encoding(pruned_resnet18):
    model, _, sparse_file = pruned_resnet18
    content = torch.load(sparse_file, weights_only=True)
    assert content["format"] == "px-lightning-sparse" and content["version"] == 1
    masks = get_masks(model)
    encodings = {e["name"]: e["encoding"] for e in content["header"]}
    assert set(encodings) >= set(masks) and {encodings[n] for n in masks} == {"bitmap", "indices"}
    for name, mask in masks.items():
        entry = content["sparse"][name]
        kept, numel = int(mask.sum()), mask.numel()
        stored = sum(t.numel() * t.element_size() for t in entry.values())
        assert stored == encoded_nbytes(numel, kept, 4)
        # The other encoding would not have been smaller.
        index_bytes = torch.empty((), dtype=index_dtype(numel)).element_size()
        other = kept * 4 + (kept * index_bytes if "bitmap" in entry else -(-numel // 8))
        assert stored <= other


def test_loading_into_a_model_that_already_has_masks_updates_them(pruned_resnet18):
    model, _, sparse_file = pruned_resnet18
    target = torchvision.models.resnet18(weights=None)
    apply_masks(target, {n: torch.ones_like(m) for n, m in get_masks(model).items()})
    load_sparse(sparse_file, target)
    loaded = get_masks(target)
    assert all(torch.equal(loaded[n], m) for n, m in get_masks(model).items())


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: torchvision.models.resnet18(weights=None, num_classes=10), "'fc.weight'"),
        (lambda: torchvision.models.resnet34(weights=None), "'layer1.2.conv1.weight'"),
        (lambda: torchvision.models.resnet50(weights=None), "'layer1.0.conv1.weight'"),
    ],
)
def test_another_architecture_is_refused_naming_the_first_mismatched_tensor(pruned_resnet18, build, named):
    _, _, sparse_file = pruned_resnet18
    other = build()
    with unchanged(other), pytest.raises(ValueError, match=f"another architecture.*{named}"):
        load_sparse(sparse_file, other)
    assert not get_masks(other)  # refused before anything was written


def test_a_model_with_an_extra_tensor_and_a_dtype_mismatch_are_refused(tmp_path):
    small = mlp()
    apply_masks(small, {"0.weight": torch.rand(8, 4) < 0.5})
    path = tmp_path / "small.pt"
    save_sparse(small, path)
    with pytest.raises(
        ValueError, match=r"expects shape \(8, 4\) float64, the file holds shape \(8, 4\) float32"
    ):
        load_sparse(path, mlp().double())
    with pytest.raises(ValueError, match="its tensor '2.weight'.*is not in the model"):
        load_sparse(path, nn.Sequential(nn.Linear(4, 8)))


def test_garbage_missing_and_foreign_files_are_refused_clearly(tmp_path):
    model = nn.Linear(3, 2)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all" * 10)
    with pytest.raises(ValueError, match="not a file written by save_sparse"):
        load_sparse(garbage, model)
    plain = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(ValueError, match="not one written by save_sparse.*load_state_dict"):
        load_sparse(plain, model)
    with pytest.raises(FileNotFoundError, match="no file"):
        load_sparse(tmp_path / "missing.pt", model)
    with pytest.raises(ValueError, match="is not a file"):
        load_sparse(tmp_path, model)
    with pytest.raises(TypeError, match="model must be"):
        save_sparse("model", tmp_path / "x.pt")


def test_bits_pack_and_unpack():
    mask = torch.rand(3, 5, 7) < 0.3
    assert torch.equal(unpack_bits(pack_bits(mask), mask.numel()).view_as(mask), mask)
    assert pack_bits(torch.tensor([True] + [False] * 6 + [True, True])).tolist() == [129, 128]


def test_round_trip_of_a_half_precision_model_with_a_file_object(tmp_path):
    torch.manual_seed(0)
    model = conv_linear(channels=8, size=6, classes=3).to(torch.bfloat16)
    apply_masks(
        model, {n: torch.rand(p.shape) < 0.3 for n, p in model.named_parameters() if n.endswith("weight")}
    )
    path = tmp_path / "bf16.pt"
    with open(path, "wb") as f:
        save_sparse(model, f)
    fresh = conv_linear(channels=8, size=6, classes=3).to(torch.bfloat16)
    with open(path, "rb") as f:
        load_sparse(f, fresh)
    x = torch.randn(2, 3, 6, 6, dtype=torch.bfloat16)
    assert torch.equal(model(x), fresh(x))

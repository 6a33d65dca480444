"""Pre-trained encoder loading: each file format round-trips exactly; mismatches fail naming the keys."""

from __future__ import annotations

import argparse

import pytest
import torch
import torchvision
from helpers import unchanged

from px_lightning.models import create_segmentation_model, load_pretrained_encoder
from px_lightning.models.pretrained import detect_format


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    """A randomly initialised ResNet-50 with non-trivial BatchNorm statistics (so running stats count too)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(7)
            m.weight.data.normal_()
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def fresh_encoder():
    def make():
        return create_segmentation_model("deeplabv3plus", "resnet50", num_classes=21, output_stride=8).encoder

    return make


def _write(path, source: dict[str, torch.Tensor], fmt: str) -> None:
    if fmt == "torchvision":
        torch.save(source, path)
    elif fmt == "mocov2":
        # As MoCo v2 saves it: the DDP-wrapped query and key encoders with MLP heads, the queue, the optimizer.
        backbone = {k: v for k, v in source.items() if not k.startswith("fc.")}
        state = {f"module.encoder_q.{k}": v for k, v in backbone.items()}
        state.update({f"module.encoder_k.{k}": v + 1 for k, v in backbone.items()})
        for enc in ("q", "k"):
            state[f"module.encoder_{enc}.fc.0.weight"] = torch.randn(2048, 2048)
            state[f"module.encoder_{enc}.fc.0.bias"] = torch.randn(2048)
            state[f"module.encoder_{enc}.fc.2.weight"] = torch.randn(128, 2048)
            state[f"module.encoder_{enc}.fc.2.bias"] = torch.randn(128)
        state["module.queue"] = torch.randn(128, 16)
        state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
        torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}}}, path)
    elif fmt == "dino":
        torch.save({k: v for k, v in source.items() if not k.startswith("fc.")}, path)


@pytest.mark.parametrize("fmt", ["torchvision", "mocov2", "dino"])
def test_each_format_round_trips(tmp_path, source, fresh_encoder, fmt):
    path = tmp_path / f"{fmt}.pth"
    _write(path, source, fmt)
    on_disk = torch.load(path, weights_only=True)
    for given in (fmt, "auto"):
        encoder = fresh_encoder()
        report = load_pretrained_encoder(encoder, path, given)
        assert report.format == fmt
        loaded = encoder.state_dict()
        assert set(loaded) == {k for k in source if not k.startswith("fc.")}
        for k, v in loaded.items():
            assert torch.equal(v, source[k]), k
        assert len(report.loaded) == len(loaded) and report.kept == []
    # The file's dict was not altered (smp's encoder pops fc.* from the dict it is given).
    assert set(torch.load(path, weights_only=True)) == set(on_disk)
    if fmt == "mocov2":
        assert (
            "module.encoder_k.conv1.weight" in report.dropped
            and "module.encoder_q.fc.0.weight" in report.dropped
        )
    if fmt == "torchvision":
        assert sorted(report.dropped) == ["fc.bias", "fc.weight"]


def test_old_torchvision_file_without_counters_loads(tmp_path, source, fresh_encoder):
    # torchvision's original ImageNet ResNet-50 file predates num_batches_tracked.
    path = tmp_path / "resnet50-19c8e357.pth"
    torch.save({k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}, path)
    encoder = fresh_encoder()
    report = load_pretrained_encoder(encoder, path)
    assert (
        report.format == "torchvision"
        and report.kept
        and all(k.endswith("num_batches_tracked") for k in report.kept)
    )
    for k, v in encoder.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, source[k]), k


def test_wrong_architecture_names_the_unmatched_keys(tmp_path, fresh_encoder):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    encoder = fresh_encoder()
    with unchanged(encoder), pytest.raises(ValueError) as err:  # nothing loaded
        load_pretrained_encoder(encoder, path, "torchvision")
    message = str(err.value)
    assert "resnet18.pth" in message and "encoder keys not in the file" in message
    assert "layer1.0.conv3.weight" in message  # ResNet-50 has a third conv per block, ResNet-18 not
    assert (
        "shape mismatches" in message
        and "layer1.0.conv1.weight (file (64, 64, 3, 3), encoder (64, 64, 1, 1))" in message
    )


def test_extra_and_missing_keys_are_named(tmp_path, source, fresh_encoder):
    plain = {k: v for k, v in source.items() if not k.startswith("fc.")}
    extra = dict(plain, **{"head.mlp.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"file keys the encoder lacks \(1\): head\.mlp\.weight") as err:
        load_pretrained_encoder(fresh_encoder(), tmp_path / "extra.pth", "dino")
    assert "(format 'dino')" in str(err.value) and "auto-detected" not in str(err.value)
    partial = {k: v for k, v in plain.items() if not k.startswith("layer4.2.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(
        ValueError, match=r"encoder keys not in the file \(\d+\): layer4\.2\.conv1\.weight"
    ) as err:
        load_pretrained_encoder(fresh_encoder(), tmp_path / "partial.pth")
    # format="auto": the message says the format was detected, why, and from which keys.
    message = str(err.value)
    assert "auto-detected format 'dino': no key starts with 'module.encoder_q.'" in message
    assert "no 'fc.weight'; keys conv1.weight, " in message
    assert "give pretrained_format explicitly" in message
    # A plain file read as MoCo: no key under the MoCo prefix.
    with pytest.raises(ValueError, match="module.encoder_q."):
        load_pretrained_encoder(fresh_encoder(), tmp_path / "partial.pth", "mocov2")


def test_unreadable_inputs(tmp_path, fresh_encoder):
    encoder = fresh_encoder()
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_pretrained_encoder(encoder, tmp_path / "nowhere.pth")
    # Text files: torch.load fails with a KeyError or an UnpicklingError (by the first byte).
    for text, error in (("hi there", "KeyError: 105"), ("not a checkpoint", "UnpicklingError: Unsupported")):
        (tmp_path / "text.pth").write_text(text)
        with pytest.raises(
            ValueError, match=r"text\.pth is not a PyTorch checkpoint \(torch\.load failed: "
        ) as err:
            load_pretrained_encoder(encoder, tmp_path / "text.pth")
        assert error in str(err.value) and "Weights only load failed" not in str(err.value)
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:100])  # a broken transfer
    with pytest.raises(
        ValueError, match=r"cut\.pth is not a PyTorch checkpoint \(torch\.load failed: RuntimeError"
    ):
        load_pretrained_encoder(encoder, tmp_path / "cut.pth")
    # A real checkpoint with a pickled object (as training scripts save their args): say so, not "not a checkpoint".
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "args.pth")
    with pytest.raises(
        ValueError, match=r"args\.pth is a PyTorch checkpoint holding objects other than tensors"
    ):
        load_pretrained_encoder(encoder, tmp_path / "args.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_pretrained_encoder(encoder, tmp_path / "list.pth")
    with pytest.raises(ValueError, match="pretrained_format must be one of"):
        load_pretrained_encoder(encoder, tmp_path / "list.pth", "simclr")


def test_detect_format():
    assert detect_format({"module.encoder_q.conv1.weight": torch.zeros(1)}) == "mocov2"
    assert detect_format({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}) == "torchvision"
    assert detect_format({"conv1.weight": torch.zeros(1)}) == "dino"

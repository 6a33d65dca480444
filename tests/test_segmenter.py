"""SemanticSegmenter: a pruned DeepLabV3+ ResNet-50 fit on the tiny VOC tree, metrics, optimiser defaults."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_voc_data import write_voc

from px_lightning.callbacks import ForesightPruningCallback
from px_lightning.data import VOCSegmentationDataModule
from px_lightning.modules import SemanticSegmenter
from px_lightning.pruning import get_masks


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_voc(tmp_path_factory.mktemp("voc"))


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "logger": False,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**options, **kwargs})


def test_fit_with_px_on_pretrained_deeplabv3plus_resnet50(tmp_path, data_dir):
    # The published downstream setting: PX on a pre-trained ResNet-50 (here DINO-format, random weights).
    torch.manual_seed(0)
    backbone = {
        k: v for k, v in torchvision.models.resnet50(weights=None).state_dict().items() if "fc." not in k
    }
    torch.save(backbone, tmp_path / "dino_resnet50.pth")
    model = SemanticSegmenter(pretrained=str(tmp_path / "dino_resnet50.pth"), pretrained_format="auto")
    assert model.pretrained_report.format == "dino"
    assert torch.equal(model.model.encoder.layer4[2].conv3.weight, backbone["layer4.2.conv3.weight"])
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}

    dm = VOCSegmentationDataModule(data_dir, batch_size=2, crop_size=32, num_workers=0, val_mode="full")
    callback = ForesightPruningCallback(method="px", density=0.2, rounds=1, verbose=False)
    logger = TensorBoardLogger(tmp_path / "tb", name="", version="", default_hp_metric=False)
    trainer = _trainer(
        tmp_path,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[callback],
        logger=logger,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=dm)

    metrics = trainer.callback_metrics
    assert 0.0 <= float(metrics["val/mIoU"]) <= 1.0 and 0.0 <= float(metrics["val/pixel_acc"]) <= 1.0
    assert any(k.startswith("val/iou/") for k in metrics)

    # Masks in place on every conv of encoder, decoder and head; pruned weights exactly zero after training.
    masks = get_masks(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert sorted(masks) == sorted(f"{n}.weight" for n in convs)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(kept / total - 0.2) < 1e-3
    for name, mask in masks.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        assert torch.all(module.weight[~mask] == 0), name
    # Training moved the kept weights (encoder at lr 0.001, decoder at 0.01).
    original = model.model.decoder.block2[0][1].parametrizations.weight.original
    assert not torch.equal(original, initial["model.decoder.block2.0.1.weight"])

    # TensorBoard: the epoch mIoU and one overlay panel per validation image (image | labels | prediction).
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "val/mIoU" in events.Tags()["scalars"]
    assert sorted(events.Tags()["images"]) == ["val/overlay/0"]  # one validation batch (of 1) run
    first = events.Images("val/overlay/0")[-1]
    assert (first.height, first.width) == (60, 3 * 80)  # the first val image is 60x80, full size
    panel = np.asarray(Image.open(io.BytesIO(first.encoded_image_string)).convert("RGB")).astype(int)
    image, labels = dm.val_set.read(0)
    image = np.asarray(image).astype(int)
    assert np.abs(panel[:, :80] - image).max() <= 2  # left: the image itself (up to float/uint8 rounding)
    ignored, background = labels == 255, labels == 0
    assert np.abs(panel[:, 80:160][ignored] - image[ignored]).max() <= 2  # 255 pixels are left unpainted
    # Background (class 0, colour black in the VOC map) blended at alpha 0.5 halves the image.
    assert np.abs(panel[:, 80:160][background] - image[background] / 2).max() <= 2

    # The checkpoint restores the pruned model without reading the pre-trained file again.
    trainer.save_checkpoint(tmp_path / "pruned.ckpt")
    (tmp_path / "dino_resnet50.pth").unlink()
    restored = SemanticSegmenter.load_from_checkpoint(tmp_path / "pruned.ckpt", pretrained=None)
    for name, mask in masks.items():
        weight = restored.get_submodule(name.rsplit(".", 1)[0]).weight
        assert torch.equal(weight, model.get_submodule(name.rsplit(".", 1)[0]).weight), name


def _confusion_miou(
    model: SemanticSegmenter, loader, num_classes: int = 21
) -> tuple[float, float, np.ndarray]:
    """mIoU, pixel accuracy and per-class IoU (NaN: class absent) re-computed with numpy from a confusion matrix over the whole loader."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            pred = model(x).argmax(1)
            keep = y != 255
            np.add.at(conf, (y[keep].numpy(), pred[keep].numpy()), 1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou)), float(tp.sum() / conf.sum()), iou


@pytest.mark.parametrize("val_mode", ["full", "center_crop"])
def test_validation_miou_is_the_epoch_confusion_matrix_miou(tmp_path, data_dir, val_mode):
    torch.manual_seed(0)
    model = SemanticSegmenter(encoder="resnet18", output_stride=16, num_overlays=0)
    dm = VOCSegmentationDataModule(data_dir, batch_size=2, crop_size=40, num_workers=0, val_mode=val_mode)
    trainer = _trainer(tmp_path)
    (result,) = trainer.validate(model, datamodule=dm)
    miou, acc, per_class = _confusion_miou(model, dm.val_dataloader())
    assert result["val/mIoU"] == pytest.approx(miou, abs=1e-5)
    logged = {k.removeprefix("val/iou/"): v for k, v in result.items() if k.startswith("val/iou/")}
    expected = {model.class_names[c]: v for c, v in enumerate(per_class) if not np.isnan(v)}
    assert logged.keys() == expected.keys() and len(expected) < 21  # absent classes are not logged
    assert all(logged[k] == pytest.approx(v, abs=1e-5) for k, v in expected.items())
    assert result["val/pixel_acc"] == pytest.approx(acc, abs=1e-5)
    # A second epoch starts from an empty confusion matrix: same value again.
    (again,) = trainer.validate(model, datamodule=dm)
    assert again["val/mIoU"] == pytest.approx(miou, abs=1e-5)
    # predict gives the class maps the metrics were computed from.
    if val_mode == "full":
        preds = trainer.predict(model, datamodule=dm)
        x, _ = next(iter(dm.val_dataloader()))
        assert preds[0].shape == (1, *x.shape[-2:]) and torch.equal(preds[0], model(x).argmax(1))


def test_forward_any_size_and_loss_ignores_255():
    torch.manual_seed(0)
    model = SemanticSegmenter(encoder="resnet18", output_stride=8).eval()
    x = torch.randn(2, 3, 37, 53)
    logits = model(x)
    assert logits.shape == (2, 21, 37, 53)
    y = torch.randint(0, 21, (2, 37, 53))
    y[:, :10] = 255
    other = logits.clone()
    other[:, :, :10] += torch.randn_like(other[:, :, :10]) * 5  # changes only ignored pixels
    assert torch.allclose(model._loss(logits, y), model._loss(other, y))
    all_ignored = torch.full_like(y, 255)
    assert model._loss(logits, all_ignored).item() == 0.0


def test_published_optimisation_defaults():
    model = SemanticSegmenter(encoder="resnet18")
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    encoder_group, decoder_group = optimizer.param_groups
    assert {id(p) for p in encoder_group["params"]} == {id(p) for p in model.model.encoder.parameters()}
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.encoder.")]
    assert {id(p) for p in decoder_group["params"]} == {id(p) for p in rest} and rest
    assert (encoder_group["lr"], decoder_group["lr"]) == (0.001, 0.01)
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 for g in optimizer.param_groups)
    assert isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR)
    assert dict(scheduler.milestones) == {50: 1, 60: 1} and scheduler.gamma == 0.1


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown arch 'deeplabv4'"):
        SemanticSegmenter(arch="deeplabv4")
    with pytest.raises(ValueError, match="output_stride=None"):
        SemanticSegmenter(arch="unet", encoder="resnet18", output_stride=8)
    with pytest.raises(ValueError, match="unknown encoder"):
        SemanticSegmenter(encoder="resnet5000")
    with pytest.raises(ValueError, match="pretrained_format must be one of"):
        SemanticSegmenter(encoder="resnet18", pretrained_format="torchvison")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        SemanticSegmenter(encoder="resnet18", pretrained="missing.pth")

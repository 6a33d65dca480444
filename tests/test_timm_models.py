"""timm models by name (``"timm.<name>"``) in ``create_model``, ``ImageClassifier`` and the CLI, and a ViT
pruned by the callback inside ``Trainer.fit``. Random weights only: nothing downloads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import trainer_kwargs
from torch.utils.data import DataLoader, TensorDataset

from px_lightning.callbacks import ForesightPruningCallback
from px_lightning.cli import cli_main
from px_lightning.models import create_model
from px_lightning.modules import ImageClassifier
from px_lightning.pruning import get_masks, sparsity_report

REPO = Path(__file__).resolve().parents[1]


def test_timm_name_builds_the_model_with_num_classes_and_its_keyword_arguments():
    vit = create_model("timm.vit_tiny_patch16_224", num_classes=7, img_size=32)
    assert vit.head.out_features == 7
    assert tuple(vit.patch_embed.img_size) == (32, 32)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    resnet = create_model("TIMM.resnet18d", num_classes=3)  # the prefix, like the names, ignores case
    assert resnet.fc.out_features == 3


def test_timm_weights_are_random_not_pretrained():
    torch.manual_seed(0)
    first = create_model("timm.resnet18d", num_classes=3).conv1[0].weight
    torch.manual_seed(1)
    second = create_model("timm.resnet18d", num_classes=3).conv1[0].weight
    assert not torch.equal(first, second)  # pretrained weights would be the same file twice
    with pytest.raises(ValueError, match="pretrained=True: timm models are built with random weights"):
        create_model("timm.resnet18d", num_classes=3, pretrained=True)


def test_unknown_timm_name_lists_close_names():
    with pytest.raises(
        ValueError, match=r"unknown timm model 'vit_tiny_patch16'.*did you mean.*'timm\.vit_tiny_patch16_224'"
    ):
        create_model("timm.vit_tiny_patch16", num_classes=10)


def test_timm_is_not_imported_for_other_names():
    # A fresh interpreter: in this one timm may be imported already (segmentation_models_pytorch imports it).
    code = (
        "import sys; import px_lightning.models, px_lightning.modules, px_lightning.pruning;"
        "assert 'timm' not in sys.modules, 'imported early';"
        "px_lightning.models.create_model('resnet20', 10); assert 'timm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_image_classifier_fast_dev_run_prunes_a_timm_vit_with_px(tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 32, 32, generator=generator), torch.arange(8) % 4)
    loader = DataLoader(data, batch_size=4)
    module = ImageClassifier("timm.vit_tiny_patch16_224", num_classes=4, model_options={"img_size": 32})
    callback = ForesightPruningCallback(method="px", density=0.05, rounds=2, num_batches=1)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, fast_dev_run=True, callbacks=[callback]))
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 1
    masks = get_masks(module.model)
    assert "blocks.0.attn.qkv.weight" in masks and "head.weight" in masks
    assert sparsity_report(module.model)["density"] == pytest.approx(0.05, abs=1e-3)
    for name, mask in masks.items():  # pruned weights stay exactly zero through the training step
        assert not module.model.get_submodule(name.rsplit(".", 1)[0]).weight[~mask].any(), name


def test_cli_takes_a_timm_name_and_its_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "quickstart.yaml"),
            "--model.model=timm.deit_tiny_patch16_224",
            "--model.model_options={img_size: 32}",
            "--trainer.fast_dev_run=1",
            "--trainer.logger=false",
            "--trainer.callbacks.init_args.method=magnitude",
            "--trainer.callbacks.init_args.rounds=1",
            "--test_after_fit=false",
        ]
    )
    assert cli.trainer.global_step == 1
    assert type(cli.model.model).__name__ == "VisionTransformer"
    assert tuple(cli.model.model.patch_embed.img_size) == (32, 32)
    assert sparsity_report(cli.model.model)["density"] == pytest.approx(0.05, abs=1e-3)

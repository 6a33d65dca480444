"""SemanticSegmenter: a segmentation-models-pytorch network trained with the published VOC recipe."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ..data.voc import IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES
from ..models.pretrained import PRETRAINED_FORMATS, PretrainedReport, load_pretrained_encoder
from ..models.segmentation import create_segmentation_model


def _voc_colours() -> Tensor:
    """The VOC colour map as a (256, 3) float tensor in [0, 1]."""
    colours = torch.zeros(256, 3)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for k in range(3):
                rgb[k] |= ((c >> k) & 1) << (7 - j)
            c >>= 3
        colours[i] = torch.tensor(rgb) / 255
    return colours


class SemanticSegmenter(L.LightningModule):
    """Semantic segmentation with an smp network (DeepLabV3+ ResNet-50, output stride 8, by default).

    Cross-entropy ignoring ``ignore_index`` (255); validation mIoU over the whole epoch (torchmetrics
    ``MulticlassJaccardIndex`` confusion matrix, classes absent from both prediction and labels left
    out of the mean), per-class IoU (``val/iou/<class>``) and pixel accuracy (``val/pixel_acc``). With a
    ``TensorBoardLogger``, ``num_overlays`` fixed validation images are logged each epoch as
    ``image | labels | prediction`` panels. The defaults are the published optimisation: SGD momentum 0.9,
    weight decay 1e-4, lr 0.001 for the encoder and 0.01 for decoder and head, MultiStepLR at 50/60.

    Inputs of any size work: they are padded to a multiple of the encoder's output stride and the logits
    cropped back. ``pretrained`` loads encoder weights from a local file (``load_pretrained_encoder``) when
    the module is built, so a pruning callback scores the pre-trained network; the report is kept in
    ``self.pretrained_report``. When restoring a checkpoint, ``load_from_checkpoint(path, pretrained=None)``
    skips reading the file again (the checkpoint holds the weights). A pruned checkpoint loads its pruned
    weights without the masks; ``px_lightning.callbacks.restore_masks(module, path)`` re-installs them
    before any fine-tuning.

    Example:
        >>> model = SemanticSegmenter(pretrained="dino_resnet50_pretrain.pth", pretrained_format="dino")
        >>> trainer = L.Trainer(max_epochs=80, callbacks=[ForesightPruningCallback(method="px", density=0.018)])
        >>> trainer.fit(model, datamodule=VOCSegmentationDataModule("data/", batch_size=4))
    """

    def __init__(
        self,
        arch: str = "deeplabv3plus",
        encoder: str = "resnet50",
        num_classes: int = 21,
        output_stride: int | None = 8,
        pretrained: str | None = None,
        pretrained_format: Literal["auto", "torchvision", "mocov2", "dino"] = "auto",
        encoder_lr: float = 0.001,
        decoder_lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        milestones: Sequence[int] = (50, 60),
        gamma: float = 0.1,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        num_overlays: int = 4,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        model_options: dict | None = None,
    ) -> None:
        super().__init__()
        # A str, not a Path, in the hyper-parameters: checkpoints then load with weights_only=True.
        pretrained = None if pretrained is None else str(pretrained)
        self.save_hyperparameters()
        if pretrained_format not in PRETRAINED_FORMATS:  # checked even without a file: never ignored
            raise ValueError(
                f"pretrained_format must be one of {PRETRAINED_FORMATS}, got {pretrained_format!r}"
            )
        for name, value in (("encoder_lr", encoder_lr), ("decoder_lr", decoder_lr)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if class_names is None:
            class_names = (
                VOC_CLASSES if num_classes == len(VOC_CLASSES) else [f"class_{i}" for i in range(num_classes)]
            )
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.class_names = list(class_names)
        self.model = create_segmentation_model(
            arch, encoder, num_classes, output_stride, **(model_options or {})
        )
        self.pretrained_report: PretrainedReport | None = None
        if pretrained is not None:
            self.pretrained_report = load_pretrained_encoder(
                self.model.encoder, Path(pretrained), pretrained_format
            )
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=ignore_index)
        self.val_iou = MulticlassJaccardIndex(
            num_classes, average="none", ignore_index=ignore_index, zero_division=float("nan")
        )
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index)
        self.test_iou = self.val_iou.clone()
        self.test_acc = self.val_acc.clone()
        self.register_buffer("_mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self._overlays: list[tuple[Tensor, Tensor, Tensor]] = []
        self._seen = 0

    def _stride(self) -> int:
        return int(getattr(self.model.encoder, "output_stride", 32))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes, H, W)`` for images ``(N, 3, H, W)`` of any size."""
        h, w = x.shape[-2:]
        s = self._stride()
        ph, pw = -h % s, -w % s
        if ph or pw:  # smp needs multiples of the output stride; 0 is the mean colour after normalisation
            x = F.pad(x, (0, pw, 0, ph))
        return self.model(x)[..., :h, :w]

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if not bool((y != self.hparams.ignore_index).any()):
            # Every pixel ignored (e.g. a crop of padding only): mean cross-entropy would be NaN.
            return logits.sum() * 0.0
        return self.loss_fn(logits, y)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self._loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        pred = logits.argmax(1)
        iou, acc = (self.val_iou, self.val_acc) if stage == "val" else (self.test_iou, self.test_acc)
        iou.update(pred, y)
        acc.update(pred, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        return pred

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        pred = self._eval_step(batch, "val")
        # The first num_overlays samples of the (unshuffled) validation set: the same images every epoch.
        x, y = batch
        for i in range(x.shape[0]):
            if self._seen < self.hparams.num_overlays:
                self._overlays.append((x[i].detach().cpu(), y[i].cpu(), pred[i].cpu()))
            self._seen += 1

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """Class maps ``(N, H, W)`` for a batch of images or of ``(images, masks)`` pairs."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(1)

    def on_validation_epoch_start(self) -> None:
        self._overlays, self._seen = [], 0

    def _log_epoch_metrics(self, stage: str) -> None:
        iou, acc = (self.val_iou, self.val_acc) if stage == "val" else (self.test_iou, self.test_acc)
        per_class = (
            iou.compute()
        )  # synchronised across ranks; NaN for classes absent from labels and predictions
        present = ~torch.isnan(per_class)
        miou = per_class[present].mean() if bool(present.any()) else per_class.new_tensor(0.0)
        self.log(f"{stage}/mIoU", miou, prog_bar=stage == "val")
        self.log(f"{stage}/pixel_acc", acc.compute())
        for name, value, ok in zip(self.class_names, per_class, present):
            if ok:
                self.log(f"{stage}/iou/{name}", value)
        iou.reset()
        acc.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")
        if not self.trainer.sanity_checking:
            self._log_overlays()
        self._overlays = []

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def overlay(self, image: Tensor, target: Tensor, pred: Tensor, alpha: float = 0.5) -> Tensor:
        """A ``(3, H, 3W)`` panel in [0, 1]: the image, the labels and the prediction blended over it."""
        rgb = (image.float() * self._std.cpu() + self._mean.cpu()).clamp(0, 1)
        colours = _voc_colours()

        def blend(labels: Tensor) -> Tensor:
            keep = (labels != self.hparams.ignore_index).unsqueeze(0)
            coloured = colours[labels.clamp(0, 255)].permute(2, 0, 1)
            return torch.where(keep, (1 - alpha) * rgb + alpha * coloured, rgb)

        return torch.cat([rgb, blend(target), blend(pred)], dim=2)

    def _log_overlays(self) -> None:
        loggers = [lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or not self._overlays or not self.trainer.is_global_zero:
            return
        for k, (image, target, pred) in enumerate(self._overlays):
            panel = self.overlay(image, target, pred)
            for logger in loggers:
                logger.experiment.add_image(f"val/overlay/{k}", panel, self.global_step, dataformats="CHW")

    def configure_optimizers(self):
        hp = self.hparams
        encoder_ids = {id(p) for p in self.model.encoder.parameters()}
        params = [p for p in self.parameters() if p.requires_grad]
        encoder = [p for p in params if id(p) in encoder_ids]
        rest = [p for p in params if id(p) not in encoder_ids]
        optimizer = torch.optim.SGD(
            [{"params": encoder, "lr": hp.encoder_lr}, {"params": rest, "lr": hp.decoder_lr}],
            lr=hp.decoder_lr,
            momentum=hp.momentum,
            weight_decay=hp.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(hp.milestones), gamma=hp.gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

"""ImageNet (ILSVRC-2012) DataModule over the usual class-folder layout; never downloaded.

``data_dir`` holds ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the validation images sorted into
class folders). Classes are the sorted folder names of ``train/`` (1000 for ImageNet-1k; a subset of
folders gives a subset task, and ``num_classes`` follows). The validation set serves as validation and
test set.

Standard transforms at 224: random-resized crop and horizontal flip for training; resize to 256 and
center crop 224 for evaluation; ImageNet mean and std. (The published script also applies colour jitter
and random grayscale for training; pass ``train_transform`` to reproduce it.)

Example:
    >>> dm = ImageNetDataModule(data_dir="/datasets/imagenet", batch_size=256, num_workers=16)
    >>> trainer.fit(ImageClassifier("resnet50", num_classes=1000), datamodule=dm)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torchvision.transforms as T

from ._common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationDataModule,
    CorruptDatasetError,
    DatasetNotFoundError,
    ImageListDataset,
    verify_images,
)

_EXTENSIONS = (".jpeg", ".jpg", ".png")

_HOW_TO_PREPARE = (
    "ImageNet cannot be downloaded automatically. Get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
    "from https://image-net.org (registration required), then: extract the train archive into "
    "<data_dir>/train/ and each per-class tar inside it into train/<wnid>/; extract the val archive into "
    "<data_dir>/val/ and move each image into val/<wnid>/ by its label (e.g. with the widely used "
    "valprep.sh script, or torchvision.datasets.ImageNet's parse_val_archive)"
)


class ImageNetDataModule(ClassificationDataModule):
    """ImageNet from ``data_dir/train`` and ``data_dir/val`` class folders (see the module docstring).

    ``verify_images=True`` decodes every image in ``setup`` (slow on the full set) and reports damaged
    files at once; otherwise a damaged image raises an error naming it when it is read.

    Example:
        >>> dm = ImageNetDataModule("/datasets/imagenet"); dm.setup("fit"); dm.num_classes
        1000
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(
        self,
        data_dir: str | Path = "data/imagenet",
        batch_size: int = 256,
        num_workers: int = 8,
        examples_per_class: int = 10,
        verify_images: bool = False,
        train_transform: Callable | None = None,
        pin_memory: bool = True,
        scoring_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, examples_per_class, pin_memory, scoring_batch_size)
        self.data_dir = Path(data_dir)
        self.verify_images = verify_images
        self._train_transform = train_transform

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Number of class folders in ``train/`` (1000 when the folder is not there yet)."""
        train = self.data_dir / "train"
        if not train.is_dir():
            return 1000
        return sum(1 for p in train.iterdir() if p.is_dir())

    def train_transform(self) -> Callable:
        if self._train_transform is not None:
            return self._train_transform
        return self.normalized_transform(T.RandomResizedCrop(224), T.RandomHorizontalFlip())

    def eval_transform(self) -> T.Compose:
        return self.normalized_transform(T.Resize(256), T.CenterCrop(224))

    def _split_folder(self, split: str) -> Path:
        folder = self.data_dir / split
        if not folder.is_dir():
            raise DatasetNotFoundError(f"ImageNetDataModule: {folder} does not exist. {_HOW_TO_PREPARE}")
        return folder

    def _samples(self, folder: Path, classes: list[str]) -> list[tuple[str, int]]:
        samples = []
        for idx, wnid in enumerate(classes):
            class_dir = folder / wnid
            if not class_dir.is_dir():
                raise DatasetNotFoundError(
                    f"ImageNet folder {class_dir} is missing: {folder} must have the same class folders as "
                    f"train/. {_HOW_TO_PREPARE}"
                )
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in _EXTENSIONS)
            if not files:
                raise CorruptDatasetError(f"ImageNet folder {class_dir} holds no images (.JPEG/.jpg/.png)")
            samples += [(str(p), idx) for p in files]
        return samples

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_dir, val_dir = self._split_folder("train"), self._split_folder("val")
        classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        if not classes:
            raise DatasetNotFoundError(f"ImageNet folder {train_dir} has no class folders. {_HOW_TO_PREPARE}")
        extra = sorted({p.name for p in val_dir.iterdir() if p.is_dir()} - set(classes))
        if extra:
            raise CorruptDatasetError(
                f"ImageNet folder {val_dir} has class folders not in train/: {extra[:5]}"
            )
        self.classes = classes
        train, val = self._samples(train_dir, classes), self._samples(val_dir, classes)
        if self.verify_images:
            verify_images([p for p, _ in train + val])
        self.set_splits(ImageListDataset, train, val)

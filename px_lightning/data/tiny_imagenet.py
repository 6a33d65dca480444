"""Tiny-ImageNet-200 DataModule reading the official archive layout.

``data_dir/tiny-imagenet-200/`` holds ``wnids.txt`` (the 200 class ids), ``train/<wnid>/images/*.JPEG``
and ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (tab-separated: file name, wnid, box). The
validation images are read through the annotation file in place (no files are moved, unlike the
published script). Classes are indexed in sorted wnid order, as ``ImageFolder`` does. The labelled
validation set serves as validation and test set (the official test set has no labels).

Published transforms at 64x64: random-resized crop (scale 0.1-1, ratio 0.8-1.25) and horizontal flip for
training, normalisation with the dataset's mean and std.

Example:
    >>> dm = TinyImageNetDataModule(data_dir="data", download=True)
    >>> trainer.fit(ImageClassifier("resnet18_tiny", num_classes=200), datamodule=dm)
"""

from __future__ import annotations

from pathlib import Path

import torchvision.transforms as T

from ._common import (
    ArchiveDataModule,
    CorruptDatasetError,
    DatasetNotFoundError,
    ImageListDataset,
    verify_images,
)

_EXTENSIONS = (".jpeg", ".jpg", ".png")


class TinyImageNetDataModule(ArchiveDataModule):
    """Tiny-ImageNet-200 from ``data_dir/tiny-imagenet-200`` (see the module docstring).

    ``verify_images=True`` decodes every image in ``setup`` and reports all damaged files at once;
    otherwise a damaged image raises an error naming it when it is read.

    Example:
        >>> dm = TinyImageNetDataModule("data", batch_size=256); dm.setup("fit")
    """

    num_classes = 200
    base_folder = "tiny-imagenet-200"
    url = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    filename = "tiny-imagenet-200.zip"
    md5 = "90528d7ca1a48142e341f4ef8d21d0de"
    mean = (0.480, 0.448, 0.397)
    std = (0.276, 0.269, 0.282)
    image_size = 64

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 4,
        examples_per_class: int = 10,
        download: bool = False,
        verify_images: bool = False,
        pin_memory: bool = True,
        scoring_batch_size: int | None = None,
    ) -> None:
        super().__init__(
            data_dir, batch_size, num_workers, examples_per_class, download, pin_memory, scoring_batch_size
        )
        self.verify_images = verify_images

    def complete(self) -> bool:
        return (self.folder / "wnids.txt").is_file()

    def train_transform(self) -> T.Compose:
        crop = T.RandomResizedCrop(self.image_size, scale=(0.1, 1.0), ratio=(0.8, 1.25))
        return self.normalized_transform(crop, T.RandomHorizontalFlip())

    def _read_wnids(self) -> list[str]:
        self.check_present()
        path = self.folder / "wnids.txt"
        if not path.is_file():
            raise DatasetNotFoundError(f"Tiny-ImageNet file {path} is missing; the copy is incomplete")
        wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(wnids) != self.num_classes or len(set(wnids)) != len(wnids):
            raise CorruptDatasetError(
                f"Tiny-ImageNet file {path} lists {len(set(wnids))} distinct class ids, expected {self.num_classes}"
            )
        return sorted(wnids)

    def _train_samples(self, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
        samples = []
        for wnid, idx in class_to_idx.items():
            folder = self.folder / "train" / wnid / "images"
            if not folder.is_dir():
                raise DatasetNotFoundError(f"Tiny-ImageNet folder {folder} (class {wnid}) is missing")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _EXTENSIONS)
            if not files:
                raise CorruptDatasetError(f"Tiny-ImageNet folder {folder} (class {wnid}) holds no images")
            samples += [(str(p), idx) for p in files]
        return samples

    def _val_samples(self, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
        ann = self.folder / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise DatasetNotFoundError(f"Tiny-ImageNet file {ann} is missing; the copy is incomplete")
        samples = []
        for lineno, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise CorruptDatasetError(
                    f"{ann}, line {lineno}: expected '<file>\\t<wnid>\\t...', got {line!r}"
                )
            name, wnid = fields[0].strip(), fields[1].strip()
            if wnid not in class_to_idx:
                raise CorruptDatasetError(f"{ann}, line {lineno}: class id {wnid!r} is not in wnids.txt")
            path = self.folder / "val" / "images" / name
            if not path.is_file():
                raise DatasetNotFoundError(f"{ann}, line {lineno} names {path}, which does not exist")
            samples.append((str(path), class_to_idx[wnid]))
        if not samples:
            raise CorruptDatasetError(f"Tiny-ImageNet file {ann} lists no images")
        return samples

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        wnids = self._read_wnids()
        self.classes = wnids
        class_to_idx = {w: i for i, w in enumerate(wnids)}
        train, val = self._train_samples(class_to_idx), self._val_samples(class_to_idx)
        if self.verify_images:
            verify_images([p for p, _ in train + val])
        self.set_splits(ImageListDataset, train, val)

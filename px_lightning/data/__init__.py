"""LightningDataModules: CIFAR-10/100, Tiny-ImageNet, ImageNet, VOC 2012, Digits.

Every classification DataModule takes ``batch_size``, ``num_workers`` and ``examples_per_class``, has a
``num_classes`` attribute, and a ``scoring_dataloader()`` with the first ``examples_per_class`` training
images of each class (the pruning callback's scoring data).

Example:
    >>> from px_lightning.data import CIFAR10DataModule
    >>> dm = CIFAR10DataModule(data_dir="data", download=True)
"""

from ._common import ClassificationDataModule, CorruptDatasetError, DatasetNotFoundError, balanced_indices
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .digits import DigitsDataModule
from .imagenet import ImageNetDataModule
from .tiny_imagenet import TinyImageNetDataModule
from .voc import VOCSegmentationDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ClassificationDataModule",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "ImageNetDataModule",
    "TinyImageNetDataModule",
    "VOCSegmentationDataModule",
    "balanced_indices",
]

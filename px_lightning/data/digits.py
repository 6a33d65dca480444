"""Digits: the 8x8 handwritten digits that ship inside scikit-learn, as a 32x32 RGB DataModule.

Real data with no download, for the quickstart and for tests: the 1,797 images of
``sklearn.datasets.load_digits`` are scaled to [0, 1], upsampled to 32x32 (bilinear), repeated over three
channels (so the CIFAR backbones take them unchanged) and normalised with the training split's mean and
std. A fixed stratified split (seed 0) gives 1,259 training, 269 validation and 269 test images.
``augment=True`` adds a random crop with padding 2 for training (no flip: digits are not mirror images).

Example:
    >>> dm = DigitsDataModule(batch_size=64)
    >>> trainer.fit(ImageClassifier("small_cnn", num_classes=dm.num_classes), datamodule=dm)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ._common import ClassificationDataModule

_SPLIT_SEED = 0
_VAL_FRACTION = 0.15
_TEST_FRACTION = 0.15


class TensorImageDataset(Dataset):
    """Float images ``(N, C, H, W)`` with labels; ``transform`` (if any) maps one image tensor."""

    def __init__(self, images: Tensor, targets: Tensor, transform=None) -> None:
        self.images = images
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = self.images[index]
        return (self.transform(img) if self.transform else img), self.targets[index]


class _RandomCropPad:
    """Random crop of the original size after zero padding (on a normalised tensor: pads with 0 = mean)."""

    def __init__(self, padding: int) -> None:
        self.padding = padding

    def __call__(self, img: Tensor) -> Tensor:
        p = self.padding
        h, w = img.shape[-2:]
        padded = F.pad(img, (p, p, p, p))
        i, j = torch.randint(0, 2 * p + 1, (2,)).tolist()
        return padded[..., i : i + h, j : j + w]


def _load_digits_32() -> tuple[Tensor, Tensor]:
    # Imported here, not at module level: only the Digits data needs scikit-learn, and it is slow to import.
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # a required dependency of px-lightning, so the environment is incomplete
        raise ImportError(
            "DigitsDataModule needs scikit-learn, a dependency of px-lightning that is missing from this "
            "environment: pip install scikit-learn (or reinstall px-lightning)"
        ) from e
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return images, torch.tensor(digits.target, dtype=torch.long)


def _stratified_split(targets: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    # Per class: a seeded permutation, then the same val/test fractions; fixed across runs and machines.
    gen = torch.Generator().manual_seed(_SPLIT_SEED)
    train, val, test = [], [], []
    for c in range(num_classes):
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val, n_test = round(len(idx) * _VAL_FRACTION), round(len(idx) * _TEST_FRACTION)
        val.append(idx[:n_val])
        test.append(idx[n_val : n_val + n_test])
        train.append(idx[n_val + n_test :])
    return tuple(torch.cat(parts).sort().values for parts in (train, val, test))


class DigitsDataModule(ClassificationDataModule):
    """The scikit-learn digits at 32x32 (see the module docstring); 10 classes.

    ``data_dir`` is accepted so that every DataModule takes the same arguments (a config can switch
    DataModule class without editing them), but nothing is read from or written to it: the digits ship
    inside scikit-learn.

    Example:
        >>> dm = DigitsDataModule(); dm.setup("fit"); len(dm.train_set)
        1259
    """

    num_classes = 10

    def __init__(
        self,
        data_dir: str | Path | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        examples_per_class: int = 10,
        augment: bool = False,
        pin_memory: bool = False,
        scoring_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, examples_per_class, pin_memory, scoring_batch_size)
        self.data_dir = data_dir
        self.augment = augment

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, targets = _load_digits_32()
        train_idx, val_idx, test_idx = _stratified_split(targets, self.num_classes)
        train = images[train_idx]
        # One mean/std over the training split (all channels are equal copies).
        mean, std = train.mean(), train.std()
        images = (images - mean) / std
        self.mean, self.std = float(mean), float(std)
        augment = _RandomCropPad(2) if self.augment else None
        self.train_set = TensorImageDataset(images[train_idx], targets[train_idx], augment)
        self.scoring_source = TensorImageDataset(images[train_idx], targets[train_idx])
        self.val_set = TensorImageDataset(images[val_idx], targets[val_idx])
        self.test_set = TensorImageDataset(images[test_idx], targets[test_idx])

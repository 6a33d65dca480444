"""CIFAR-10 and CIFAR-100 DataModules reading the official python-pickle layout.

``data_dir`` holds ``cifar-10-batches-py/`` (``data_batch_1`` ... ``data_batch_5``, ``test_batch``,
``batches.meta``) or ``cifar-100-python/`` (``train``, ``test``, ``meta``), as the official archives and
torchvision lay them out. Files on disk are checked by their structure (keys, shapes, label ranges), not by
MD5, so any copy in the real format is read; a download is checked against the official MD5.

Published transforms: random crop 32 with padding 4 and horizontal flip for training, normalisation with
the dataset's mean and std. The test set serves as validation and test set, as in the published protocol.

Example:
    >>> dm = CIFAR10DataModule(data_dir="data", download=True, batch_size=128)
    >>> trainer.fit(ImageClassifier("resnet20", num_classes=dm.num_classes), datamodule=dm)
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import Dataset

from ._common import ArchiveDataModule, CorruptDatasetError, DatasetNotFoundError


class ArrayImageDataset(Dataset):
    """uint8 images ``(N, H, W, 3)`` with integer labels, returned through ``transform`` as PIL images."""

    def __init__(self, images: np.ndarray, targets: list[int], transform=None) -> None:
        self.images = images
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        return (self.transform(img) if self.transform else img), self.targets[index]


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DatasetNotFoundError(
            f"CIFAR file {path} is missing; the copy is incomplete (download=True fetches it)"
        )
    try:
        with open(path, "rb") as f:
            # The official files are Python 2 pickles: latin1 turns their byte strings into str keys.
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # truncated or not a pickle: pickle raises many different types
        raise CorruptDatasetError(
            f"CIFAR file {path} cannot be read as a pickle ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, dict):
        raise CorruptDatasetError(f"CIFAR file {path} holds a {type(obj).__name__}, expected a dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    batch = _load_pickle(path)
    for key in ("data", label_key):
        if key not in batch:
            raise CorruptDatasetError(f"CIFAR file {path} has no {key!r} entry (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = [int(v) for v in batch[label_key]]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptDatasetError(
            f"CIFAR file {path}: 'data' is {data.dtype} of shape {data.shape}, expected uint8 (N, 3072)"
        )
    if len(labels) != data.shape[0]:
        raise CorruptDatasetError(f"CIFAR file {path}: {data.shape[0]} images but {len(labels)} labels")
    if labels and (min(labels) < 0 or max(labels) >= num_classes):
        raise CorruptDatasetError(
            f"CIFAR file {path}: labels range {min(labels)}..{max(labels)}, expected 0..{num_classes - 1}"
        )
    # Rows are channel-major (R plane, G plane, B plane) 32x32 images.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_split(folder: Path, files: tuple[str, ...], label_key: str, num_classes: int):
    parts = [_read_batch(folder / f, label_key, num_classes) for f in files]
    return np.concatenate([p[0] for p in parts]), [t for p in parts for t in p[1]]


class _CIFARDataModule(ArchiveDataModule):
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str

    def complete(self) -> bool:
        return all((self.folder / f).is_file() for f in [*self.train_files, *self.test_files, self.meta_file])

    def train_transform(self) -> T.Compose:
        return self.normalized_transform(T.RandomCrop(32, padding=4), T.RandomHorizontalFlip())

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.check_present()
        meta = _load_pickle(self.folder / self.meta_file)
        train = _read_split(self.folder, self.train_files, self.label_key, self.num_classes)
        test = _read_split(self.folder, self.test_files, self.label_key, self.num_classes)
        self.classes = self._class_names(meta)
        self.set_splits(lambda data, transform: ArrayImageDataset(*data, transform), train, test)

    def _class_names(self, meta: dict) -> list[str]:
        names = meta.get(self.names_key)
        if not isinstance(names, list) or len(names) != self.num_classes:
            raise CorruptDatasetError(
                f"CIFAR file {self.folder / self.meta_file}: {self.names_key!r} is not {self.num_classes} names"
            )
        return names


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 from ``data_dir/cifar-10-batches-py`` (see the module docstring).

    Example:
        >>> dm = CIFAR10DataModule("data", download=True); dm.prepare_data(); dm.setup("fit")
    """

    num_classes = 10
    base_folder = "cifar-10-batches-py"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    filename = "cifar-10-python.tar.gz"
    md5 = "c58f30108f718f92721af3b95e74349a"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    label_key = "labels"
    names_key = "label_names"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (fine labels) from ``data_dir/cifar-100-python`` (see the module docstring).

    Example:
        >>> dm = CIFAR100DataModule("data", download=True)
    """

    num_classes = 100
    base_folder = "cifar-100-python"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    filename = "cifar-100-python.tar.gz"
    md5 = "eb9058c3a382ffc7106e4002c42a8d85"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    label_key = "fine_labels"
    names_key = "fine_label_names"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)

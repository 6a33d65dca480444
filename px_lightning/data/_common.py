"""Shared pieces of the DataModules: errors, argument checks, downloads, balanced scoring subsets, loaders,
the ImageNet normalisation.

Example:
    >>> indices = balanced_indices([0, 1, 0, 1, 2, 2], examples_per_class=1, num_classes=3)
    >>> indices
    [0, 1, 4]
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

#: The ImageNet channel statistics (RGB, pixels in [0, 1]): the ImageNet DataModule's normalisation, and the
#: VOC transforms' and the segmenter's, whose encoders are pre-trained on ImageNet.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset (or a file of it) is not where the DataModule looks; the message says how to get it."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but is damaged or not in the expected format; the message names the file."""


def check_count(value: object, argument: str, low: int = 1, none: str | None = None) -> object:
    """Refuse ``value`` unless it is an ``int`` >= ``low`` (``True`` is no count); with ``none`` (what
    ``None`` stands for, e.g. ``"= batch_size"``) ``None`` is allowed too. Returns ``value``.

    Example:
        >>> check_count(0, "num_workers", low=0)
        0
        >>> check_count(None, "scoring_batch_size", none="= batch_size") is None
        True
    """
    if value is None and none is not None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = f"an integer >= {low}" + ("" if none is None else f" or None ({none})")
        raise ValueError(f"{argument} must be {allowed}, got {value!r}")
    return value


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    pin_memory: bool,
    drop_last: bool = False,
) -> DataLoader:
    """The training/evaluation ``DataLoader`` of every DataModule: pinned memory only where CUDA is, and
    workers kept alive between epochs.

    Example:
        >>> loader = make_loader(dataset, batch_size=128, shuffle=True, num_workers=4, pin_memory=True)
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def subset_loader(dataset: Dataset, indices: Sequence[int], batch_size: int) -> DataLoader:
    """The scoring ``DataLoader``: ``dataset[indices]`` in that order, the same batches on every call.

    Example:
        >>> [len(y) for _, y in subset_loader(dataset, [0, 5, 9], batch_size=2)]
        [2, 1]
    """
    # No workers: the subset is small, and the order must not depend on worker scheduling.
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)


def md5sum(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_and_extract(url: str, data_dir: str | Path, filename: str, md5: str) -> Path:
    """Fetch ``url`` into ``data_dir/filename`` (unless a copy with the right MD5 is there), check the
    MD5, and extract the archive (.tar.gz or .zip) into ``data_dir``. Returns the archive's path.

    Any URL that ``urllib`` opens works (``https://``, ``file://``). A wrong MD5 deletes the download and
    raises ``CorruptDatasetError``.

    Example:
        >>> download_and_extract(CIFAR10_URL, "data", "cifar-10-python.tar.gz", CIFAR10_MD5)
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / filename
    if not (archive.is_file() and md5sum(archive) == md5):
        part = archive.with_name(archive.name + ".part")
        try:
            with urllib.request.urlopen(url) as response, open(part, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as e:
            part.unlink(missing_ok=True)
            raise DatasetNotFoundError(f"could not download {url} to {archive}: {e}") from e
        got = md5sum(part)
        if got != md5:
            part.unlink(missing_ok=True)
            raise CorruptDatasetError(
                f"download of {url} has MD5 {got}, expected {md5}: the file is damaged or not the official "
                "archive; it was deleted, try again"
            )
        part.replace(archive)
    _extract(archive, data_dir)
    return archive


def _extract(archive: Path, dest: Path) -> None:
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(dest)
        else:
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):
                    # filter="data" refuses absolute paths and links out of dest
                    tf.extractall(dest, filter="data")
                else:  # Python without extraction filters (before 3.10.12 / 3.11.4): check names ourselves
                    root = dest.resolve()
                    for member in tf.getmembers():
                        target = (dest / member.name).resolve()
                        if root not in target.parents and target != root or member.issym() or member.islnk():
                            raise CorruptDatasetError(f"{archive} holds an unsafe entry {member.name!r}")
                    tf.extractall(dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise CorruptDatasetError(f"cannot extract {archive}: {e}; delete it and download again") from e


def balanced_indices(targets: Sequence[int], examples_per_class: int, num_classes: int) -> list[int]:
    """The first ``examples_per_class`` indices of each class, in dataset order (deterministic).

    Raises ``ValueError`` naming the classes that have too few examples.

    Example:
        >>> balanced_indices([2, 0, 0, 1, 2, 1], 1, 3)
        [0, 1, 3]
    """
    check_count(examples_per_class, "examples_per_class")
    picked: dict[int, list[int]] = {c: [] for c in range(num_classes)}
    for i, t in enumerate(targets):
        t = int(t)
        if t in picked and len(picked[t]) < examples_per_class:
            picked[t].append(i)
    short = {c: len(v) for c, v in picked.items() if len(v) < examples_per_class}
    if short:
        shown = ", ".join(f"class {c}: {n}" for c, n in list(short.items())[:10])
        raise ValueError(
            f"examples_per_class={examples_per_class}, but the training set has fewer examples for "
            f"{len(short)} class(es) ({shown}{' ...' if len(short) > 10 else ''}); lower examples_per_class"
        )
    return sorted(i for v in picked.values() for i in v)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB; a file that fails to decode raises ``CorruptDatasetError`` naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as e:
        raise DatasetNotFoundError(f"image {path} is missing") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptDatasetError(f"image {path} cannot be decoded ({e}); replace or remove it") from e


def verify_images(paths: Sequence[str | Path], num_workers: int = 8) -> None:
    """Decode every image; raise ``CorruptDatasetError`` listing the ones that fail."""

    def _check(p: str | Path) -> str | None:
        try:
            load_rgb(p)
        except (CorruptDatasetError, DatasetNotFoundError) as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        errors = [e for e in pool.map(_check, paths) if e]
    if errors:
        raise CorruptDatasetError(f"{len(errors)} image(s) failed to decode: " + "; ".join(errors[:5]))


class ImageListDataset(Dataset):
    """``(path, label)`` samples read as RGB PIL images, then ``transform``; errors name the file."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable | None = None) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        img = load_rgb(path)
        return (self.transform(img) if self.transform else img), label


class ClassificationDataModule(L.LightningDataModule):
    """Common loaders for the classification DataModules: subclasses build ``self.train_set``,
    ``self.val_set``, ``self.test_set`` (datasets with a ``targets`` list) and ``self.scoring_source``
    (the training images with the evaluation transform) in ``setup``.

    ``scoring_dataloader()`` gives the first ``examples_per_class`` training images of each class, in
    dataset order, without augmentation, in batches of ``scoring_batch_size`` (``None``: ``batch_size``):
    the same batches on every call and every rank.

    Why a separate ``scoring_batch_size``: the pruning scores depend on how the scoring images are batched
    (PX and the BatchNorm warm-up run the network in train mode, so BatchNorm normalises with each batch's
    statistics). ``batch_size`` is the per-process batch, which a DDP run usually divides by the number
    of GPUs; fix ``scoring_batch_size`` to get the same masks whatever the number of ranks.

    Example:
        >>> dm = CIFAR10DataModule("data", batch_size=128 // world_size, scoring_batch_size=128)
        >>> [len(x) for x, _ in dm.scoring_dataloader()]   # 100 images: the same on 1 or 8 GPUs
        [100]
    """

    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 4,
        examples_per_class: int = 10,
        pin_memory: bool = True,
        scoring_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        check_count(batch_size, "batch_size")
        check_count(num_workers, "num_workers", low=0)
        check_count(examples_per_class, "examples_per_class")
        check_count(scoring_batch_size, "scoring_batch_size", none="= batch_size")
        self.batch_size = batch_size
        self.scoring_batch_size = scoring_batch_size
        self.num_workers = num_workers
        self.examples_per_class = examples_per_class
        self.pin_memory = pin_memory
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.scoring_source: Dataset | None = None

    def normalized_transform(self, *steps: Callable) -> T.Compose:
        """``steps`` on the PIL image, then the tensor conversion and the normalisation with ``mean``/``std``.

        Example:
            >>> dm.normalized_transform(T.RandomCrop(32, padding=4))
        """
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def eval_transform(self) -> Callable:
        """The evaluation transform (also of the scoring images): tensor and normalisation only."""
        return self.normalized_transform()

    def train_transform(self) -> Callable:
        """The training transform: the subclass's augmentation, then ``normalized_transform``."""
        raise NotImplementedError(f"{type(self).__name__} defines no train_transform()")

    def set_splits(self, dataset: Callable[[object, Callable], Dataset], train: object, test: object) -> None:
        """Build the sets with ``dataset(data, transform)``: the training set from ``train`` with
        ``train_transform()``; the scoring source (the same images) and the validation set, which is the
        test set too, from ``test`` with ``eval_transform()``.

        Example:
            >>> dm.set_splits(ImageListDataset, train_samples, val_samples)
        """
        self.train_set = dataset(train, self.train_transform())
        self.scoring_source = dataset(train, self.eval_transform())
        self.val_set = self.test_set = dataset(test, self.eval_transform())

    def _loader(self, dataset: Dataset | None, split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}.setup() has not built the {split} set; call setup() first"
            )
        return make_loader(dataset, self.batch_size, shuffle, self.num_workers, self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split in order, ``(image, label)`` pairs: what ``px-lightning predict`` runs on."""
        return self.test_dataloader()

    def scoring_indices(self) -> list[int]:
        """Indices (into the training set) of the balanced scoring subset."""
        if self.scoring_source is None:
            self.setup("fit")
        return balanced_indices(self.scoring_source.targets, self.examples_per_class, self.num_classes)

    def scoring_dataloader(self) -> DataLoader:
        """The class-balanced scoring subset: first ``examples_per_class`` of each class, no shuffling,
        in batches of ``scoring_batch_size`` (``batch_size`` when it is ``None``); the last may be smaller.

        Example:
            >>> inputs, targets = next(iter(dm.scoring_dataloader()))
        """
        indices = self.scoring_indices()
        return subset_loader(self.scoring_source, indices, self.scoring_batch_size or self.batch_size)


class ArchiveDataModule(ClassificationDataModule):
    """A classification DataModule read from ``data_dir/base_folder``, the folder that the official archive
    (``url``, ``filename``, ``md5``) unpacks to; ``download=True`` fetches and checks it in ``prepare_data``
    unless ``complete()`` finds the copy there.

    Example:
        >>> dm = CIFAR10DataModule("data", download=True); dm.prepare_data(); dm.folder
        PosixPath('data/cifar-10-batches-py')
    """

    base_folder: str
    url: str
    filename: str
    md5: str

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 4,
        examples_per_class: int = 10,
        download: bool = False,
        pin_memory: bool = True,
        scoring_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, examples_per_class, pin_memory, scoring_batch_size)
        self.data_dir = Path(data_dir)
        self.download = download

    @property
    def folder(self) -> Path:
        return self.data_dir / self.base_folder

    def complete(self) -> bool:
        """Whether the copy in ``folder`` is there (then ``prepare_data`` downloads nothing)."""
        raise NotImplementedError(f"{type(self).__name__} defines no complete()")

    def prepare_data(self) -> None:
        if self.download and not self.complete():
            download_and_extract(self.url, self.data_dir, self.filename, self.md5)

    def check_present(self) -> None:
        """Raise ``DatasetNotFoundError`` saying how to get the data when ``folder`` does not exist."""
        if not self.folder.is_dir():
            raise DatasetNotFoundError(
                f"{type(self).__name__}: {self.folder} does not exist; pass download=True to fetch "
                f"{self.url}, or point data_dir at the folder that holds {self.base_folder}/"
            )

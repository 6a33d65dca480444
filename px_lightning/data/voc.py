"""Pascal VOC 2012 semantic segmentation: the dataset reader, the published transforms and the DataModule.

``data_dir`` holds ``VOCdevkit/VOC2012/`` as the official trainval archive unpacks it: ``JPEGImages/*.jpg``,
``SegmentationClass/*.png`` (palette PNGs whose pixel values are class ids, 255 = void/boundary) and
``ImageSets/Segmentation/{train,val}.txt``. The SBD-augmented training set (``SegmentationClassAug/*.png``
with ``ImageSets/Segmentation/train_aug.txt``, 10 582 images) is used for training when present.

Transforms follow the published DeepLabV3+ recipe: random scale 0.5-2.0, pad (mask with 255) and random
crop to ``crop_size``, horizontal flip, ImageNet mean/std; validation on full images (batch 1) or a fixed
center crop.

Errors use the classification DataModules' classes: ``DatasetNotFoundError`` (a ``FileNotFoundError``) when a
folder, list, image, mask or archive is missing, ``CorruptDatasetError`` (a ``ValueError``) when one exists
but is damaged or not in the VOC format; each message names the file and says what to do.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse
from urllib.request import url2pathname

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ._common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorruptDatasetError,
    DatasetNotFoundError,
    check_count,
    load_rgb,
    make_loader,
    md5sum,
    subset_loader,
)

# The official trainval archive (the test images carry no public labels).
VOC2012_URL = "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC2012_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
IGNORE_INDEX = 255


def voc_root(data_dir: str | Path) -> Path:
    """``data_dir/VOCdevkit/VOC2012``, where the archive unpacks."""
    return Path(data_dir) / "VOCdevkit" / "VOC2012"


def download_voc2012(data_dir: str | Path, url: str | None = None, md5: str | None = None) -> Path:
    """Fetch the VOC 2012 trainval archive, check its MD5 and unpack it into ``data_dir``.

    Skips everything when ``VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt`` already exists.
    ``url``/``md5`` default to the official archive (about 2 GB); a mirror, a ``file://`` URL or a local
    path of a copy may be given instead. An archive whose MD5 differs is deleted and refused
    (``CorruptDatasetError``) before anything is unpacked; a missing local copy or a failed download raises
    ``DatasetNotFoundError``. Returns the ``VOC2012`` folder.

    Example:
        >>> download_voc2012("data/")  # data/VOCdevkit/VOC2012/...
    """
    from torchvision.datasets.utils import download_url, extract_archive

    root = voc_root(data_dir)
    if (root / "ImageSets" / "Segmentation" / "train.txt").is_file():
        return root
    # Module globals read at call time, so a mirror can be configured by setting them.
    url, md5 = url or VOC2012_URL, md5 or VOC2012_MD5
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):  # a local copy: torchvision's downloader handles only http(s)
        source = Path(url2pathname(parsed.path)) if parsed.scheme else Path(url)
        if not source.is_file():
            raise DatasetNotFoundError(
                f"VOC archive {source} (from {url!r}) does not exist; give the path of a copy of "
                "VOCtrainval_11-May-2012.tar, or leave url unset to download the official archive"
            )
        archive = data_dir / source.name
        if source.resolve() != archive.resolve():
            shutil.copyfile(source, archive)
    else:
        archive = data_dir / Path(parsed.path).name
        try:
            download_url(url, str(data_dir), filename=archive.name)
        except OSError as err:  # URLError, HTTP errors, connection resets
            raise DatasetNotFoundError(
                f"could not download {url} to {archive}: {err}; check the network or the mirror, or unpack "
                f"a copy of the archive into {data_dir}"
            ) from err
    actual = md5sum(archive)
    if actual != md5:
        archive.unlink()
        raise CorruptDatasetError(
            f"VOC archive from {url} has MD5 {actual}, expected {md5}: the download is corrupted or not the "
            "official VOCtrainval_11-May-2012.tar; it was deleted, retry or check the mirror"
        )
    extract_archive(str(archive), str(data_dir))
    if not (root / "ImageSets" / "Segmentation" / "train.txt").is_file():
        raise CorruptDatasetError(
            f"the archive {archive} (from {url}) did not unpack to {root}/ImageSets/Segmentation/train.txt: "
            "it is not the VOC 2012 trainval archive; delete it and give the official one"
        )
    return root


class SegmentationTransform:
    """Joint image/mask transform: PIL image + uint8 mask -> normalised float image, long mask.

    ``mode="train"``: random scale in ``scale_range``, pad to ``crop_size`` (image with the mean, i.e.
    0 after normalisation; mask with 255), random crop, horizontal flip with probability 0.5.
    ``mode="center_crop"``: pad and center crop to ``crop_size``. ``mode="full"``: normalise only.
    Randomness comes from ``torch``'s generator, so ``seed_everything(workers=True)`` makes it reproducible.

    Example:
        >>> image, mask = SegmentationTransform("train", crop_size=513)(pil_image, mask_array)
    """

    def __init__(
        self,
        mode: str = "train",
        crop_size: int = 513,
        scale_range: tuple[float, float] = (0.5, 2.0),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if mode not in ("train", "center_crop", "full"):
            raise ValueError(f"mode must be 'train', 'center_crop' or 'full', got {mode!r}")
        self.mode, self.crop_size, self.scale_range = mode, int(crop_size), tuple(scale_range)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        y = torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy()).long()
        x = (x - self.mean) / self.std
        if self.mode == "train":
            x, y = self._random_scale(x, y)
            x, y = self._pad(x, y)
            top = int(torch.randint(0, x.shape[1] - self.crop_size + 1, ()))
            left = int(torch.randint(0, x.shape[2] - self.crop_size + 1, ()))
            x, y = self._crop(x, y, top, left)
            if torch.rand(()) < 0.5:
                x, y = x.flip(-1), y.flip(-1)
        elif self.mode == "center_crop":
            x, y = self._pad(x, y)
            top, left = (x.shape[1] - self.crop_size) // 2, (x.shape[2] - self.crop_size) // 2
            x, y = self._crop(x, y, top, left)
        return x.contiguous(), y.contiguous()

    def _random_scale(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * float(torch.rand(()))
        size = [max(1, round(x.shape[1] * scale)), max(1, round(x.shape[2] * scale))]
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        # Labels must stay class ids: nearest neighbour, never interpolated.
        y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return x, y

    def _pad(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        ph, pw = max(self.crop_size - x.shape[1], 0), max(self.crop_size - x.shape[2], 0)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            y = F.pad(y, (0, pw, 0, ph), value=IGNORE_INDEX)
        return x, y

    def _crop(self, x: Tensor, y: Tensor, top: int, left: int) -> tuple[Tensor, Tensor]:
        c = self.crop_size
        return x[:, top : top + c, left : left + c], y[top : top + c, left : left + c]


class VOCSegmentationDataset(Dataset):
    """The images and class masks listed in ``ImageSets/Segmentation/<split>.txt`` of a VOC 2012 tree.

    Every listed image and mask must exist (checked when the dataset is built); each mask must have its
    image's size and hold class ids below ``num_classes`` or 255 (checked when a sample is read). Errors
    name the offending file.

    Example:
        >>> ds = VOCSegmentationDataset("data/VOCdevkit/VOC2012", "val", SegmentationTransform("full"))
        >>> image, mask = ds[0]  # float (3, H, W), long (H, W)
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: SegmentationTransform | None = None,
        mask_dir: str = "SegmentationClass",
        num_classes: int = 21,
    ) -> None:
        self.root, self.split, self.transform, self.num_classes = Path(root), split, transform, num_classes
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetNotFoundError(
                f"VOC split list {split_file} not found: data_dir must hold VOCdevkit/VOC2012 as the official "
                "archive unpacks it (pass download=True to fetch it)"
            )
        self.names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not self.names:
            raise CorruptDatasetError(
                f"VOC split list {split_file} is empty: it must list image ids, one a line; restore it "
                "from the archive"
            )
        self.images = [self.root / "JPEGImages" / f"{n}.jpg" for n in self.names]
        self.masks = [self.root / mask_dir / f"{n}.png" for n in self.names]
        for image, mask in zip(self.images, self.masks):
            if not image.is_file():
                raise DatasetNotFoundError(
                    f"image {image} listed in {split_file} does not exist; restore it or remove its line"
                )
            if not mask.is_file():
                raise DatasetNotFoundError(
                    f"image {image} has no mask: {mask} (listed in {split_file}) is missing; restore it or "
                    "remove the image's line"
                )

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The raw ``(RGB image, uint8 class-id mask)`` of sample ``index``, checked."""
        image_path, mask_path = self.images[index], self.masks[index]
        image = load_rgb(image_path)
        mask = _read_mask(mask_path)
        if mask.shape != (image.height, image.width):
            raise CorruptDatasetError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} is "
                f"{image.width}x{image.height}: each mask must have its image's size"
            )
        bad = np.unique(mask[(mask >= self.num_classes) & (mask != IGNORE_INDEX)])
        if bad.size:
            raise CorruptDatasetError(
                f"mask {mask_path} holds class ids {bad.tolist()}: expected 0..{self.num_classes - 1} or "
                f"{IGNORE_INDEX} (ignored); check num_classes or the mask file"
            )
        return image, mask

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.read(index)
        if self.transform is None:
            return torch.from_numpy(np.array(image)).permute(2, 0, 1), torch.from_numpy(mask).long()
        return self.transform(image, mask)


def _read_mask(path: Path) -> np.ndarray:
    """A VOC class-id mask as uint8; a missing, undecodable or colour PNG raises naming the file."""
    try:
        with Image.open(path) as png:
            if png.mode not in ("P", "L"):
                raise CorruptDatasetError(
                    f"mask {path} has mode {png.mode!r}: VOC masks are palette ('P') or grey-level ('L') "
                    "PNGs whose pixel values are class ids, not colour images"
                )
            return np.array(png, dtype=np.uint8)
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"mask {path} is missing; restore it") from err
    except (OSError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise CorruptDatasetError(f"mask {path} cannot be decoded ({err}); replace it") from err


def _balanced_indices(dataset: VOCSegmentationDataset, per_class: int) -> list[int]:
    """Indices, in list order, of the first ``per_class`` images showing each foreground class."""
    counts = dict.fromkeys(range(1, dataset.num_classes), 0)
    chosen = []
    for index, mask_path in enumerate(dataset.masks):
        if all(c >= per_class for c in counts.values()):
            break  # only the masks up to here are read
        shown = {int(v) for v in np.unique(_read_mask(mask_path))} & counts.keys()
        wanted = [c for c in shown if counts[c] < per_class]
        if wanted:
            chosen.append(index)
            for c in shown:
                counts[c] += 1
    return chosen


class VOCSegmentationDataModule(L.LightningDataModule):
    """Pascal VOC 2012 segmentation (21 classes, 255 ignored) with the published DeepLabV3+ transforms.

    Args:
        data_dir: folder holding ``VOCdevkit/VOC2012`` (where ``download=True`` unpacks the archive).
        batch_size: training batch size (4 in the published runs).
        crop_size: training crop (513 published); also the validation crop with ``val_mode="center_crop"``.
        download: fetch the official trainval archive (MD5-checked) in ``prepare_data`` when absent.
        num_workers: DataLoader worker processes.
        val_mode: ``"full"``: full images, batch 1 (the published evaluation); ``"center_crop"``:
            pad/center-crop to ``crop_size``, batched.
        augmented: use the SBD training list (``SegmentationClassAug`` with ``train_aug.txt``): ``None``
            uses it when present, ``True`` requires it, ``False`` uses ``train.txt``.
        scale_range: random scale range of the training transform.
        scoring_batches: batches of ``scoring_batch_size`` that ``scoring_dataloader()`` returns for pruning.
        scoring_seed: seed choosing the scoring images (the same on every rank and run).
        examples_per_class: when set, ``scoring_dataloader()`` takes instead a class-balanced subset: for
            each foreground class, the first ``examples_per_class`` training images (in list order) whose
            mask shows it (an image counts for every class it shows); background is in nearly every image.
        num_classes: class count the masks are checked against.
        scoring_batch_size: batch size of ``scoring_dataloader()`` (``None``: ``batch_size``). The pruning
            scores depend on the batching (train-mode BatchNorm in PX and the BatchNorm warm-up), and
            ``batch_size`` is per process, usually divided by the GPU count under DDP: fix this to get the
            same scoring data and masks whatever the number of ranks.

    Example:
        >>> dm = VOCSegmentationDataModule("data/", batch_size=4, crop_size=513, download=True)
        >>> trainer.fit(SemanticSegmenter(), datamodule=dm)
    """

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 4,
        crop_size: int = 513,
        download: bool = False,
        num_workers: int = 4,
        val_mode: Literal["full", "center_crop"] = "full",
        augmented: bool | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        scoring_batches: int = 1,
        scoring_seed: int = 0,
        examples_per_class: int | None = None,
        num_classes: int = 21,
        pin_memory: bool = True,
        scoring_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if val_mode not in ("full", "center_crop"):
            raise ValueError(f"val_mode must be 'full' or 'center_crop', got {val_mode!r}")
        check_count(batch_size, "batch_size")
        check_count(num_workers, "num_workers", low=0)
        check_count(crop_size, "crop_size")
        check_count(scoring_batches, "scoring_batches")
        check_count(examples_per_class, "examples_per_class", none="seeded scoring_batches instead")
        check_count(scoring_batch_size, "scoring_batch_size", none="= batch_size")
        if not (0 < scale_range[0] <= scale_range[1]):
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        # Plain types in the hyper-parameters: checkpoints then load with torch.load(weights_only=True).
        data_dir, scale_range = str(data_dir), tuple(float(v) for v in scale_range)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.batch_size, self.crop_size, self.download = batch_size, crop_size, download
        self.num_workers, self.val_mode, self.augmented = num_workers, val_mode, augmented
        self.scale_range, self.num_classes, self.pin_memory = tuple(scale_range), num_classes, pin_memory
        self.scoring_batches, self.scoring_seed = scoring_batches, scoring_seed
        self.scoring_batch_size = scoring_batch_size
        self.examples_per_class = examples_per_class
        self.ignore_index = IGNORE_INDEX
        self.class_names = list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else None
        self.train_set: VOCSegmentationDataset | None = None
        self.val_set: VOCSegmentationDataset | None = None

    @property
    def root(self) -> Path:
        return voc_root(self.data_dir)

    def prepare_data(self) -> None:
        if self.download:
            download_voc2012(self.data_dir)

    def _use_augmented(self) -> bool:
        present = (self.root / "SegmentationClassAug").is_dir() and (
            self.root / "ImageSets" / "Segmentation" / "train_aug.txt"
        ).is_file()
        if self.augmented and not present:
            raise DatasetNotFoundError(
                f"augmented=True needs the SBD-augmented set: {self.root}/SegmentationClassAug/ and "
                f"{self.root}/ImageSets/Segmentation/train_aug.txt; add them or pass augmented=False"
            )
        return present if self.augmented is None else bool(self.augmented)

    def _train_dataset(self, transform: SegmentationTransform) -> VOCSegmentationDataset:
        if self._use_augmented():
            return VOCSegmentationDataset(
                self.root, "train_aug", transform, "SegmentationClassAug", self.num_classes
            )
        return VOCSegmentationDataset(self.root, "train", transform, "SegmentationClass", self.num_classes)

    def setup(self, stage: str | None = None) -> None:
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"{self.root} not found: data_dir={str(self.data_dir)!r} must hold VOCdevkit/VOC2012 as the "
                "official archive unpacks it; pass download=True to fetch it"
            )
        if stage in (None, "fit") and self.train_set is None:
            train = SegmentationTransform("train", self.crop_size, self.scale_range)
            self.train_set = self._train_dataset(train)
            if self.train_set.split == "train_aug":
                rank_zero_info(f"VOC: training on the SBD-augmented list ({len(self.train_set)} images)")
        if self.val_set is None:
            val = SegmentationTransform(self.val_mode, self.crop_size)
            self.val_set = VOCSegmentationDataset(
                self.root, "val", val, "SegmentationClass", self.num_classes
            )

    def _loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False
    ) -> DataLoader:
        return make_loader(dataset, batch_size, shuffle, self.num_workers, self.pin_memory, drop_last)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        # drop_last: a last batch of one would break BatchNorm in the ASPP pooling branch.
        drop_last = len(self.train_set) > self.batch_size
        return self._loader(self.train_set, self.batch_size, shuffle=True, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        # Full images differ in size, so they cannot be stacked: batch 1, as in the published evaluation.
        return self._loader(self.val_set, 1 if self.val_mode == "full" else self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The val split: VOC 2012 test labels are not public."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The val split, as validation reads it (``(image, mask)`` pairs)."""
        return self.val_dataloader()

    def scoring_dataloader(self) -> DataLoader:
        """Training images for pruning, center-cropped (no random augmentation), the same on every rank
        and rerun: ``scoring_batches`` batches of ``scoring_batch_size`` (``None``: ``batch_size``) drawn
        with ``scoring_seed``, or with ``examples_per_class`` the class-balanced subset described in the
        class docstring.

        Example:
            >>> images, masks = next(iter(dm.scoring_dataloader()))
        """
        self.setup("fit")
        fixed = SegmentationTransform("center_crop", self.crop_size)
        dataset = self._train_dataset(fixed)
        batch_size = self.scoring_batch_size or self.batch_size
        if self.examples_per_class is not None:
            indices = _balanced_indices(dataset, self.examples_per_class)
        else:
            count = min(len(dataset), self.scoring_batches * batch_size)
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.scoring_seed))
            indices = order[:count].tolist()
        return subset_loader(dataset, indices, batch_size)


__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VOC2012_MD5",
    "VOC2012_URL",
    "VOC_CLASSES",
    "SegmentationTransform",
    "VOCSegmentationDataModule",
    "VOCSegmentationDataset",
    "download_voc2012",
    "voc_root",
]

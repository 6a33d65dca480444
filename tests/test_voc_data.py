"""VOC 2012 DataModule on a tiny tree in the real on-disk format (tests/tiny_voc_data.py)."""

from __future__ import annotations

import hashlib
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_voc_data import BACKGROUND, CLASS_COLOURS, voc_palette, write_sample, write_voc

from px_lightning.data import CorruptDatasetError, DatasetNotFoundError, VOCSegmentationDataModule, voc
from px_lightning.data.voc import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationTransform,
    VOCSegmentationDataset,
    download_voc2012,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _rgb255(x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: (3, H, W) in 0..255."""
    return (x * STD + MEAN) * 255


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_voc(tmp_path_factory.mktemp("voc"))


def _dm(data_dir: Path, **kwargs) -> VOCSegmentationDataModule:
    kwargs = {"batch_size": 2, "crop_size": 48, "num_workers": 0, **kwargs}
    return VOCSegmentationDataModule(data_dir, **kwargs)


def test_tiny_tree_is_the_real_format_and_reads_like_torchvision(data_dir):
    from torchvision.datasets import VOCSegmentation

    root = data_dir / "VOCdevkit" / "VOC2012"
    png = Image.open(next((root / "SegmentationClass").glob("*.png")))
    assert png.mode == "P" and png.getpalette()[: 3 * 21] == voc_palette()[: 3 * 21]
    # An independent reader of the official layout sees the same images and class maps as ours.
    theirs = VOCSegmentation(str(data_dir), year="2012", image_set="val", download=False)
    ours = VOCSegmentationDataset(root, "val")
    assert len(ours) == len(theirs) == 3
    for i in range(len(ours)):
        image, mask = ours[i]
        their_image, their_mask = theirs[i]
        assert mask.dtype == torch.int64 and mask.shape == (their_image.height, their_image.width)
        assert np.array_equal(mask.numpy(), np.array(their_mask))
        assert np.array_equal(image.permute(1, 2, 0).numpy(), np.array(their_image))
        values = set(mask.unique().tolist())
        assert 255 in values and 0 in values and values - {0, 255} <= set(CLASS_COLOURS)


def test_datamodule_batches_are_integer_maps_with_255_kept(data_dir):
    dm = _dm(data_dir)
    dm.setup("fit")
    assert dm.train_set.split == "train" and len(dm.train_set) == 6  # no SBD list in this tree
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 48, 48) and x.dtype == torch.float32
    assert y.shape == (2, 48, 48) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= set(CLASS_COLOURS) | {0, 255}
    assert (y == 255).any()
    # Full-image validation: batch 1 at each image's own size (they differ).
    sizes = {tuple(x.shape[-2:]) for x, _ in dm.val_dataloader()}
    assert sizes == {(60, 80), (72, 54), (50, 66)}
    center = _dm(data_dir, val_mode="center_crop")
    center.setup("validate")
    x, y = next(iter(center.val_dataloader()))
    assert x.shape == (2, 3, 48, 48) and y.shape == (2, 48, 48)


def test_train_transform_keeps_image_and_mask_aligned(data_dir):
    ds = VOCSegmentationDataset(data_dir / "VOCdevkit" / "VOC2012", "train")
    image, mask = ds.read(0)
    transform = SegmentationTransform("train", crop_size=40)
    colours = {0: BACKGROUND, **CLASS_COLOURS}
    torch.manual_seed(0)
    for _ in range(20):
        x, y = transform(image, mask)
        rgb = _rgb255(x)
        interior = torch.ones_like(y, dtype=torch.bool)
        # Away from label edges (bilinear image resampling and JPEG blur them), colour gives the class.
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                interior[1:-1, 1:-1] &= (
                    y[1 + dy : y.shape[0] - 1 + dy, 1 + dx : y.shape[1] - 1 + dx] == y[1:-1, 1:-1]
                )
        interior[0, :] = interior[-1, :] = interior[:, 0] = interior[:, -1] = False
        for cls, colour in colours.items():
            where = interior & (y == cls)
            if where.any():
                err = (rgb[:, where] - torch.tensor(colour, dtype=torch.float32)[:, None]).abs().amax()
                assert err < 40, f"class {cls}: image colour off by {err}"
        # Padding: mask 255 and the image at the mean colour (0 after normalisation).
        pad = (x.abs().sum(0) == 0) & (y == 255)
        assert pad.sum() == (x.abs().sum(0) == 0).sum()


def test_known_pixel_follows_the_flip(tmp_path):
    voc_dir = write_voc(tmp_path, n_train=1, n_val=1) / "VOCdevkit" / "VOC2012"
    image = np.full((20, 30, 3), 128, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    image[4:10, 2:8] = (230, 30, 30)  # class 1 block in the top-left corner
    mask[4:10, 2:8] = 1
    mask[3, :] = 255
    write_sample(voc_dir, "2007_000000", image, mask)
    image, mask = VOCSegmentationDataset(voc_dir, "train").read(0)
    # Scale fixed at 1 and a crop as large as the padded image: the flip is the only random step.
    transform = SegmentationTransform("train", crop_size=32, scale_range=(1.0, 1.0))
    flips = set()
    torch.manual_seed(0)
    for _ in range(12):
        x, y = transform(image, mask)
        flipped = bool(y[6, 32 - 1 - 4] == 1)
        flips.add(flipped)
        col = 32 - 1 - 4 if flipped else 4
        assert y[6, col] == 1 and (_rgb255(x)[:, 6, col] - torch.tensor([230.0, 30, 30])).abs().max() < 20
        assert (y[3] == 255).all()  # the 255 row is kept, never turned into a class
        assert y[6, 30 - 1 - 4 if not flipped else 32 - 1 - (30 - 1 - 4)] == 0
    assert flips == {True, False}


def test_augmented_sbd_list(tmp_path):
    data_dir = write_voc(tmp_path, aug=True)
    dm = _dm(data_dir)
    dm.setup("fit")
    assert dm.train_set.split == "train_aug" and len(dm.train_set) == 8
    assert dm.train_set.masks[0].parent.name == "SegmentationClassAug"
    _, y = next(iter(dm.train_dataloader()))
    assert y.dtype == torch.int64 and (y == 255).any()
    plain = _dm(data_dir, augmented=False)
    plain.setup("fit")
    assert plain.train_set.split == "train" and len(plain.train_set) == 6
    with pytest.raises(DatasetNotFoundError, match="SegmentationClassAug"):
        _dm(write_voc(tmp_path / "plain"), augmented=True).setup("fit")


def test_scoring_dataloader_is_fixed(data_dir):
    dm = _dm(data_dir, scoring_batches=2)
    first = list(dm.scoring_dataloader())
    second = list(_dm(data_dir, scoring_batches=2).scoring_dataloader())
    assert len(first) == 2 and first[0][0].shape == (2, 3, 48, 48)
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # scoring_batch_size pins the scoring batches whatever the (per-rank) training batch size.
    pinned = [
        list(_dm(data_dir, batch_size=b, scoring_batch_size=2, scoring_batches=2).scoring_dataloader())
        for b in (1, 3)
    ]
    for (x1, y1), (x2, y2) in zip(*pinned):
        assert x1.shape[0] == 2 and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert len(pinned[0]) == len(pinned[1]) == 2
    assert torch.equal(torch.cat([x for x, _ in pinned[0]]), torch.cat([x for x, _ in first]))
    with pytest.raises(ValueError, match="scoring_batch_size"):
        _dm(data_dir, scoring_batch_size=0)


def test_missing_mask_names_the_image(tmp_path):
    data_dir = write_voc(tmp_path)
    png = data_dir / "VOCdevkit/VOC2012/SegmentationClass/2007_000002.png"
    png.unlink()
    with pytest.raises(DatasetNotFoundError, match=r"2007_000002\.jpg has no mask.*2007_000002\.png"):
        _dm(data_dir).setup("fit")


def test_mask_of_another_size_names_the_file(tmp_path):
    data_dir = write_voc(tmp_path)
    voc_dir = data_dir / "VOCdevkit" / "VOC2012"
    image = np.full((40, 40, 3), 128, np.uint8)
    Image.fromarray(image).save(voc_dir / "JPEGImages" / "2008_000001.jpg")
    dm = _dm(data_dir)
    dm.setup("validate")
    with pytest.raises(
        CorruptDatasetError, match=r"mask .*2008_000001\.png is .* but its image .*2008_000001\.jpg"
    ):
        list(dm.val_dataloader())


def test_bad_masks_and_images_are_named(tmp_path):
    data_dir = write_voc(tmp_path)
    voc_dir = data_dir / "VOCdevkit" / "VOC2012"
    image, mask = np.full((20, 20, 3), 128, np.uint8), np.zeros((20, 20), np.uint8)
    mask[5:8, 5:8], mask[0] = 30, 255
    write_sample(voc_dir, "2007_000001", image, mask)
    ds = VOCSegmentationDataset(voc_dir, "train")
    with pytest.raises(CorruptDatasetError, match=r"2007_000001\.png holds class ids \[30\]"):
        ds[1]
    # The same file is fine when the model has more classes.
    assert VOCSegmentationDataset(voc_dir, "train", num_classes=31)[1][1].max() == 255
    # A colour (RGB) mask is not a class map.
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(voc_dir / "SegmentationClass" / "2007_000001.png")
    with pytest.raises(CorruptDatasetError, match=r"2007_000001\.png has mode 'RGB'"):
        ds[1]
    # Files that do not decode are named too, as in the classification DataModules.
    (voc_dir / "SegmentationClass" / "2007_000001.png").write_bytes(b"not a png")
    with pytest.raises(CorruptDatasetError, match=r"mask .*2007_000001\.png cannot be decoded"):
        ds[1]
    (voc_dir / "JPEGImages" / "2007_000001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CorruptDatasetError, match=r"image .*2007_000001\.jpg cannot be decoded"):
        ds[1]
    # An empty split list.
    (voc_dir / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(CorruptDatasetError, match=r"val\.txt is empty"):
        VOCSegmentationDataset(voc_dir, "val")


def test_missing_tree_says_to_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="VOCdevkit/VOC2012 not found.*download=True"):
        _dm(tmp_path).setup("fit")
    with pytest.raises(ValueError, match="val_mode"):
        _dm(tmp_path, val_mode="resize")


def _archive(tmp_path: Path) -> tuple[Path, str]:
    src = write_voc(tmp_path / "src", n_train=2, n_val=2)
    tar_path = tmp_path / "VOCtrainval_11-May-2012.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(src / "VOCdevkit", arcname="VOCdevkit")
    return tar_path, hashlib.md5(tar_path.read_bytes()).hexdigest()


def test_download_fetches_checks_and_unpacks_the_archive(tmp_path, monkeypatch):
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    # The official archive's published MD5 (torchvision records it independently).
    assert voc.VOC2012_MD5 == DATASET_YEAR_DICT["2012"]["md5"]
    assert voc.VOC2012_URL.endswith(DATASET_YEAR_DICT["2012"]["filename"])
    tar_path, md5 = _archive(tmp_path)
    # A corrupted or different archive is refused and deleted, before anything is unpacked.
    with pytest.raises(CorruptDatasetError, match=f"has MD5 {md5}, expected {'0' * 32}"):
        download_voc2012(tmp_path / "bad", url=tar_path.as_uri(), md5="0" * 32)
    assert not (tmp_path / "bad" / "VOCdevkit").exists()
    assert not (tmp_path / "bad" / tar_path.name).exists()
    with pytest.raises(DatasetNotFoundError, match=r"VOC archive .*nowhere\.tar .*does not exist"):
        download_voc2012(tmp_path / "bad", url=str(tmp_path / "nowhere.tar"))
    # The user's path: DataModule(download=True).prepare_data(), with the official URL pointed at the local copy.
    monkeypatch.setattr(voc, "VOC2012_URL", tar_path.as_uri())
    monkeypatch.setattr(voc, "VOC2012_MD5", md5)
    dm = _dm(tmp_path / "data", download=True)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 2 and len(dm.val_set) == 2
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 48, 48) and (y == 255).any()
    # Present already: no second download (a wrong MD5 would fail if it tried).
    monkeypatch.setattr(voc, "VOC2012_MD5", "0" * 32)
    dm.prepare_data()


@pytest.mark.parametrize("per_class", [1, 2])
def test_scoring_dataloader_class_balanced_subset(tmp_path, per_class):
    data_dir = write_voc(tmp_path, n_train=8)
    dm = _dm(data_dir, examples_per_class=per_class)
    batches = list(dm.scoring_dataloader())
    # The expected subset, computed from the PNGs here: walk the list, keep an image when it shows a
    # foreground class that has fewer than per_class images so far.
    shown = [set(np.unique(np.array(Image.open(p))).tolist()) - {0, 255} for p in dm.train_set.masks]
    counts, expected = {}, []
    for i, classes in enumerate(shown):
        if any(counts.get(c, 0) < per_class for c in classes):
            expected.append(i)
            for c in classes:
                counts[c] = counts.get(c, 0) + 1
    assert 0 < len(expected) < len(shown)  # the tiny tree makes the subset a proper one
    got = torch.cat([y for _, y in batches])
    crop = SegmentationTransform("center_crop", 48)
    want = torch.stack([crop(*dm.train_set.read(i))[1] for i in expected])
    assert torch.equal(got, want)
    for c in set().union(*shown):
        assert sum(c in shown[i] for i in expected) >= min(per_class, sum(c in s for s in shown))

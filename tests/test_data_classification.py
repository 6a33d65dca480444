"""Classification DataModules read tiny copies of each dataset in its real on-disk format."""

from __future__ import annotations

import pickle
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_classification_data import (
    IMAGENET_WNIDS,
    cifar_archive,
    tiny_imagenet_wnids,
    write_cifar10,
    write_cifar100,
    write_imagenet,
    write_tiny_imagenet,
)

from px_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    CorruptDatasetError,
    DatasetNotFoundError,
    DigitsDataModule,
    ImageNetDataModule,
    TinyImageNetDataModule,
    balanced_indices,
)
from px_lightning.data._common import download_and_extract, md5sum


def _scoring_tensors(dm):
    xs, ys = zip(*list(dm.scoring_dataloader()))
    return torch.cat(xs), torch.cat(ys)


def _check_scoring(dm, per_class: int, num_classes: int):
    x1, y1 = _scoring_tensors(dm)
    x2, y2 = _scoring_tensors(dm)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # identical across calls (no augmentation, no shuffle)
    assert Counter(y1.tolist()) == {c: per_class for c in range(num_classes)}
    return x1, y1


def _raw_cifar(path: Path, label_key: bytes):
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    return batch[b"data"], batch[label_key]


def _denormalise(x: torch.Tensor, mean, std) -> np.ndarray:
    img = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (img * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def test_balanced_indices_first_n_of_each_class_in_order():
    assert balanced_indices([2, 0, 0, 1, 2, 1, 0], 2, 3) == [0, 1, 2, 3, 4, 5]
    assert balanced_indices([2, 0, 0, 1, 2, 1, 0], 1, 3) == [0, 1, 3]
    with pytest.raises(ValueError, match="examples_per_class=3.*class 1: 2"):
        balanced_indices([2, 0, 0, 1, 2, 1, 0], 3, 3)
    with pytest.raises(ValueError, match="examples_per_class"):
        balanced_indices([0], 0, 1)


def test_cifar10_real_format(tmp_path):
    data_dir = write_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_dir=data_dir, batch_size=16, num_workers=0, examples_per_class=3)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.classes[0] == "airplane"
    assert len(dm.train_set) == 50 and len(dm.val_set) == 20
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= y.min() and y.max() < 10
    xs, ys = _check_scoring(dm, 3, 10)
    # The scoring set is the first 3 of each class in file order (data_batch_1, then 2, ...), decoded right:
    raw = [_raw_cifar(data_dir / "cifar-10-batches-py" / f"data_batch_{i}", b"labels") for i in range(1, 6)]
    data = np.concatenate([r[0] for r in raw])
    labels = [t for r in raw for t in r[1]]
    expected = sorted(i for c in range(10) for i in [j for j, t in enumerate(labels) if t == c][:3])
    assert ys.tolist() == [labels[i] for i in expected]
    for k, i in enumerate(expected[:4]):
        assert np.array_equal(_denormalise(xs[k], dm.mean, dm.std), data[i].reshape(3, 32, 32))


def test_cifar100_real_format(tmp_path):
    data_dir = write_cifar100(tmp_path)
    dm = CIFAR100DataModule(data_dir=data_dir, batch_size=32, num_workers=0, examples_per_class=2)
    dm.setup("fit")
    assert dm.num_classes == 100 and len(dm.classes) == 100
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 3, 32, 32) and 0 <= y.min() and y.max() < 100
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (32, 3, 32, 32)
    _, ys = _check_scoring(dm, 2, 100)
    _, fine = _raw_cifar(data_dir / "cifar-100-python" / "train", b"fine_labels")
    expected = sorted(i for c in range(100) for i in [j for j, t in enumerate(fine) if t == c][:2])
    assert ys.tolist() == [fine[i] for i in expected]


def test_tiny_imagenet_real_format(tmp_path):
    data_dir = write_tiny_imagenet(tmp_path)
    dm = TinyImageNetDataModule(data_dir=data_dir, batch_size=8, num_workers=0, examples_per_class=2)
    dm.setup("fit")
    assert dm.num_classes == 200 and dm.classes == sorted(tiny_imagenet_wnids())
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 64, 64) and 0 <= y.min() and y.max() < 200
    # Validation labels come from val_annotations.txt, classes in sorted-wnid order.
    ann = (data_dir / "tiny-imagenet-200" / "val" / "val_annotations.txt").read_text().splitlines()
    expected = [sorted(tiny_imagenet_wnids()).index(line.split("\t")[1]) for line in ann]
    vx, vy = zip(*list(dm.val_dataloader()))
    assert torch.cat(vy).tolist() == expected and vx[0].shape[1:] == (3, 64, 64)
    _check_scoring(dm, 2, 200)


def test_imagenet_class_folders(tmp_path):
    data_dir = write_imagenet(tmp_path)
    dm = ImageNetDataModule(data_dir=data_dir, batch_size=4, num_workers=0, examples_per_class=2)
    assert dm.num_classes == 3  # the class folders found
    dm.setup("fit")
    assert dm.classes == sorted(IMAGENET_WNIDS)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 224, 224) and 0 <= y.min() and y.max() < 3
    vx, vy = next(iter(dm.val_dataloader()))
    assert vx.shape == (4, 3, 224, 224) and vy.tolist() == [0, 0, 1, 1]
    _check_scoring(dm, 2, 3)
    assert ImageNetDataModule(data_dir=tmp_path / "nowhere").num_classes == 1000


def test_digits_fixed_split():
    dm = DigitsDataModule(batch_size=50, examples_per_class=4)
    dm.setup("fit")
    sizes = len(dm.train_set), len(dm.val_set), len(dm.test_set)
    assert sizes == (1259, 269, 269) and sum(sizes) == 1797
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 3, 32, 32) and 0 <= y.min() and y.max() < 10
    assert torch.equal(x[:, 0], x[:, 1])  # grey digits repeated over three channels
    # The split is fixed: a second DataModule gives the same test images; splits are disjoint
    other = DigitsDataModule(batch_size=50)
    other.setup("test")
    assert torch.equal(dm.test_set.images, other.test_set.images)
    train_rows = {tuple(r.flatten()[::7].tolist()) for r in dm.train_set.images}
    assert not any(tuple(r.flatten()[::7].tolist()) in train_rows for r in dm.test_set.images[:50])
    counts = Counter(dm.test_set.targets)
    assert min(counts.values()) >= 25  # stratified: every digit in the test split
    _check_scoring(dm, 4, 10)


def _batches_equal(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b)
    )


def test_scoring_batch_size_pins_the_scoring_batches(tmp_path):
    # Under DDP batch_size is per process (the ImageNet config divides it by the GPU count); PX scores depend
    # on the batching (train-mode BatchNorm), so scoring_batch_size keeps the scoring batches of a 1-rank run.
    def scoring(**kwargs):
        return list(DigitsDataModule(examples_per_class=3, **kwargs).scoring_dataloader())

    one_rank = scoring(batch_size=32, scoring_batch_size=8)
    assert [len(y) for _, y in one_rank] == [8, 8, 8, 6]  # 30 images in order, the last batch smaller
    for per_rank in (16, 4):  # batch_size 32 on 2 and on 8 ranks
        assert _batches_equal(scoring(batch_size=per_rank, scoring_batch_size=8), one_rank)
    # Unset: the training batch size, as before.
    assert [len(y) for _, y in scoring(batch_size=16)] == [16, 14]
    assert torch.equal(torch.cat([y for _, y in scoring(batch_size=16)]), torch.cat([y for _, y in one_rank]))
    # The same for a DataModule reading files (every classification DataModule forwards the argument).
    data_dir = write_cifar10(tmp_path)
    cifar = [
        list(
            CIFAR10DataModule(
                data_dir, batch_size=b, num_workers=0, examples_per_class=2, scoring_batch_size=6
            ).scoring_dataloader()
        )
        for b in (20, 5)
    ]
    assert [len(y) for _, y in cifar[0]] == [6, 6, 6, 2] and _batches_equal(*cifar)
    for cls in (CIFAR100DataModule, TinyImageNetDataModule, ImageNetDataModule):
        assert cls(tmp_path, scoring_batch_size=6).scoring_batch_size == 6
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="scoring_batch_size must be an integer >= 1 or None"):
            DigitsDataModule(scoring_batch_size=bad)


# ---- missing, partial and corrupt data ------------------------------------------------------------------


def test_missing_folders_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py does not exist; pass download=True"):
        CIFAR10DataModule(data_dir=tmp_path).setup("fit")
    with pytest.raises(DatasetNotFoundError, match=r"tiny-imagenet-200 does not exist"):
        TinyImageNetDataModule(data_dir=tmp_path).setup("fit")
    with pytest.raises(
        DatasetNotFoundError, match=r"train does not exist\. ImageNet cannot be downloaded.*image-net"
    ):
        ImageNetDataModule(data_dir=tmp_path).setup("fit")


def test_cifar_partial_and_corrupt_files(tmp_path):
    data_dir = write_cifar10(tmp_path)
    folder = data_dir / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3 is missing"):
        CIFAR10DataModule(data_dir=data_dir).setup("fit")
    write_cifar10(tmp_path)
    raw = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(raw[: len(raw) // 2])  # truncated download
    with pytest.raises(CorruptDatasetError, match="data_batch_2 cannot be read as a pickle"):
        CIFAR10DataModule(data_dir=data_dir).setup("fit")
    write_cifar10(tmp_path)
    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"labels"][0] = 10
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(CorruptDatasetError, match=r"test_batch: labels range 0\.\.10, expected 0\.\.9"):
        CIFAR10DataModule(data_dir=data_dir).setup("fit")
    batch[b"labels"][0] = 1
    batch[b"data"] = batch[b"data"][:, :1024]
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(CorruptDatasetError, match=r"test_batch: 'data' is uint8 of shape \(20, 1024\)"):
        CIFAR10DataModule(data_dir=data_dir).setup("fit")
    del batch[b"data"]
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(CorruptDatasetError, match="test_batch has no 'data' entry"):
        CIFAR10DataModule(data_dir=data_dir).setup("fit")


def test_tiny_imagenet_partial_and_corrupt(tmp_path):
    data_dir = write_tiny_imagenet(tmp_path, train_per_class=1, val_images=4)
    folder = data_dir / "tiny-imagenet-200"
    bad = folder / "train" / min(tiny_imagenet_wnids()) / "images" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # verify_images: every image is decoded in setup, before training starts
    with pytest.raises(CorruptDatasetError, match=r"1 image\(s\) failed to decode.*broken\.JPEG"):
        TinyImageNetDataModule(data_dir=data_dir, verify_images=True).setup("fit")
    # without it, the error names the file when the image is read
    dm = TinyImageNetDataModule(data_dir=data_dir, num_workers=0, examples_per_class=1)
    dm.setup("fit")
    index = [p for p, _ in dm.train_set.samples].index(str(bad))
    with pytest.raises(CorruptDatasetError, match=r"broken\.JPEG cannot be decoded"):
        dm.train_set[index]
    bad.unlink()
    ann = folder / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_999.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(CorruptDatasetError, match=r"val_annotations.txt, line 5: class id 'n00000000'"):
        TinyImageNetDataModule(data_dir=data_dir).setup("fit")
    wnid = tiny_imagenet_wnids()[0]
    ann.write_text(ann.read_text().replace("n00000000", wnid))
    with pytest.raises(DatasetNotFoundError, match=r"line 5 names .*val_999\.JPEG, which does not exist"):
        TinyImageNetDataModule(data_dir=data_dir).setup("fit")
    (folder / "wnids.txt").write_text("\n".join(tiny_imagenet_wnids()[:150]))
    with pytest.raises(CorruptDatasetError, match="wnids.txt lists 150 distinct class ids, expected 200"):
        TinyImageNetDataModule(data_dir=data_dir).setup("fit")


def test_imagenet_partial(tmp_path):
    data_dir = write_imagenet(tmp_path, train_per_class=1, val_per_class=1)
    for f in (data_dir / "val" / IMAGENET_WNIDS[1]).iterdir():
        f.unlink()
    with pytest.raises(CorruptDatasetError, match=f"{IMAGENET_WNIDS[1]} holds no images"):
        ImageNetDataModule(data_dir=data_dir).setup("fit")
    (data_dir / "val" / IMAGENET_WNIDS[1]).rmdir()
    with pytest.raises(DatasetNotFoundError, match=f"val/{IMAGENET_WNIDS[1]} is missing"):
        ImageNetDataModule(data_dir=data_dir).setup("fit")


def test_scoring_subset_too_small_is_refused(tmp_path):
    dm = CIFAR10DataModule(data_dir=write_cifar10(tmp_path), examples_per_class=6)
    with pytest.raises(ValueError, match="examples_per_class=6.*class 0: 5"):
        dm.scoring_dataloader()


# ---- downloads, from local files (never the network) ------------------------------------------------------


def test_cifar_download_checks_the_official_md5(tmp_path, monkeypatch):
    archive = cifar_archive(write_cifar10(tmp_path / "src"), tmp_path / "cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10DataModule, "url", archive.as_uri())
    target = tmp_path / "data"
    # The tiny archive is not the official one: the official MD5 refuses it and nothing is left behind.
    with pytest.raises(CorruptDatasetError, match=f"expected {CIFAR10DataModule.md5}"):
        CIFAR10DataModule(data_dir=target, download=True).prepare_data()
    assert not any(target.rglob("*"))
    # With its own MD5 as the expected one, the same code path downloads, checks, extracts and reads it.
    monkeypatch.setattr(CIFAR10DataModule, "md5", md5sum(archive))
    dm = CIFAR10DataModule(data_dir=target, download=True, batch_size=4, num_workers=0, examples_per_class=1)
    dm.prepare_data()
    dm.setup("fit")
    assert (target / "cifar-10-python.tar.gz").is_file() and len(dm.train_set) == 50
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 3, 32, 32)
    archive.unlink()
    dm2 = CIFAR10DataModule(data_dir=target, download=True)
    dm2.prepare_data()  # already there: no download attempted (the source is gone)
    with pytest.raises(DatasetNotFoundError, match="could not download .*cifar-10-python.tar.gz"):
        download_and_extract(archive.as_uri(), tmp_path / "y", "a.tar.gz", "0" * 32)


def test_tiny_imagenet_download_from_zip(tmp_path, monkeypatch):
    src = write_tiny_imagenet(tmp_path / "src", train_per_class=1, val_images=3)
    archive = tmp_path / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted((src / "tiny-imagenet-200").rglob("*")):
            zf.write(p, p.relative_to(src))
    monkeypatch.setattr(TinyImageNetDataModule, "url", archive.as_uri())
    monkeypatch.setattr(TinyImageNetDataModule, "md5", md5sum(archive))
    dm = TinyImageNetDataModule(
        data_dir=tmp_path / "data", download=True, num_workers=0, examples_per_class=1
    )
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 200 and len(dm.val_set) == 3

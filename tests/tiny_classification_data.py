"""Tiny copies of the classification datasets in their exact on-disk formats, for tests.

Each ``write_*`` function writes under ``root`` and returns the ``data_dir`` to pass to the DataModule.
The files are what the official archives contain, only with fewer images:

- CIFAR-10: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``: Python-2 pickles
  (byte-string keys, a uint8 ``data`` array of shape (N, 3072) stored channel-major, ``labels`` lists).
- CIFAR-100: ``cifar-100-python/train``, ``test``, ``meta`` with ``fine_labels`` and ``coarse_labels``.
- Tiny-ImageNet: ``tiny-imagenet-200/wnids.txt`` (200 ids), ``words.txt``,
  ``train/<wnid>/images/<wnid>_<i>.JPEG`` + ``<wnid>_boxes.txt``, ``val/images/val_<i>.JPEG`` +
  ``val/val_annotations.txt``, ``test/images``.
- ImageNet: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``.

Images are random noise whose colour depends on the class, so a model can learn something from them.

Example:
    >>> data_dir = write_cifar10(tmp_path)
    >>> dm = CIFAR10DataModule(data_dir=data_dir)
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler(pickle._Pickler):
    """Writes ``str`` and ``bytes`` as Python 2 byte strings (BINSTRING), as the official CIFAR files do,
    and numpy arrays under ``numpy.core.multiarray`` (the module name numpy 1.x pickled them with)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if module == "numpy._core.multiarray":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n" + obj.__name__.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _py2_pickle(obj, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _class_images(labels: list[int], num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    # Noise around a class-dependent colour: (N, size, size, 3) uint8
    base = (np.array(labels)[:, None] * np.array([37, 91, 53])[None, :] + 40) % 216
    noise = rng.integers(0, 40, size=(len(labels), size, size, 3))
    return (base[:, None, None, :] + noise).astype(np.uint8)


def _cifar_batch(
    labels: list[int], num_classes: int, label_key: str, batch_label: str, rng, extra=None
) -> dict:
    images = _class_images(labels, num_classes, 32, rng)
    data = images.transpose(0, 3, 1, 2).reshape(
        len(labels), 3072
    )  # channel-major rows, as the official files
    batch = {
        b"batch_label": batch_label.encode(),
        label_key.encode(): list(labels),
        b"data": data,
        b"filenames": [f"tiny_{i:05d}.png".encode() for i in range(len(labels))],
    }
    if extra:
        batch.update(extra)
    return batch


def _new_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _labels(per_class: int, classes: int, rng: np.random.Generator | None = None) -> list[int]:
    """``per_class`` of each class label, shuffled in place by ``rng`` when given."""
    labels = [c for _ in range(per_class) for c in range(classes)]
    if rng is not None:
        rng.shuffle(labels)
    return labels


def write_cifar10(root: str | Path, per_class_per_batch: int = 1, test_per_class: int = 2) -> Path:
    """CIFAR-10 with ``5 * per_class_per_batch`` training and ``test_per_class`` test images per class."""
    root = Path(root)
    folder = _new_folder(root / "cifar-10-batches-py")
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        labels = _labels(per_class_per_batch, 10, rng)
        _py2_pickle(
            _cifar_batch(labels, 10, "labels", f"training batch {i} of 5", rng), folder / f"data_batch_{i}"
        )
    labels = _labels(test_per_class, 10)
    _py2_pickle(_cifar_batch(labels, 10, "labels", "testing batch 1 of 1", rng), folder / "test_batch")
    meta = {
        b"num_cases_per_batch": 10 * per_class_per_batch,
        b"label_names": [n.encode() for n in CIFAR10_CLASSES],
    }
    meta[b"num_vis"] = 3072
    _py2_pickle(meta, folder / "batches.meta")
    (folder / "readme.html").write_text("<html>tiny copy</html>")
    return root


def write_cifar100(root: str | Path, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    """CIFAR-100 (fine and coarse labels) with ``train_per_class`` / ``test_per_class`` images per class."""
    root = Path(root)
    folder = _new_folder(root / "cifar-100-python")
    rng = np.random.default_rng(1)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = _labels(per_class, 100, rng)
        coarse = {b"coarse_labels": [c // 5 for c in labels]}
        _py2_pickle(_cifar_batch(labels, 100, "fine_labels", split, rng, coarse), folder / split)
    meta = {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    }
    _py2_pickle(meta, folder / "meta")
    return root


def cifar_archive(data_dir: str | Path, out: str | Path) -> Path:
    """Pack a written CIFAR copy into a .tar.gz laid out like the official archive."""
    data_dir, out = Path(data_dir), Path(out)
    with tarfile.open(out, "w:gz") as tf:
        for folder in ("cifar-10-batches-py", "cifar-100-python"):
            if (data_dir / folder).is_dir():
                tf.add(data_dir / folder, arcname=folder)
    return out


def _save_jpeg(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=90)


def tiny_imagenet_wnids() -> list[str]:
    """200 WordNet-style ids (n + 8 digits), deliberately not in sorted order in wnids.txt."""
    return [f"n{(i * 7919) % 10**8:08d}" for i in range(1, 201)]


def write_tiny_imagenet(root: str | Path, train_per_class: int = 2, val_images: int = 20) -> Path:
    """Tiny-ImageNet-200: 200 classes, ``train_per_class`` 64x64 JPEGs each, ``val_images`` validation."""
    root = Path(root)
    folder = _new_folder(root / "tiny-imagenet-200")
    wnids = tiny_imagenet_wnids()
    (folder / "wnids.txt").write_text("".join(w + "\n" for w in wnids))
    (folder / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids)))
    rng = np.random.default_rng(2)
    label = {w: i for i, w in enumerate(sorted(wnids))}
    for w in wnids:
        images = _class_images([label[w]] * train_per_class, 200, 64, rng)
        boxes = []
        for i, img in enumerate(images):
            name = f"{w}_{i}.JPEG"
            _save_jpeg(img, folder / "train" / w / "images" / name)
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        (folder / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))
    lines = []
    for i in range(val_images):
        w = wnids[(i * 13) % len(wnids)]
        _save_jpeg(_class_images([label[w]], 200, 64, rng)[0], folder / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    for i in range(2):
        _save_jpeg(_class_images([0], 200, 64, rng)[0], folder / "test" / "images" / f"test_{i}.JPEG")
    return root


IMAGENET_WNIDS = ["n01440764", "n01443537", "n01484850"]


def write_imagenet(
    root: str | Path, train_per_class: int = 3, val_per_class: int = 2, size: int = 40
) -> Path:
    """ImageNet class folders (3 classes) with small JPEGs of varying aspect ratio."""
    root = Path(root) / "imagenet"
    rng = np.random.default_rng(3)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c, w in enumerate(IMAGENET_WNIDS):
            for i in range(per_class):
                img = _class_images([c], 3, size, rng)[0][:, : size - 8 * (i % 2)]  # not all square
                name = (
                    f"{w}_{i}.JPEG"
                    if split == "train"
                    else f"ILSVRC2012_val_{c * per_class + i + 1:08d}.JPEG"
                )
                _save_jpeg(np.ascontiguousarray(img), root / split / w / name)
    return root

"""A tiny Pascal VOC 2012 tree in the exact on-disk format, for tests (and other engineers' CLI tests).

``write_voc(root)`` writes ``root/VOCdevkit/VOC2012/`` with ``JPEGImages/*.jpg``, ``SegmentationClass/*.png``
(palette PNGs with the official VOC colour map, 255 on object boundaries) and
``ImageSets/Segmentation/{train,val,trainval}.txt``, and returns ``root`` (the ``data_dir`` a download
writes into). Each object is a rectangle whose image colour is ``CLASS_COLOURS[class_id]`` on a grey
background (class 0), so a tiny model can learn it and tests can check image/mask alignment by colour.

Example:
    >>> data_dir = write_voc(tmp_path)
    >>> dm = VOCSegmentationDataModule(data_dir, batch_size=2, crop_size=64, num_workers=0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND = (128, 128, 128)
# Distinct, saturated image colours for the object classes used by the tiny tree (class id -> RGB).
CLASS_COLOURS = {1: (230, 30, 30), 2: (30, 30, 230), 3: (30, 200, 30), 15: (230, 230, 30)}
# Image sizes (height, width) alternate so full-image validation sees different, non-divisible sizes.
SIZES = [(60, 80), (72, 54), (50, 66)]


def voc_palette() -> list[int]:
    """The official VOC colour map (bit-interleaved), flattened to 768 ints for ``Image.putpalette``."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _sample(index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = SIZES[index % len(SIZES)]
    image = np.empty((h, w, 3), np.uint8)
    image[:] = BACKGROUND
    mask = np.zeros((h, w), np.uint8)
    classes = list(CLASS_COLOURS)
    for k in range(2):
        cls = classes[(index + k) % len(classes)]
        rh, rw = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
        top, left = int(rng.integers(0, h - rh)), int(rng.integers(0, w - rw))
        image[top : top + rh, left : left + rw] = CLASS_COLOURS[cls]
        # VOC marks a band around each object boundary as 255 (void); 2 pixels here.
        mask[max(top - 1, 0) : top + rh + 1, max(left - 1, 0) : left + rw + 1] = 255
        mask[top + 1 : top + rh - 1, left + 1 : left + rw - 1] = cls
    return image, mask


def write_sample(voc_root: Path, name: str, image: np.ndarray, mask: np.ndarray | None) -> None:
    """Write one JPEG and (unless ``mask`` is None) its palette PNG under ``voc_root``."""
    Image.fromarray(image).save(voc_root / "JPEGImages" / f"{name}.jpg", quality=95)
    if mask is not None:
        png = Image.fromarray(mask)
        png.putpalette(voc_palette())  # turns the "L" image into a "P" (palette) one, as VOC ships it
        png.save(voc_root / "SegmentationClass" / f"{name}.png")


def write_voc(root: str | Path, n_train: int = 6, n_val: int = 3, seed: int = 0, aug: bool = False) -> Path:
    """Write a tiny VOC 2012 tree under ``root`` and return ``root`` (the DataModule's ``data_dir``).

    ``aug=True`` also writes the SBD-style ``SegmentationClassAug/`` (grey-level PNGs) with
    ``ImageSets/Segmentation/train_aug.txt`` listing the training images plus two extra ones.
    """
    root = Path(root)
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = {
        "train": [f"2007_{i:06d}" for i in range(n_train)],
        "val": [f"2008_{i:06d}" for i in range(n_val)],
    }
    masks = {}
    for index, name in enumerate(names["train"] + names["val"]):
        image, mask = _sample(index, rng)
        write_sample(voc, name, image, mask)
        masks[name] = mask
    for split, split_names in names.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(split_names) + "\n")
    trainval = names["train"] + names["val"]
    (voc / "ImageSets" / "Segmentation" / "trainval.txt").write_text("\n".join(trainval) + "\n")
    if aug:
        (voc / "SegmentationClassAug").mkdir(exist_ok=True)
        extra = [f"2009_{i:06d}" for i in range(2)]
        for offset, name in enumerate(extra):
            image, mask = _sample(n_train + n_val + offset, rng)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
            masks[name] = mask
        aug_names = names["train"] + extra
        for name in aug_names:
            Image.fromarray(masks[name]).save(voc / "SegmentationClassAug" / f"{name}.png")
        (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(aug_names) + "\n")
    return root

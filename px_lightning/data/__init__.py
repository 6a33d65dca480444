"""LightningDataModules: CIFAR-10/100, Tiny-ImageNet, ImageNet, VOC 2012, Digits."""

from .voc import VOCSegmentationDataModule

__all__ = ["VOCSegmentationDataModule"]

"""Backbones and model factories: CIFAR ResNets, VGG, Tiny-ImageNet ResNet-18, torchvision models, segmentation.

Example:
    >>> from px_lightning.models import create_model
    >>> model = create_model("resnet20", num_classes=10)
"""

from .cifar_resnet import CifarResNet, kaiming_normal_init, resnet20, resnet32, resnet44, resnet56
from .factory import available_models, create_model
from .pretrained import PRETRAINED_FORMATS, PretrainedReport, load_pretrained_encoder
from .segmentation import create_segmentation_model, segmentation_architectures
from .small_cnn import SmallCNN, small_cnn
from .tiny_resnet import TinyImageNetResNet, resnet18_tiny, resnet34_tiny
from .vgg import CifarVGG, vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn

__all__ = [
    "PRETRAINED_FORMATS",
    "CifarResNet",
    "CifarVGG",
    "PretrainedReport",
    "SmallCNN",
    "TinyImageNetResNet",
    "available_models",
    "create_model",
    "create_segmentation_model",
    "kaiming_normal_init",
    "load_pretrained_encoder",
    "resnet18_tiny",
    "resnet20",
    "resnet32",
    "resnet34_tiny",
    "resnet44",
    "resnet56",
    "segmentation_architectures",
    "small_cnn",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
]

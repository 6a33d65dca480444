"""``create_model(name, num_classes)``: the published backbones and any torchvision classifier by name.

Names, looked up case-insensitively:

- ``"resnet20"``, ``"resnet32"``, ``"resnet44"``, ``"resnet56"``: the CIFAR ResNet (32x32 inputs).
- ``"vgg11_bn"``, ``"vgg13_bn"``, ``"vgg16_bn"``, ``"vgg19_bn"``: the CIFAR VGG with BatchNorm (32x32).
- ``"resnet18_tiny"``, ``"resnet34_tiny"``: the Tiny-ImageNet ResNets (64x64).
- ``"small_cnn"``: the Digits quickstart CNN (32x32).
- any torchvision classification model (``torchvision.models.list_models(module=torchvision.models)``),
  e.g. ``"resnet50"`` (the published ImageNet model), ``"mobilenet_v2"``, built with random weights.
- any timm model as ``"timm.<name>"`` (``timm.list_models()``), e.g. ``"timm.vit_tiny_patch16_224"``,
  built with ``pretrained=False``; timm is imported only when such a name is asked for.

Where a name exists in both, the published CIFAR model wins (``"vgg16_bn"`` is the 32x32 VGG); prefix
``"torchvision."`` to get torchvision's own (``"torchvision.vgg16_bn"``). The prefix works for every
torchvision model. Extra keyword arguments go to the model's constructor.

Example:
    >>> model = create_model("resnet20", num_classes=10)
    >>> imagenet = create_model("resnet50", num_classes=1000)
    >>> tv_vgg = create_model("torchvision.vgg16_bn", num_classes=1000)
    >>> vit = create_model("timm.vit_tiny_patch16_224", num_classes=10, img_size=32)
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable

import torchvision
from torch import nn

from .cifar_resnet import resnet20, resnet32, resnet44, resnet56
from .small_cnn import small_cnn
from .tiny_resnet import resnet18_tiny, resnet34_tiny
from .vgg import vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn

_TORCHVISION_PREFIX = "torchvision."
_TIMM_PREFIX = "timm."

_BUILTIN: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "vgg11_bn": vgg11_bn,
    "vgg13_bn": vgg13_bn,
    "vgg16_bn": vgg16_bn,
    "vgg19_bn": vgg19_bn,
    "resnet18_tiny": resnet18_tiny,
    "resnet34_tiny": resnet34_tiny,
    "small_cnn": small_cnn,
}


def _torchvision_names() -> list[str]:
    # Only the classification models (torchvision.models itself, not detection/segmentation/video).
    return list(torchvision.models.list_models(module=torchvision.models))


def create_timm_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """The timm model ``name`` (without the ``timm.`` prefix) with ``num_classes`` outputs and random weights.

    ``kwargs`` go to ``timm.create_model`` (``img_size=32`` for a ViT on small images, ``drop_path_rate``);
    ``pretrained`` is always False: nothing downloads here. An unknown name raises ``ValueError`` with the
    closest timm names.

    Example:
        >>> vit = create_timm_model("vit_tiny_patch16_224", num_classes=10, img_size=32)
    """
    timm = importlib.import_module("timm")  # imported here: seconds to import, and only timm names need it
    if kwargs.get("pretrained"):
        raise ValueError(
            "pretrained=True: timm models are built with random weights here (nothing is downloaded); "
            "load a local weights file into the model afterwards (model.load_state_dict)"
        )
    kwargs.pop("pretrained", None)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(_TIMM_PREFIX + c) for c in close)}?" if close else ""
        raise ValueError(f"unknown timm model {name!r} (timm.list_models() lists the known ones){hint}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def available_models() -> list[str]:
    """Every name ``create_model`` accepts (the ``torchvision.`` prefix works for each torchvision name).

    Example:
        >>> "resnet20" in available_models()
        True
    """
    tv = _torchvision_names()
    return (
        sorted(_BUILTIN) + sorted(n for n in tv if n not in _BUILTIN) + [_TORCHVISION_PREFIX + n for n in tv]
    )


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a classification backbone by name with ``num_classes`` outputs (see the module docstring).

    Raises ``ValueError`` for an unknown name (listing the choices) or a bad ``num_classes``.

    Example:
        >>> create_model("vgg16_bn", num_classes=100)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name (str), got {type(name).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    key = name.strip().lower()
    if key.startswith(_TIMM_PREFIX):
        return create_timm_model(key[len(_TIMM_PREFIX) :], num_classes, **kwargs)
    if key.startswith(_TORCHVISION_PREFIX):
        tv_name = key[len(_TORCHVISION_PREFIX) :]
    elif key in _BUILTIN:
        return _BUILTIN[key](num_classes=num_classes, **kwargs)
    else:
        tv_name = key
    if tv_name in _torchvision_names():
        # weights=None: random initialisation (torchvision's own, Kaiming-normal for ResNets); pretrained
        # weights are loaded separately, never downloaded here.
        kwargs.setdefault("weights", None)
        return torchvision.models.get_model(tv_name, num_classes=num_classes, **kwargs)
    tv = [n for n in _torchvision_names() if n not in _BUILTIN]
    raise ValueError(
        f"unknown model {name!r}; choose one of the published models {', '.join(sorted(_BUILTIN))}, or a "
        f"torchvision classification model {', '.join(sorted(tv))} (prefix 'torchvision.' for torchvision's "
        "own model where a name exists in both, e.g. 'torchvision.vgg16_bn'), or a timm model as 'timm.<name>'"
    )

"""Semantic segmentation networks from segmentation-models-pytorch, built offline (no weight download).

Pre-trained encoder weights come from local files through ``load_pretrained_encoder``, never from smp's hub.
"""

from __future__ import annotations

import inspect

from torch import nn


def _smp():
    # imported on use: smp pulls in timm (seconds), and classification needs neither
    import segmentation_models_pytorch

    return segmentation_models_pytorch


def segmentation_architectures() -> list[str]:
    """The smp architecture names ``create_segmentation_model`` accepts (lower case)."""
    return sorted(_smp().MODEL_ARCHITECTURES_MAPPING)


def create_segmentation_model(
    arch: str = "deeplabv3plus",
    encoder: str = "resnet50",
    num_classes: int = 21,
    output_stride: int | None = 8,
    in_channels: int = 3,
    **kwargs,
) -> nn.Module:
    """An smp segmentation model with a randomly initialised encoder.

    ``output_stride`` is the encoder's (8 or 16 for DeepLabV3/V3+ and PAN, which dilate the last stages);
    ``None`` keeps the architecture's default; architectures without the option accept only ``None``.
    Further keyword arguments go to the smp class (``decoder_channels``, ``encoder_depth``, ...).
    The model's output is the logits ``(N, num_classes, H, W)`` at the input resolution.

    Example:
        >>> model = create_segmentation_model("deeplabv3plus", "resnet50", num_classes=21, output_stride=8)
        >>> model.encoder  # a torchvision ResNet-50 (without fc): load_pretrained_encoder(model.encoder, path)
    """
    smp = _smp()
    try:
        cls = smp.MODEL_ARCHITECTURES_MAPPING[arch.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown arch {arch!r}; smp architectures: {segmentation_architectures()}"
        ) from None
    if encoder not in smp.encoders.get_encoder_names():
        raise ValueError(
            f"unknown encoder {encoder!r} for segmentation-models-pytorch; e.g. resnet18, resnet50, resnet101 "
            "(smp.encoders.get_encoder_names() lists all)"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if output_stride is not None:
        if "encoder_output_stride" not in inspect.signature(cls.__init__).parameters:
            raise ValueError(
                f"arch {arch!r} has no output_stride option; pass output_stride=None (it is for "
                "deeplabv3, deeplabv3plus and pan)"
            )
        kwargs["encoder_output_stride"] = output_stride
    # encoder_weights=None: never download; pre-trained weights are loaded from local files.
    return cls(
        encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes, **kwargs
    )

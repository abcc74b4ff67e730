"""Model registry: a catalog name -> a torch module returning logits (B, K, H, W).

Importing this module imports torch but not torch-harmonics: the spherical builders import
``spherical`` (and with it torch-harmonics) only when such a model is built.
``model_kwargs`` gives the JSON-able constructor arguments the checkpoint stores, so
``build_model(**kwargs)`` rebuilds exactly the same network for prediction.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from torch import nn

from ..errors import ConfigError
from .catalog import ModelSpec, parse_model_name


def _unet(spec: ModelSpec, in_channels: int, num_classes: int, img_size: Optional[Tuple[int, int]]) -> nn.Module:
    from .unet import UNet

    return UNet(in_channels, num_classes, spec.scale, spec.layers, spec.width)


def _transformer(spec: ModelSpec, in_channels: int, num_classes: int, img_size: Optional[Tuple[int, int]]) -> nn.Module:
    from .transformer import WindowTransformer

    return WindowTransformer(in_channels, num_classes, spec.scale, spec.layers, spec.width)


def _pixel(spec: ModelSpec, in_channels: int, num_classes: int, img_size: Optional[Tuple[int, int]]) -> nn.Module:
    from .pixel import PixelMLP

    return PixelMLP(in_channels, num_classes, spec.layers, spec.width)


def _additive(spec: ModelSpec, in_channels: int, num_classes: int, img_size: Optional[Tuple[int, int]]) -> nn.Module:
    from .pixel import AdditiveNet

    return AdditiveNet(in_channels, num_classes, spec.layers, spec.width)


def _cnn(spec: ModelSpec, in_channels: int, num_classes: int, img_size: Optional[Tuple[int, int]]) -> nn.Module:
    from .pixel import SmallCNN

    return SmallCNN(in_channels, num_classes, spec.scale, spec.layers, spec.width)


def _need_grid(spec: ModelSpec, img_size: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    if not img_size:
        raise ConfigError(f"{spec.name} is a spherical model and needs its input grid (img_size=(H, W))")
    return (int(img_size[0]), int(img_size[1]))


def _s2unet(spec: ModelSpec, in_channels: int, num_classes: int, img_size: Optional[Tuple[int, int]]) -> nn.Module:
    from .spherical import SphericalUNet

    return SphericalUNet(in_channels, num_classes, spec.scale, spec.layers, spec.width, _need_grid(spec, img_size))


def _s2segformer(spec: ModelSpec, in_channels: int, num_classes: int, img_size: Optional[Tuple[int, int]]) -> nn.Module:
    from .spherical import SphericalSegformer

    return SphericalSegformer(in_channels, num_classes, spec.scale, spec.layers, spec.width, _need_grid(spec, img_size))


Builder = Callable[[ModelSpec, int, int, Optional[Tuple[int, int]]], nn.Module]

BUILDERS: Dict[str, Builder] = {
    "unet": _unet,
    "transformer": _transformer,
    "s2unet": _s2unet,
    "s2segformer": _s2segformer,
    "pixel": _pixel,
    "additive": _additive,
    "cnn": _cnn,
}


def _one_network(name: str) -> ModelSpec:
    """The spec of a name that is one network (a mixed name is an ensemble of several: build its parts)."""
    spec = parse_model_name(name)
    if spec.parts:
        raise ConfigError(f"{spec.name} is a mixed ensemble, not one network; build its parts "
                          f"({', '.join(p.name for p in spec.parts)})")
    return spec


def model_kwargs(name: str, in_channels: int, num_classes: int = 2,
                 img_size: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """JSON-able arguments of ``build_model`` (stored in the checkpoint to rebuild the model).

    ``img_size`` is kept only for spherical models (planar ones take any tile size).
    """
    spec = _one_network(name)
    kwargs: Dict[str, Any] = {"name": spec.name, "in_channels": int(in_channels), "num_classes": int(num_classes)}
    if spec.spherical:
        kwargs["img_size"] = list(_need_grid(spec, tuple(img_size) if img_size else None))
    return kwargs


def build_model(name: str, in_channels: int, num_classes: int = 2,
                img_size: Optional[Sequence[int]] = None) -> nn.Module:
    """Builds a model by catalog name (ConfigError for an unknown name, listing the valid ones).

    Args:
        name: ``<arch>_sc<scale>_layers<N>_e<width>``.
        in_channels: encoded input channels (the encoder's ``out_channels``).
        num_classes: output classes (2: softmax over background / positive).
        img_size: (H, W) input grid; required by spherical models, ignored by planar ones.
    """
    spec = _one_network(name)
    if in_channels < 1 or num_classes < 1:
        raise ConfigError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
    grid = (int(img_size[0]), int(img_size[1])) if img_size else None
    return BUILDERS[spec.arch](spec, int(in_channels), int(num_classes), grid)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the ``num_params`` row of metrics.pkl)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

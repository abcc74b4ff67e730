"""Model names and descriptions, importable without torch.

Names follow torch-harmonics' registry convention ``<arch>_sc<scale>_layers<N>_e<width>``:
``sc2`` = downsampling factor 2 per stage, ``layers4`` = 4 stages/blocks, ``e32`` = the
embedding width (see each architecture for how it grows). Any such name whose ``<arch>``
is known is valid, so tests can use tiny variants (``unet_sc2_layers2_e8``); the QGIS
dropdown offers ``DEFAULT_MODELS`` plus the listed presets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Tuple

from ..errors import ConfigError

_NAME_RE = re.compile(r"^(?P<arch>[a-z0-9]+)_sc(?P<scale>\d+)_layers(?P<layers>\d+)_e(?P<width>\d+)$")


@dataclass(frozen=True)
class Architecture:
    """One architecture family of the registry."""

    arch: str
    spherical: bool
    description: str


ARCHITECTURES: Dict[str, Architecture] = {
    a.arch: a
    for a in (
        Architecture("unet", False, "Planar U-Net (plain torch); fast, the default for local/projected rasters."),
        Architecture(
            "transformer",
            False,
            "Planar transformer with windowed attention (bounded memory); slower than the U-Net.",
        ),
        Architecture(
            "s2unet",
            True,
            "Spherical U-Net from torch-harmonics DISCO convolutions; for global EPSG:4326 rasters.",
        ),
        Architecture(
            "s2segformer",
            True,
            "Spherical neighbourhood-attention segformer (torch-harmonics); for global EPSG:4326 rasters.",
        ),
    )
}

DEFAULT_MODELS: Tuple[str, ...] = ("unet_sc2_layers4_e32", "transformer_sc2_layers4_e128")

#: The presets offered in dropdowns, in order (default first).
PRESET_MODELS: Tuple[str, ...] = DEFAULT_MODELS + ("s2unet_sc2_layers4_e32", "s2segformer_sc2_layers4_e128")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name."""

    name: str
    arch: str
    scale: int
    layers: int
    width: int

    @property
    def spherical(self) -> bool:
        return ARCHITECTURES[self.arch].spherical

    @property
    def description(self) -> str:
        return ARCHITECTURES[self.arch].description


def parse_model_name(name: str) -> ModelSpec:
    """Parses and validates a model name; raises ConfigError listing the valid ones."""
    m = _NAME_RE.match(name or "")
    if not m or m.group("arch") not in ARCHITECTURES:
        raise ConfigError(
            f"unknown model name {name!r}; valid names are {', '.join(PRESET_MODELS)} "
            f"(or any '<arch>_sc<scale>_layers<N>_e<width>' with arch in {', '.join(ARCHITECTURES)})"
        )
    spec = ModelSpec(name, m.group("arch"), int(m.group("scale")), int(m.group("layers")), int(m.group("width")))
    if spec.scale < 1 or not 1 <= spec.layers <= 8 or spec.width < 1:
        raise ConfigError(
            f"model name {name!r}: need scale >= 1, 1 <= layers <= 8 and width >= 1 (e.g. unet_sc2_layers4_e32)"
        )
    return spec


def list_models() -> List[Tuple[str, str]]:
    """(name, description) of the preset models, for dropdowns and --help."""
    return [(n, parse_model_name(n).description) for n in PRESET_MODELS]

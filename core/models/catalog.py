"""Model names and descriptions, importable without torch.

Names follow torch-harmonics' registry convention ``<arch>_sc<scale>_layers<N>_e<width>``:
``sc2`` = downsampling factor 2 per stage, ``layers4`` = 4 stages/blocks, ``e32`` = the
embedding width (see each architecture for how it grows). Any such name whose ``<arch>``
is known is valid, so tests can use tiny variants (``unet_sc2_layers2_e8``); the QGIS
dropdown offers ``PRESET_MODELS``. Each architecture declares the window geometry
prediction needs (``ModelSpec.multiple``, ``ModelSpec.context``), so predict asks the
catalog instead of knowing the architectures.

A **mixed** name joins local models with ``+`` (``pixel_sc1_layers2_e32+cnn_sc1_layers2_e16``):
one ensemble whose members take the parts in turn (``ModelSpec.part``), each calibrated on its
own ranks, averaged by prediction like any ensemble. Its geometry is the widest part's.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import ConfigError

_NAME_RE = re.compile(r"^(?P<arch>[a-z0-9]+)_sc(?P<scale>\d+)_layers(?P<layers>\d+)_e(?P<width>\d+)$")
MIX = "+"
"""Joins the parts of a mixed model's name."""
MIXED_ARCH = "mixed"


def downsampling_multiple(scale: int, layers: int) -> int:
    """Input multiple of the planar models that downsample by ``scale`` per stage."""
    return scale**layers


def unet_context(scale: int, layers: int) -> int:
    """Pixels of real neighbourhood a planar U-Net needs so zero padding does not show.

    The theoretical receptive radius (3x3 convolution pairs at every stage, ``layers - 1``
    poolings) is capped at ``2 * scale**layers`` pixels (``2 * scale`` pixels of the deepest
    stage): farther pixels weigh little. Measured with random-weight U-Nets of 2, 3 and 4 stages (tiles 32, 64, 128):
    a margin of this size keeps tiled and single-window outputs within 0.01 of each other,
    while half of it left errors of 0.07-0.09.
    """
    encoder = sum(2 * scale**i for i in range(layers))
    decoder = sum(2 * scale**i for i in range(layers - 1))
    pooling = sum((scale - 1) * scale ** (i - 1) for i in range(1, layers))
    radius = encoder + decoder + pooling
    return min(radius, 2 * scale**layers) if scale > 1 else radius


Geometry = Callable[[int, int], int]

SMALL_MODEL_TILE = 64
"""Automatic tile of the per-pixel and small CNN models. Measured on the demo data (5-fold
spatial cv, per-pixel model): with the 256-px tile the split's one-tile buffer left 77 of 120
deposits in training (prediction-rate AUC 0.69 on the 21 held out); with 64 px, 82 (0.85 on
the 24 held out)."""

SPLIT_MARGIN = 4
"""Pixels kept between a validation block and the training pixels of a local model, beyond the
model's context: a deposit burned as a few pixels (--point_buffer) does not straddle the edge."""


def _one(_scale: int, _layers: int) -> int:
    return 1


def _zero(_scale: int, _layers: int) -> int:
    return 0


def _dilated_radius(scale: int, layers: int) -> int:
    return scale * layers


def _pooled(scale: int, layers: int) -> int:
    """A U-Net pools ``layers - 1`` times: it pads its input to this multiple, and a smaller side leaves
    nothing for the deepest stage."""
    return scale ** (layers - 1)


def _patch(scale: int, _layers: int) -> int:
    """The transformer cuts ``scale**2``-pixel patches: a smaller side is one padded patch."""
    return scale * scale


@dataclass(frozen=True)
class Architecture:
    """One architecture family of the registry.

    ``multiple(scale, layers)``: input sizes the model handles without padding artefacts
    (prediction steps its windows by multiples of it); ``context(scale, layers)``: pixels
    of real neighbourhood the model needs at a window edge (prediction overlaps windows by
    at least twice that); ``minimum(scale, layers)``: the smallest tile side it takes (a
    smaller tile is mostly padding: tiny tiles, huge epochs). ``fixed_scale``: the only ``sc``
    the name may carry. ``auto_tile``: the automatic tile side (None: config.DEFAULT_TILE);
    models that see few or no neighbours take small tiles, so the spatial split has small
    blocks and a small buffer and keeps more deposits in training. ``local``: the output at a
    pixel depends only on the pixels within ``context`` of it (no pooling, no attention over the
    window), so the spatial split needs a buffer of only that context (``ModelSpec.split_buffer``)
    and training windows may reach into it with the buffer's and the blocks' pixels masked out:
    on the demo data a one-tile buffer kept only 66 of a cv fold's 96 deposits in training.
    """

    arch: str
    spherical: bool
    description: str
    multiple: Geometry = downsampling_multiple
    context: Geometry = _zero
    minimum: Geometry = _one
    fixed_scale: Optional[int] = None
    auto_tile: Optional[int] = None
    local: bool = False


ARCHITECTURES: Dict[str, Architecture] = {
    a.arch: a
    for a in (
        Architecture("unet", False, "Planar U-Net (plain torch); learns spatial patterns, needs many labels.",
                     multiple=_pooled, context=unet_context, minimum=_pooled),
        Architecture(
            "transformer",
            False,
            "Planar transformer with windowed attention (bounded memory); slower than the U-Net.",
            minimum=_patch,
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
        Architecture(
            "pixel",
            False,
            "Per-pixel network (1x1 convolutions: an MLP over each pixel's bands, dropout, band selection); "
            "made for tens of point labels.",
            multiple=_one,
            fixed_scale=1,
            auto_tile=SMALL_MODEL_TILE,
            local=True,
        ),
        Architecture(
            "additive",
            False,
            "Neural additive model: one learnt curve per band (per class of a class band), summed; no band "
            "interactions, as in weights of evidence or MaxEnt; per pixel, band selection.",
            multiple=_one,
            fixed_scale=1,
            auto_tile=SMALL_MODEL_TILE,
            local=True,
        ),
        Architecture(
            "cnn",
            False,
            "Small CNN: band selection, then a few residual 3x3 convolutions (dilation = sc) that see a small "
            "neighbourhood; trained on pixel patches; for tens to hundreds of labels.",
            multiple=_one,
            context=_dilated_radius,
            auto_tile=SMALL_MODEL_TILE,
            local=True,
        ),
    )
}

#: What Train trains without --models: the per-pixel network, chosen by spatial cross-validation
#: (README "Skill"); the U-Net and the transformer stay available for dense labels.
DEFAULT_MODELS: Tuple[str, ...] = ("pixel_sc1_layers2_e32",)

#: The presets offered in dropdowns. Their order is public (QGIS enum indices): append only.
PRESET_MODELS: Tuple[str, ...] = (
    "unet_sc2_layers4_e32", "transformer_sc2_layers4_e128", "s2unet_sc2_layers4_e32",
    "s2segformer_sc2_layers4_e128", "pixel_sc1_layers2_e32", "cnn_sc1_layers2_e16", "additive_sc1_layers1_e8",
    "pixel_sc1_layers2_e32+cnn_sc1_layers2_e16",
)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name (one network; ``MixedSpec``: several as one ensemble)."""

    name: str
    arch: str
    scale: int
    layers: int
    width: int
    parts: Tuple["ModelSpec", ...] = ()

    def part_index(self, member: int) -> int:
        """Which part ensemble member ``member`` trains: the parts in turn (one part: always 0)."""
        return member % self.part_count

    def part(self, member: int) -> "ModelSpec":
        """The network ensemble member ``member`` trains."""
        return self.parts[self.part_index(member)] if self.parts else self

    @property
    def part_count(self) -> int:
        """Networks one ensemble round trains: a mixed model's parts, else 1."""
        return len(self.parts) or 1

    @property
    def spherical(self) -> bool:
        return ARCHITECTURES[self.arch].spherical

    @property
    def description(self) -> str:
        return ARCHITECTURES[self.arch].description

    @property
    def multiple(self) -> int:
        """Window sizes/steps the model wants (1: any); spherical models take their own grid."""
        return 1 if self.spherical else ARCHITECTURES[self.arch].multiple(self.scale, self.layers)

    @property
    def context(self) -> int:
        """Pixels of neighbourhood the model needs at a window edge (0: none beyond overlap)."""
        return ARCHITECTURES[self.arch].context(self.scale, self.layers)

    @property
    def auto_tile(self) -> Optional[int]:
        """The automatic tile side (None: the general default, config.DEFAULT_TILE)."""
        return None if self.spherical else ARCHITECTURES[self.arch].auto_tile

    @property
    def pixel_sampled(self) -> bool:
        """Each output pixel depends only on the (2 * context + 1)-pixel square around it (a local model), so
        training may feed it a sample of pixels, each with that patch of neighbours, instead of windows
        (``training.PixelBatches``; context 0: the pixel's own bands)."""
        return ARCHITECTURES[self.arch].local and not self.spherical

    @property
    def split_buffer(self) -> Optional[int]:
        """Buffer (px) of the spatial split for a local model, whose training windows may then reach into
        it (masked); None: a one-tile buffer that no training window enters (every other model)."""
        return self.context + SPLIT_MARGIN if self.pixel_sampled else None

    @property
    def minimum_tile(self) -> int:
        """The smallest tile side the model takes (spherical models: their own grid, any raster)."""
        return 1 if self.spherical else max(1, ARCHITECTURES[self.arch].minimum(self.scale, self.layers))


@dataclass(frozen=True)
class MixedSpec(ModelSpec):
    """A mixed name ``a+b``: local models (``_parse_mixed``) sharing one split, tile and pixel sample; its
    geometry is the widest part's."""

    @property
    def spherical(self) -> bool:
        return False

    @property
    def description(self) -> str:
        return ("Mixed ensemble: " + " + ".join(p.name for p in self.parts) + "; each trained and calibrated "
                "on its own, their maps averaged (an uncertainty map where they disagree).")

    @property
    def multiple(self) -> int:
        return math.lcm(*(p.multiple for p in self.parts))

    @property
    def context(self) -> int:
        return max(p.context for p in self.parts)

    @property
    def auto_tile(self) -> Optional[int]:
        return self.parts[0].auto_tile

    @property
    def pixel_sampled(self) -> bool:
        return True

    @property
    def minimum_tile(self) -> int:
        return max(p.minimum_tile for p in self.parts)


def parse_model_name(name: str) -> ModelSpec:
    """Parses and validates a model name; raises ConfigError listing the valid ones."""
    if MIX in (name or ""):
        return _parse_mixed(name)
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
    fixed = ARCHITECTURES[spec.arch].fixed_scale
    if fixed is not None and spec.scale != fixed:
        raise ConfigError(f"model name {name!r}: {spec.arch} models have no downsampling; use sc{fixed} "
                          f"(e.g. {spec.arch}_sc{fixed}_layers{spec.layers}_e{spec.width})")
    return spec


def _parse_mixed(name: str) -> ModelSpec:
    """``a+b[+...]``: local models (trained on pixels) that share one split, tile and pixel sample."""
    parts = tuple(parse_model_name(part.strip()) for part in name.split(MIX))
    if len(parts) < 2:
        raise ConfigError(f"model name {name!r}: a mixed model joins two or more model names with '{MIX}'")
    for part in parts:
        if not ARCHITECTURES[part.arch].local or part.spherical:
            raise ConfigError(
                f"model name {name!r}: {part.name} cannot be mixed; a mixed model joins local models trained on "
                f"pixels ({', '.join(a for a, arch in ARCHITECTURES.items() if arch.local)}), e.g. "
                f"pixel_sc1_layers2_e32{MIX}cnn_sc1_layers2_e16")
    if len({p.auto_tile for p in parts}) > 1:
        raise ConfigError(f"model name {name!r}: its parts want different tiles; mix models of one tile")
    joined = MIX.join(p.name for p in parts)
    return MixedSpec(joined, MIXED_ARCH, 0, 0, 0, parts)


def check_tile(tile: Tuple[int, int], name: str, flag: str = "--tile_size") -> None:
    """Refuses a tile smaller than the model's minimum (``ModelSpec.minimum_tile``), naming the minimum."""
    spec = parse_model_name(name)
    least = spec.minimum_tile
    if min(int(tile[0]), int(tile[1])) < least:
        why = (f"it cuts {least} x {least}-pixel patches" if spec.arch == "transformer"
               else f"it downsamples the tile {spec.layers - 1} times by {spec.scale}")
        raise ConfigError(
            f"{flag} {tile[0]} x {tile[1]} is smaller than {name}'s minimum tile {least} x {least} ({why}); use "
            f"at least {least}, best a multiple of {least} such as {max(least * 8, 64)}"
        )


def list_models() -> List[Tuple[str, str]]:
    """(name, description) of the preset models, for dropdowns and --help."""
    return [(n, parse_model_name(n).description) for n in PRESET_MODELS]

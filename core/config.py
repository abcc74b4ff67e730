"""Configurations of the core's jobs: dataclasses validated on construction, to/from JSON.

Validation here needs no data and no torch, so a wrong option fails at once, before
anything is read ("Arguments are validated before any data is read").
"""
from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar, Union

from .errors import ConfigError
from .models.catalog import DEFAULT_MODELS, check_tile, parse_model_name

AMP_MODES = ("none", "fp16", "bf16")
LOSSES = ("weighted_ce", "focal", "dice", "weighted_ce_dice", "pu")
DEFAULT_LOSS = "weighted_ce_dice"
DEFAULT_TILE = 256
MAX_OVERLAP = 0.5
"""Neighbouring prediction windows share at most half a window (more would only cost time)."""
#: Models trained (different seeds) into one checkpoint and averaged by predict. Flip here.
DEFAULT_ENSEMBLE = 1
MAX_ENSEMBLE = 64

_BUFFER_RE = re.compile(r"^\s*(?P<value>\d+(\.\d*)?|\.\d+)\s*(?P<unit>px|m|km)?\s*$")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")

T = TypeVar("T", bound="_JsonConfig")


def parse_point_buffer(text: str) -> Tuple[float, str]:
    """Parses a point buffer: '0.5' or '0.5px' (pixels), '250m' or '2km' (map units, metres).

    Returns (value, unit) with unit 'px' or 'map' (value converted to map units).
    """
    m = _BUFFER_RE.match(str(text))
    if not m:
        raise ConfigError(
            f"point buffer {text!r} is not understood; give pixels (e.g. 0.5 or 1.5px) or map units (e.g. 250m, 2km)"
        )
    value = float(m.group("value"))
    unit = m.group("unit") or "px"
    if unit == "px":
        return value, "px"
    return value * (1000.0 if unit == "km" else 1.0), "map"


def _pair(value: Any, name: str) -> Optional[Tuple[int, int]]:
    """Normalises a tile/stride given as int, (h, w) or None; refuses zero and negatives."""
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be one integer or two (height width), got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"{name} must be positive, got {h} x {w}; e.g. --{name} 256 256")
    return (h, w)


def categorical_band_list(values: Any) -> List[Union[int, str]]:
    """Categorical bands as 1-based numbers (sorted) then band names (as given, stripped); digits become numbers."""
    numbers, names = set(), []
    for value in values or []:
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            if int(text) < 1:
                raise ConfigError(f"categorical_bands are 1-based band numbers or band names, got {value!r}")
            numbers.add(int(text))
        elif text and text not in names:
            names.append(text)
    return [*sorted(numbers), *names]


def _check_device(device: str) -> None:
    if not _DEVICE_RE.match(device):
        raise ConfigError(f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N")


def _check_amp(amp_mode: str) -> None:
    if amp_mode not in AMP_MODES:
        raise ConfigError(f"amp mode {amp_mode!r} is not valid; use one of {', '.join(AMP_MODES)}")


class _JsonConfig:
    """JSON round trip shared by the configs (never pickle)."""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: Type[T], data: Dict[str, Any]) -> T:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)  # type: ignore[call-arg]

    @classmethod
    def from_json(cls: Type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))


@dataclass
class LabelOptions(_JsonConfig):
    """How a vector layer becomes a 0/1 label mask (shared by training and evaluation).

    Attributes:
        labels_path: any OGR vector (shapefile, GeoPackage, GeoJSON).
        layer: layer name inside a multi-layer source (GeoPackage); None = the first.
        label_column: column holding the labels. None means "use 'label' when present,
            otherwise every feature is positive"; a name given explicitly must exist.
        positive_values: values of the column that mean positive (for string/class columns).
            None: the column must be numeric/boolean 0/1 (or already binary).
        point_buffer: radius for points: pixels ('0.5', '1.5px') or map units ('250m').
        mask_path: optional study-area polygons; pixels outside are ignored.
    """

    labels_path: str = ""
    layer: Optional[str] = None
    label_column: Optional[str] = None
    positive_values: Optional[List[str]] = None
    point_buffer: str = "0.5"
    mask_path: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.labels_path:
            raise ConfigError("no labels given; pass a vector file of points or polygons (--shapefile_path)")
        parse_point_buffer(self.point_buffer)
        if self.positive_values is not None:
            self.positive_values = [str(v) for v in self.positive_values]


@dataclass
class TrainConfig(_JsonConfig):
    """Everything a training run needs (the CLI flags of train_raster.py map one to one)."""

    raster_path: str = ""
    labels: LabelOptions = field(default_factory=lambda: LabelOptions(labels_path="?"))
    models: List[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    tile_size: Optional[Tuple[int, int]] = None
    stride: Optional[Tuple[int, int]] = None
    num_epochs: int = 100
    batch_size: int = 4
    learning_rate: float = 1e-4
    max_grad_norm: float = 1.0
    label_smoothing: float = 0.0
    amp_mode: str = "none"
    augment: bool = False
    ddp: bool = False
    resume: bool = False
    overwrite: bool = False
    output_path: str = "checkpoints_raster"
    checkpoint_path: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.2
    loss: str = DEFAULT_LOSS
    patience: int = 20
    num_workers: int = 0
    categorical_bands: List[Union[int, str]] = field(default_factory=list)
    ensemble: int = DEFAULT_ENSEMBLE
    weight_decay: float = 1e-2
    band_penalty: float = 0.0
    pu_prior: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.labels, dict):
            self.labels = LabelOptions.from_dict(self.labels)
        if not self.raster_path:
            raise ConfigError("no raster given; pass the evidence raster stack (--raster_path)")
        if not self.models:
            raise ConfigError("no model given; pass at least one name to --models")
        self.models = [parse_model_name(m).name for m in self.models]
        self.tile_size = _pair(self.tile_size, "tile_size")
        self.stride = _pair(self.stride, "stride")
        if self.tile_size is not None:
            for name in self.models:
                check_tile(self.tile_size, name)
        if self.num_epochs < 0:
            raise ConfigError(f"num_epochs must be >= 0 (0 only validates), got {self.num_epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        _check_amp(self.amp_mode)
        _check_device(self.device)
        if not 0.0 < self.val_fraction < 0.9:
            raise ConfigError(f"val_fraction must be in (0, 0.9), got {self.val_fraction}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss {self.loss!r} is not valid; use one of {', '.join(LOSSES)}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0 (0 disables early stopping), got {self.patience}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.band_penalty >= 0:
            raise ConfigError(f"band_penalty must be >= 0 (0 = off), got {self.band_penalty}")
        if not 0.0 <= self.pu_prior < 0.5:
            raise ConfigError(f"pu_prior must be in [0, 0.5) (0 = the labelled share), got {self.pu_prior}")
        self.categorical_bands = categorical_band_list(self.categorical_bands)
        if not 1 <= int(self.ensemble) <= MAX_ENSEMBLE:
            raise ConfigError(f"ensemble is the number of members to train, 1 to {MAX_ENSEMBLE}; got {self.ensemble}")
        self.ensemble = int(self.ensemble)
        if self.resume and self.overwrite:
            raise ConfigError("resume continues the existing model and overwrite replaces it: choose one "
                              "(--resume or --overwrite)")
        if self.checkpoint_path is not None and len(self.models) != 1:
            raise ConfigError("checkpoint_path names one file, so train exactly one model with it")

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        """Every field's default: the one source the CLI's and the QGIS tool's defaults read."""
        out: Dict[str, Any] = {}
        for f in fields(cls):
            if f.default_factory is not MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
            elif f.default is not MISSING:
                out[f.name] = f.default
        return out

    def model_dir(self, model_name: str) -> Path:
        """The original layout: <output_path>/<model_name>/."""
        return Path(self.output_path) / model_name

    def checkpoint_file(self, model_name: str) -> Path:
        """Where the checkpoint of a model goes: checkpoint_path, else <model_dir>/checkpoint.pt."""
        if self.checkpoint_path is not None:
            return Path(self.checkpoint_path)
        return self.model_dir(model_name) / "checkpoint.pt"


@dataclass
class PredictConfig(_JsonConfig):
    """A prediction run (the CLI flags of predict_raster.py map one to one).

    ``model_name``, ``in_channels`` and ``num_classes`` are read from the checkpoint; when
    given they must agree with it. ``tile_size`` None = the tile the model was trained with.
    ``overlap`` is the least fraction of a tile shared by neighbouring windows (more when the
    model needs the context for seamless blending, at most half a tile).
    ``uncertainty_path``: a second GeoTIFF with the per-pixel standard deviation across the
    members of an ensemble checkpoint (refused for a single model).
    """

    checkpoint: str = ""
    raster_path: str = ""
    output_path: str = ""
    model_name: Optional[str] = None
    in_channels: Optional[int] = None
    num_classes: Optional[int] = None
    spherical: bool = False
    tile_size: Optional[Tuple[int, int]] = None
    overlap: float = 0.25
    batch_size: int = 4
    device: str = "auto"
    amp_mode: str = "none"
    mask_path: Optional[str] = None
    uncertainty_path: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("checkpoint", "raster_path", "output_path"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is required")
        if self.model_name is not None:
            parse_model_name(self.model_name)
        self.tile_size = _pair(self.tile_size, "tile_size")
        if not 0.0 <= self.overlap <= MAX_OVERLAP:
            raise ConfigError(f"overlap is the fraction of a window shared with each neighbour, from 0 to "
                              f"{MAX_OVERLAP}; got {self.overlap}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        _check_amp(self.amp_mode)
        _check_device(self.device)


@dataclass
class EvaluateConfig(_JsonConfig):
    """Scoring a probability map against labels (label options as in training).

    ``band``: the band of a multi-band raster to score (1-based); a map with one band needs none.
    """

    probability_map: str = ""
    labels: LabelOptions = field(default_factory=lambda: LabelOptions(labels_path="?"))
    checkpoint: Optional[str] = None
    output_dir: str = ""
    test_area: Optional[str] = None
    """Polygons of ground the model never saw: deposits inside are scored as held out (skill)
    against the map inside them; takes the place of the checkpoint's validation blocks."""
    band: Optional[int] = None

    def __post_init__(self) -> None:
        if isinstance(self.labels, dict):
            self.labels = LabelOptions.from_dict(self.labels)
        if not self.probability_map:
            raise ConfigError("--probability_map is required")
        if not self.output_dir:
            raise ConfigError("--output_dir is required")
        if self.band is not None and int(self.band) < 1:
            raise ConfigError(f"--band is a 1-based band number, got {self.band}")


#: The built-in per-pixel baselines of cross-validation (core/baselines.py), in report order.
BASELINES: Tuple[str, ...] = (
    "weights_of_evidence", "maxent", "logistic", "random_forest", "gradient_boosting", "best_band",
)


@dataclass
class CVConfig(_JsonConfig):
    """Spatial cross-validation of registry models and per-pixel baselines on the same folds.

    ``train`` holds the inputs and the deep models' training options (as Train takes them);
    its ``models`` and output paths are not used: ``models`` lists the deep candidates
    (may be empty), each trained per fold with ``train``'s options.

    Attributes:
        train: inputs and training options.
        models: registry model names to cross-validate (candidates named as given).
        baselines: built-in baselines (names in BASELINES).
        folds: number of spatial folds k (>= 2).
        block_size: block side in pixels (None: automatic).
        buffer: pixels between a fold's test blocks and its training data (None: automatic).
        background: background pixels sampled per fold for the baselines.
        bootstrap: resamples of the deposits for the pooled 95 % intervals.
        output_path: folder for cv_results.csv, cv_summary.json, oof_<candidate>.tif, ...
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(raster_path="?"))
    models: List[str] = field(default_factory=lambda: [DEFAULT_MODELS[0]])
    baselines: List[str] = field(default_factory=lambda: list(BASELINES))
    folds: int = 5
    block_size: Optional[int] = None
    buffer: Optional[int] = None
    background: int = 20000
    bootstrap: int = 1000
    output_path: str = "cv_output"

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        models: List[str] = []
        baselines: List[str] = []
        for name in list(self.models) + list(self.baselines):
            name = str(name).strip()
            if name in BASELINES:
                baselines.append(name)
                continue
            try:
                models.append(parse_model_name(name).name)
            except ConfigError:
                raise ConfigError(
                    f"unknown candidate {name!r}; valid baselines are {', '.join(BASELINES)}, and registry models "
                    "such as unet_sc2_layers4_e32 (see `python -m core list-models`)"
                ) from None
        self.models = list(dict.fromkeys(models))
        self.baselines = list(dict.fromkeys(baselines))
        if not self.models and not self.baselines:
            raise ConfigError("no candidate to cross-validate; give --models and/or --baselines")
        if self.folds < 2:
            raise ConfigError(f"--folds must be at least 2, got {self.folds}")
        if self.block_size is not None and self.block_size < 2:
            raise ConfigError(f"--block_size must be at least 2 pixels, got {self.block_size}")
        if self.buffer is not None and self.buffer < 0:
            raise ConfigError(f"--buffer must be >= 0 pixels, got {self.buffer}")
        if self.background < 100:
            raise ConfigError(f"--background must be at least 100 pixels, got {self.background}")
        if self.bootstrap < 0:
            raise ConfigError(f"--bootstrap must be >= 0, got {self.bootstrap}")
        if not self.output_path:
            raise ConfigError("--output_path is required")

    @property
    def candidates(self) -> List[str]:
        """Every candidate, baselines first (they are fast), named as given."""
        return self.baselines + self.models

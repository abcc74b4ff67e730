"""Configurations of the core's jobs: dataclasses validated on construction, to/from JSON.

Validation here needs no data and no torch, so a wrong option fails at once, before
anything is read ("Arguments are validated before any data is read").
"""
from __future__ import annotations

import json
import math
import re
import typing
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type, TypeVar, Union

from .errors import ConfigError
from .models.catalog import DEFAULT_MODELS, check_tile, parse_model_name

AMP_MODES = ("none", "fp16", "bf16")
LOSSES = ("weighted_ce", "focal", "dice", "weighted_ce_dice", "pu")
DEFAULT_LOSS = "pu"
BAND_SCALINGS = ("rank", "zscore")
"""How numeric bands are encoded (core/encoding.py): by rank in the training area, or by z-score."""
FINAL_FITS = ("whole_area", "training_blocks")
"""What the saved model of a local network (trained on pixels) learns from (core/training.py ``refit_member``)."""
EPOCH_CHOICES = ("auto", "validation", "schedule")
"""Who decides how long a model trains (core/training.py ``choose_epochs_by_validation``)."""
DEFAULT_TILE = 256
MAX_OVERLAP = 0.5
"""Neighbouring prediction windows share at most half a window (more would only cost time)."""
#: Models trained (different seeds) into one checkpoint and averaged by predict. Off (1) by
#: default: on the demo data 5 members ranked the truth no better than one (Spearman 0.844 vs
#: 0.853 with seed 0, 0.827 vs 0.836 with seed 1) at 5 times the training time; turn it on for
#: the uncertainty map (where the members disagree).
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
    if isinstance(value, (list, tuple)) and len(value) == 1:  # the command line's one value = square
        value = (value[0], value[0])
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} takes one or two integers (height width), got {value!r}") from None
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


@dataclass(frozen=True)
class Option:
    """How one config field is offered to people: its flag(s), help and accepted range.

    Declared once, on the field (``option(...)``); the command line (cli.py) and the QGIS
    tools (algorithms/) read it, and the config checks its range on construction, so the
    three always agree.
    """

    help: str
    flags: Tuple[str, ...] = ()
    """Command-line flags; empty: ``--<field name>``. The first one is the flag messages name."""
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    choices: Tuple[str, ...] = ()
    note: str = ""
    """Said after the range when a value is refused (e.g. what 0 means)."""
    required: bool = False
    metavar: Optional[str] = None
    nargs: Optional[str] = None
    """For list fields: '+' (default) or '*'."""
    unset: Optional[int] = None
    """The number a QGIS dialog shows for None (0 = automatic); None: the field has no unset state there."""
    skip: Tuple[str, ...] = ()
    """For a nested config: its fields not offered here (the outer config sets them)."""

    def flag(self, name: str) -> str:
        return self.flags[0] if self.flags else f"--{name}"

    def accepts(self, value: float) -> bool:
        """Whether a number lies in the declared range."""
        low, high = self.minimum, self.maximum
        if low is not None and (value <= low if self.min_exclusive else value < low):
            return False
        return high is None or (value < high if self.max_exclusive else value <= high)

    def range_text(self) -> str:
        """'in [0, 0.5)', '>= 1', '> 0' ..."""
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f"in {'(' if self.min_exclusive else '['}{low:g}, {high:g}{')' if self.max_exclusive else ']'}"
        if low is not None:
            return f"{'>' if self.min_exclusive else '>='} {low:g}"
        return f"{'<' if self.max_exclusive else '<='} {high:g}" if high is not None else "any number"

    def closed_range(self) -> Tuple[Optional[float], Optional[float]]:
        """The range with inclusive bounds (the nearest float inside an exclusive one), as QGIS declares it."""
        low, high = self.minimum, self.maximum
        if low is not None and self.min_exclusive:
            low = math.nextafter(low, math.inf)
        if high is not None and self.max_exclusive:
            high = math.nextafter(high, -math.inf)
        return low, high


def option(default: Any = MISSING, *, factory: Any = MISSING, **declaration: Any) -> Any:
    """A dataclass field with its Option (see Option for the keywords)."""
    return field(default=default, default_factory=factory, metadata={"option": Option(**declaration)})


def option_of(f: "Field[Any]") -> Optional[Option]:
    return f.metadata.get("option")


def default_of(f: "Field[Any]") -> Any:
    """A field's default value (a fresh one for factories)."""
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None if f.default is MISSING else f.default


def plain_type(kind: Any) -> Any:
    """Optional[X] -> X."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) is Union and len(args) == 1 else kind


def declared(cls: type, name: str) -> Tuple[Option, Any, Any]:
    """(Option, default, plain type) of one offered field of a config."""
    f = next(f for f in fields(cls) if f.name == name)
    opt = option_of(f)
    assert opt is not None, f"{cls.__name__}.{name} declares no option"
    return opt, default_of(f), plain_type(field_types(cls)[name])


def field_types(cls: type) -> Dict[str, Any]:
    """Resolved type hints of a config's fields (annotations are strings here)."""
    return typing.get_type_hints(cls)


def declared_options(cls: type, skip: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], "Field[Any]", Any]]:
    """Every offered field of a config, nested configs included: (path of field names, field, type)."""
    types = field_types(cls)
    for f in fields(cls):
        opt = option_of(f)
        if opt is None or f.name in skip:
            continue
        kind = types[f.name]
        if is_dataclass(kind):
            for path, inner, inner_type in declared_options(kind, opt.skip):
                yield (f.name, *path), inner, inner_type
        else:
            yield (f.name,), f, kind


class _JsonConfig:
    """JSON round trip shared by the configs (never pickle), and the declared ranges checked."""

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

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        """Every field's default: what the command line and the QGIS tools offer when nothing is given."""
        return {f.name: default_of(f) for f in fields(cls)}  # type: ignore[arg-type]

    def check_options(self) -> None:
        """Refuses a value outside its declared range or choices, naming the flag, the range and the value."""
        for f in fields(self):  # type: ignore[arg-type]
            opt, value = option_of(f), getattr(self, f.name)
            if opt is None or value is None or isinstance(value, (bool, list, tuple, _JsonConfig)):
                continue
            if opt.choices and value not in opt.choices:
                raise ConfigError(f"{opt.flag(f.name)} {value!r} is not valid; use one of {', '.join(opt.choices)}")
            if isinstance(value, (int, float)) and not opt.accepts(value):
                note = f" ({opt.note})" if opt.note else ""
                raise ConfigError(f"{opt.flag(f.name)} must be {opt.range_text()}{note}, got {value}")


@dataclass
class LabelOptions(_JsonConfig):
    """How a vector layer becomes a 0/1 label mask (shared by training and evaluation).

    Attributes:
        labels_path: any OGR vector (shapefile, GeoPackage, GeoJSON).
        layer: layer name inside a multi-layer source (GeoPackage); None = the first.
        label_column: column holding the labels. None means "use 'label' when present,
            otherwise every feature is positive"; a name given explicitly must exist.
        positive_values: values of the column that mean positive (for string/class columns);
            commas also separate values. None: the column must be numeric/boolean 0/1.
        point_buffer: radius for points: pixels ('0.5', '1.5px') or map units ('250m').
        mask_path: optional study-area polygons; pixels outside are ignored.
    """

    labels_path: str = option("", flags=("--shapefile_path", "--labels"), required=True,
                              help="vector labels: any OGR file (shapefile, GeoPackage, GeoJSON) of points or polygons")
    layer: Optional[str] = option(None, help="layer name inside a multi-layer source such as a GeoPackage")
    label_column: Optional[str] = option(
        None, help="field holding the labels (1/0, true/false, or classes with the positive values); empty: the "
                   "field 'label' when present, else every feature is a positive")
    positive_values: Optional[List[str]] = option(
        None, metavar="VALUE", help="for class fields: the values that mean positive, separated by commas (e.g. water)")
    point_buffer: str = option("0.5", help="radius burned around label points: pixels (0.5, 1.5px) or map units "
                                           "(250m, 2km)")
    mask_path: Optional[str] = option(None, help="polygons of the study area: pixels outside are ignored for "
                                                 "training, statistics and metrics")

    def __post_init__(self) -> None:
        if not self.labels_path:
            raise ConfigError("no labels given; pass a vector file of points or polygons (--shapefile_path)")
        parse_point_buffer(self.point_buffer)
        if self.positive_values is not None:
            values = [v.strip() for item in self.positive_values for v in str(item).split(",") if v.strip()]
            self.positive_values = values or None


@dataclass
class TrainConfig(_JsonConfig):
    """Everything a training run needs (the CLI flags of train_raster.py map one to one).

    The defaults (model pixel_sc1_layers2_e32, loss pu, band penalty 0.014 x sqrt(ln bands),
    rank-encoded bands, learning rate 1e-3, batch 8, 60 epochs (early stopping only with fewer
    than 10 training deposits per band: epoch_choice auto), a final fit on the whole area,
    tile 64, one member) were
    chosen by spatial cross-validation (5 folds, seeds 0 to 3, on the demo data, Ecuador
    and Cloncurry; README "Skill" has the tables): on the demo's 99 bands the penalty moved
    the held-out prediction-rate AUC of the per-pixel model from 0.76 (off) to 0.79 (1e-2)
    and 0.83 (3e-2), and back to 0.78 at 1e-1, while Ecuador's 5 bands did best near 0.01 to
    0.02; the old default (U-Net, weighted CE + Dice, 256-px tiles) memorised the deposits
    (Spearman 0.36 with the demo truth).
    """

    raster_path: str = option("", required=True, help="the evidence raster stack (any GDAL raster)")
    labels: LabelOptions = option(factory=lambda: LabelOptions(labels_path="?"), help="")
    models: List[str] = option(
        factory=lambda: list(DEFAULT_MODELS), metavar="NAME",
        help="models to train in turn (`python -m core list-models`): pixel_* (per-pixel network with band "
             "selection, made for tens of point labels), additive_* (per pixel, one learnt curve per band, "
             "summed: no band interactions), cnn_* (small CNN that sees a few pixels around; trained on pixel "
             "patches), unet_* (planar U-Net: spatial patterns, needs many labels), transformer_* (windowed "
             "attention, slower), "
             "s2unet_* / s2segformer_* (spherical, for global EPSG:4326 rasters); local models joined by + "
             "(pixel_sc1_layers2_e32+cnn_sc1_layers2_e16) train as one mixed ensemble, a member of each per "
             "--ensemble, averaged by predict")
    tile_size: Optional[Tuple[int, int]] = option(
        None, metavar="N", minimum=1, unset=0,
        help="side of the training tiles (height width; one value = square). Automatic: the model's tile (64 "
             "for pixel_* and cnn_*, else 256), or the raster size when smaller (halved while the raster is under three tiles, so a spatial validation split fits); "
             "spherical models on a global raster take the whole globe")
    stride: Optional[Tuple[int, int]] = option(
        None, metavar="N", minimum=1, unset=0,
        help="step between training tiles (height width); automatic: the tile size; smaller gives overlapping tiles")
    num_epochs: int = option(60, minimum=0, note="0 trains nothing, only validates",
                             help="passes over the training tiles (a per-pixel model with the pu loss: over its "
                                  "sample of 200 000 background pixels, at least 49 steps of 4096 an epoch, so a "
                                  "smaller area's sample is passed over more than once) (0: train nothing, only "
                                  "validate); early stopping may end sooner (see epoch_choice and patience)")
    batch_size: int = option(8, minimum=1, help="tiles per optimisation step (a per-pixel model with the pu loss "
                                                "takes 4096 background pixels a step); lower it when memory runs out")
    learning_rate: float = option(1e-3, minimum=0.0, min_exclusive=True, help="AdamW learning rate")
    max_grad_norm: float = option(1.0, minimum=0.0, min_exclusive=True, help="clips the gradient norm each step")
    label_smoothing: float = option(0.0, flags=("--label_smoothing_factor",), minimum=0.0, maximum=0.5,
                                    max_exclusive=True, help="softens the 0/1 targets (0 = off)")
    amp_mode: str = option("none", choices=AMP_MODES,
                           help="mixed precision: none, fp16 (CUDA only) or bf16 (CPU and GPU): faster, less "
                                "memory, slightly less precise")
    augment: bool = option(False, flags=("--enable_data_augmentation",),
                           help="band noise and band dropout; for models that see neighbours also random flips and "
                                "90-degree rotations (spherical models: longitude roll and flips); recommended for "
                                "cnn_* models (5-fold cv on the Ecuador landslides: 0.84 with it, 0.81 without)")
    ddp: bool = option(False, flags=("--enable_ddp",),
                       help="distributed data parallel; start with torchrun --nproc_per_node=N (gloo on CPU, nccl "
                            "on GPU)")
    resume: bool = option(False, help="continue training the model already at the checkpoint path (model, "
                                      "optimiser, scheduler, epoch, early-stopping state; every epoch is "
                                      "re-seeded from the seed)")
    overwrite: bool = option(False, help="replace a model already at the checkpoint path; without it (or resume) an "
                                         "existing model is never replaced")
    output_path: str = option("checkpoints_raster", help="folder for the figures, metrics, training report, "
                                                         "validation blocks and log")
    checkpoint_path: Optional[str] = option(None, help="write the model to this file instead of "
                                                       "<output_path>/<model>/checkpoint.pt (one model only)")
    seed: int = option(0, minimum=0, help="random seed; the same seed repeats a CPU run exactly")
    device: str = option("auto", help="auto (a GPU when usable, else the CPU), cpu, cuda or cuda:N")
    val_fraction: float = option(0.2, minimum=0.0, maximum=0.9, min_exclusive=True, max_exclusive=True,
                                 help="share of the area held out in spatially separate validation blocks")
    loss: str = option(DEFAULT_LOSS, choices=LOSSES,
                       help="imbalance-aware loss; pu (positive-unlabelled) treats unlabelled ground as unknown, "
                            "not as barren, which suits known deposits as points")
    patience: int = option(20, minimum=0, note="0 disables early stopping",
                           help="stop after this many epochs without validation improvement (0: never); only "
                                "where the validation blocks choose the epochs (see epoch_choice)")
    epoch_choice: str = option(EPOCH_CHOICES[0], choices=EPOCH_CHOICES,
                               help="how long the model trains: validation = until the validation blocks' best "
                                    "epoch (early stopping; the saved model has that epoch's weights, a final "
                                    "fit trains that many epochs); schedule = every epoch of --num_epochs (the "
                                    "validation blocks only measure the last); auto = validation when the "
                                    "training area holds fewer than 10 deposits per band (a cnn_* model: per value "
                                    "of its patch of bands) or the model is not trained on pixels (pixel_*, "
                                    "additive_* and cnn_* models with the pu loss are), else schedule")
    num_workers: int = option(0, minimum=0, help="data loader worker processes")
    categorical_bands: List[Union[int, str]] = option(
        factory=list, metavar="BAND",
        help="bands holding class codes (e.g. lithology), by name (a band description, a single-band layer's name) "
             "or 1-based number: one-hot encoded, not normalised; the 64 most frequent codes get a channel each, "
             "rarer and unseen ones share 'other'")
    band_scaling: str = option(BAND_SCALINGS[0], choices=BAND_SCALINGS,
                               help="how numeric bands enter the model: rank (each value's rank among the training "
                                    "area's pixels, as a normal score: skewed bands such as grades or distances "
                                    "spread evenly and outliers stay bounded) or zscore (value minus mean over "
                                    "standard deviation); class bands are one-hot either way")
    final_fit: str = option(FINAL_FITS[0], choices=FINAL_FITS,
                            help="what the saved model learns from (pixel_*, additive_* and cnn_* models): "
                                 "whole_area = once the validated model is trained, the model is trained again from the same "
                                 "start on the whole training area, validation blocks included, for as many epochs "
                                 "as the validated model trained (its best epoch, or all of them: see epoch_choice; "
                                 "a fifth more deposits; the validation figures are those of the model before); "
                                 "training_blocks = the validated model as it is")
    ensemble: int = option(DEFAULT_ENSEMBLE, minimum=1, maximum=MAX_ENSEMBLE, metavar="N",
                           note="the number of members to train",
                           help="members trained with different seeds (seed..seed+N-1) into the one model file (a "
                                "mixed model a+b: N of each); "
                                "predict averages them and can map where they disagree (uncertainty, 2 or more); "
                                "training takes this many times longer")
    weight_decay: float = option(1e-2, minimum=0.0, help="AdamW (decoupled) weight decay: shrinks every weight a "
                                                         "little each step (regularisation)")
    band_penalty: float = option(0.014, minimum=0.0, note="0 = off",
                                 help="group-lasso penalty on the weights that read each band (pixel_*, additive_* "
                                      "and cnn_* models), so the model leans on few bands as a sparse logistic "
                                      "regression does; "
                                      "applied times sqrt(ln(number of bands)), since chance evidence grows with the "
                                      "bands to choose from (99 bands: 0.030, 5 bands: 0.018, 1 band: off); a band "
                                      "whose classes already separate the training deposits from the training "
                                      "area bears less of it (band screening, in the log); the log lists the band "
                                      "weights (0 = off)")
    pu_prior: float = option(0.0, minimum=0.0, maximum=0.5, max_exclusive=True, note="0 = the labelled share",
                             help="pu loss: the share of the unlabelled area assumed to hold positives; 0 weighs "
                                  "presences against the background as MaxEnt does")

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
        self.check_options()
        _check_device(self.device)
        self.categorical_bands = categorical_band_list(self.categorical_bands)
        self.ensemble = int(self.ensemble)
        if self.resume and self.overwrite:
            raise ConfigError("resume continues the existing model and overwrite replaces it: choose one "
                              "(--resume or --overwrite)")
        if self.checkpoint_path is not None and len(self.models) != 1:
            raise ConfigError("checkpoint_path names one file, so train exactly one model with it")

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

    checkpoint: str = option("", required=True, help="the trained model (.pt) written by training")
    raster_path: str = option("", required=True, help="the raster stack to predict (the bands the model was "
                                                      "trained on, found by name in any order)")
    output_path: str = option("", required=True, help="the probability GeoTIFF to write")
    model_name: Optional[str] = option(None, help="optional; read from the checkpoint (must agree if given)")
    in_channels: Optional[int] = option(None, minimum=1, help="optional; read from the checkpoint")
    num_classes: Optional[int] = option(None, minimum=1, help="optional; read from the checkpoint")
    spherical: bool = option(False, help="for global EPSG:4326 rasters and spherical models: run the whole globe "
                                         "through the model at once")
    tile_size: Optional[Tuple[int, int]] = option(
        None, metavar="N", minimum=1, unset=0,
        help="side of the prediction windows (height width); automatic: the tile size the model was trained with")
    overlap: float = option(0.25, minimum=0.0, maximum=MAX_OVERLAP,
                            note="the fraction of a window shared with each neighbour",
                            help="fraction of a window shared with its neighbours, blended so no seams show; windows "
                                 "overlap more when the model needs the context for seamless blending")
    batch_size: int = option(4, minimum=1, help="windows per forward pass; lower it when memory runs out")
    device: str = option("auto", help="auto (a GPU when usable, else the CPU), cpu, cuda or cuda:N")
    amp_mode: str = option("none", choices=AMP_MODES, help="mixed precision: none, bf16 or fp16 (CUDA only)")
    mask_path: Optional[str] = option(None, help="study-area polygons: pixels outside are written as nodata")
    uncertainty_path: Optional[str] = option(
        None, help="also write the per-pixel standard deviation across the members of an ensemble model to this "
                   "GeoTIFF (0 where they agree); needs a model trained with ensemble 2 or more")

    def __post_init__(self) -> None:
        for name in ("checkpoint", "raster_path", "output_path"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is required")
        if self.model_name is not None:
            parse_model_name(self.model_name)
        self.tile_size = _pair(self.tile_size, "tile_size")
        self.check_options()
        _check_device(self.device)


@dataclass
class EvaluateConfig(_JsonConfig):
    """Scoring a probability map against labels (label options as in training).

    ``band``: the band of a multi-band raster to score (1-based); a map with one band needs none.
    """

    probability_map: str = option("", required=True, help="the probability GeoTIFF to score")
    labels: LabelOptions = option(factory=lambda: LabelOptions(labels_path="?"), help="")
    checkpoint: Optional[str] = option(
        None, help="the model's checkpoint: splits deposits into training and held-out validation blocks")
    output_dir: str = option("", required=True, help="folder for metrics.json, CSV and PNG (created)")
    test_area: Optional[str] = option(
        None, help="polygons of ground the model never saw: deposits inside are scored as held out (skill) against "
                   "the map inside them (instead of the checkpoint's validation blocks)")
    band: Optional[int] = option(None, minimum=1, note="a 1-based band number",
                                 help="band to score when the raster has several (1-based); a single-band map needs "
                                      "none")

    def __post_init__(self) -> None:
        if isinstance(self.labels, dict):
            self.labels = LabelOptions.from_dict(self.labels)
        if not self.probability_map:
            raise ConfigError("--probability_map is required")
        if not self.output_dir:
            raise ConfigError("--output_dir is required")
        self.check_options()


#: The built-in per-pixel baselines of cross-validation (core/baselines.py), in report order.
BASELINES: Tuple[str, ...] = (
    "weights_of_evidence", "maxent", "logistic", "random_forest", "gradient_boosting", "best_band",
)


#: Train's options that make no sense per fold (cv trains from scratch, one process, its own folders).
_NOT_FOR_CV = ("models", "output_path", "checkpoint_path", "resume", "overwrite", "ddp")


def _candidate_names(values: Any) -> List[str]:
    """Names given as a list, commas also separating them; 'none' alone means no candidate of that kind."""
    names = [v.strip() for item in values or [] for v in str(item).split(",") if v.strip()]
    return [] if [n.lower() for n in names] == ["none"] else names


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

    train: TrainConfig = option(factory=lambda: TrainConfig(raster_path="?"), help="",
                                skip=_NOT_FOR_CV)
    models: List[str] = option(
        factory=lambda: [DEFAULT_MODELS[0]], metavar="NAME", nargs="*",
        help="registry models to cross-validate, each trained per fold with Train's options ('none': baselines only)")
    baselines: List[str] = option(
        factory=lambda: list(BASELINES), metavar="NAME", nargs="*",
        help="built-in per-pixel baselines on the same folds: weights of evidence, MaxEnt, L1 logistic regression, "
             "random forest, gradient boosting, the best single band ('none' for none)")
    folds: int = option(5, minimum=2, note="at least 2 folds",
                        help="number of spatial folds; too many for the deposits gives an error naming the largest "
                             "possible")
    block_size: Optional[int] = option(None, minimum=2, unset=0, note="pixels",
                                       help="side of the spatial blocks in pixels; automatic: about four blocks per "
                                            "fold, smaller when deposits cluster")
    buffer: Optional[int] = option(None, minimum=0, unset=-1, note="pixels",
                                   help="gap in pixels between a fold's test blocks and the data that trains it; "
                                        "automatic: 1/8 of the block side")
    background: int = option(20000, minimum=100, note="pixels",
                             help="background pixels per fold that the baselines learn from, besides the positives")
    bootstrap: int = option(1000, minimum=0, help="bootstrap resamples of the deposits for the pooled 95 % intervals")
    output_path: str = option("cv_output", help="folder for cv_summary.html, cv_results.csv, cv_summary.json, "
                                                "cv_comparison.png, cv_folds.gpkg and the out-of-fold maps "
                                                "oof_<candidate>.tif")

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        models: List[str] = []
        baselines: List[str] = []
        for name in _candidate_names(self.models) + _candidate_names(self.baselines):
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
        self.check_options()
        if not self.output_path:
            raise ConfigError("--output_path is required")

    @property
    def candidates(self) -> List[str]:
        """Every candidate, baselines first (they are fast), named as given."""
        return self.baselines + self.models

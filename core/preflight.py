"""What a training run checks before it writes anything, so a refused run leaves no trace.

Three promises to the user, each checked up front:
- an output never overwrites an input (the checkpoint or a report file over the raster,
  the labels or the mask);
- a trained model is never replaced by accident: a checkpoint path that already holds a
  file needs ``--resume`` (continue it) or ``--overwrite`` (replace it);
- ``--resume`` continues the same run: settings that would change the model's input or the
  spatial split (bands, tile size, seed, validation fraction, ...) are refused, settings that
  only change the optimisation (loss, learning rate, ...) are named in a warning.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .config import TrainConfig
from .errors import ConfigError, DataError
from .events import LogFn
from .files import check_output_location, check_outputs_not_inputs

REPORT_FILES = ("config.json", "train.log", "validation_blocks.gpkg", "metrics.json", "output_data/metrics.pkl",
                "figures/curves.png") + tuple(f"figures/validation_{i}.png" for i in range(10))
"""Files training writes into each model's folder (besides the checkpoint)."""

OVERWRITE_HINT = ("to continue training it add --resume, to replace it add --overwrite (QGIS: 'Resume from the "
                  "output model' / 'Overwrite existing model'), or choose another --checkpoint_path / --output_path")

#: TrainConfig fields whose change on --resume would change the spatial split or the model's input.
SPLIT_SETTINGS = ("seed", "val_fraction", "stride", "categorical_bands", "band_scaling")
#: TrainConfig fields a resumed run may change (named in a warning).
OPTIMISATION_SETTINGS = ("loss", "learning_rate", "batch_size", "label_smoothing", "augment", "max_grad_norm",
                         "patience", "epoch_choice", "weight_decay", "band_penalty", "pu_prior")
LABEL_SETTINGS = ("layer", "label_column", "positive_values", "point_buffer")
_FALLBACK_NAME = re.compile(r"^band_\d+$")


def train_inputs(config: TrainConfig) -> List[Tuple[str, str]]:
    """(role, path) of every file training reads."""
    return [("input raster (--raster_path)", config.raster_path),
            ("labels (--shapefile_path)", config.labels.labels_path),
            ("study-area mask (--mask_path)", config.labels.mask_path or "")]


def train_outputs(config: TrainConfig, names: Sequence[str]) -> List[Tuple[str, Path]]:
    """(role, path) of every file training writes for these models."""
    out: List[Tuple[str, Path]] = []
    for name in names:
        flag = "--checkpoint_path" if config.checkpoint_path else "the checkpoint (--output_path)"
        out.append((flag, config.checkpoint_file(name)))
        out += [(f"the training output {rel}", config.model_dir(name) / rel) for rel in REPORT_FILES]
    return out


def describe_model_file(path: Path) -> str:
    """'a trained model (unet..., 12 epochs, best val_roc_auc 0.81 at epoch 9)' or what else the file is."""
    from .checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except DataError:
        return "a file that is not a Stack Segmenter checkpoint"
    best = ckpt.get("best") or {}
    text = f"a trained model ({ckpt.get('model_name')}, {int(ckpt.get('epoch') or 0)} epoch(s)"
    score = best.get("score")
    if best.get("epoch") and isinstance(score, (int, float)) and math.isfinite(score):
        value = -score if best.get("metric") == "val_loss" else score
        text += f", best {best.get('metric')} {value:.4g} at epoch {best['epoch']}"
    return text + ")"


def check_train_targets(config: TrainConfig, names: Sequence[str], log: LogFn) -> Dict[str, Optional[Dict[str, Any]]]:
    """Checks every output path of a training run; returns the checkpoint each model resumes from.

    Runs before anything is read or written. Returns ``{model name: checkpoint dict or None}``
    (None: the model starts from scratch).

    Raises:
        DataError: an output would overwrite an input, or cannot be written.
        ConfigError: a checkpoint path holds a file and neither --resume nor --overwrite is given.
    """
    from .checkpoint import load_checkpoint

    check_outputs_not_inputs(train_outputs(config, names), train_inputs(config))
    resumes: Dict[str, Optional[Dict[str, Any]]] = {}
    for name in names:
        path = config.checkpoint_file(name)
        flag = "--checkpoint_path" if config.checkpoint_path else "the checkpoint path"
        check_output_location(path, flag)
        check_output_location(config.model_dir(name), "the training output folder (--output_path)", folder=True)
        resumes[name] = None
        if not path.exists():
            continue
        if config.resume:
            resumes[name] = load_checkpoint(path)
        elif config.overwrite:
            log(f"warning: --overwrite: the model at {path} ({describe_model_file(path)}) will be replaced "
                "when the first epoch of this run is saved")
        else:
            raise ConfigError(f"{path} already holds {describe_model_file(path)}; {OVERWRITE_HINT}. "
                              "Nothing was written")
    return resumes


# ----------------------------------------------------------------------------- resume


def _real(names: Sequence[str]) -> bool:
    return bool(names) and not all(_FALLBACK_NAME.match(str(n)) for n in names)


def _norm(value: Any) -> Any:
    """Tuples and lists compare equal; pairs given as one int compare equal to (n, n)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


def resume_differences(config: TrainConfig, ckpt: Dict[str, Any], info: Any, tile: Tuple[int, int]
                       ) -> Tuple[List[str], List[str]]:
    """(refused, warned): each a readable difference between this run and the checkpoint's."""
    stored = dict(ckpt.get("config") or {})
    refused: List[str] = []
    if int(ckpt.get("band_count", info.count)) != info.count:
        refused.append(f"band count {info.count} (checkpoint {ckpt.get('band_count')})")
    theirs, ours = list(ckpt.get("band_names") or []), list(info.band_names)
    if _real(theirs) and _real(ours) and theirs != ours:
        first = next(i for i, (a, b) in enumerate(zip(ours + [None] * 99, theirs + [None] * 99)) if a != b)
        refused.append(f"band {first + 1} named {ours[first] if first < len(ours) else None!r} "
                       f"(checkpoint {theirs[first] if first < len(theirs) else None!r})")
    shape = ckpt.get("raster_shape")
    if shape and list(shape) != [info.height, info.width]:
        refused.append(f"raster grid {info.height} x {info.width} px (checkpoint {shape[0]} x {shape[1]})")
    if ckpt.get("tile_size") and list(ckpt["tile_size"]) != list(tile):
        refused.append(f"tile size {tile[0]} x {tile[1]} (checkpoint {ckpt['tile_size'][0]} x {ckpt['tile_size'][1]})")
    now = config.to_dict()
    for key in SPLIT_SETTINGS:
        if key in stored and _norm(stored[key]) != _norm(now[key]):
            refused.append(f"{key} {now[key]!r} (checkpoint {stored[key]!r})")
    labels_then, labels_now = dict(stored.get("labels") or {}), now["labels"]
    for key in LABEL_SETTINGS:
        if key in labels_then and labels_then[key] != labels_now[key]:
            refused.append(f"labels {key} {labels_now[key]!r} (checkpoint {labels_then[key]!r})")
    if "mask_path" in labels_then and bool(labels_then["mask_path"]) != bool(labels_now["mask_path"]):
        refused.append(f"study-area mask {'given' if labels_now['mask_path'] else 'none'} "
                       f"(checkpoint {'given' if labels_then['mask_path'] else 'none'})")
    warned = [f"{key} {now[key]!r} (checkpoint {stored[key]!r})" for key in OPTIMISATION_SETTINGS
              if key in stored and _norm(stored[key]) != _norm(now[key])]
    return refused, warned


def check_resume(config: TrainConfig, name: str, ckpt: Dict[str, Any], info: Any, tile: Tuple[int, int],
                 log: LogFn) -> None:
    """Refuses a --resume that would not continue the same run; warns about optimisation changes.

    Raises:
        ConfigError: the model, the bands, the grid, the tile or the split settings differ
            (each difference named).
    """
    path = config.checkpoint_file(name)
    if ckpt.get("model_name") != name:
        raise ConfigError(f"--resume: {path} holds model {ckpt.get('model_name')}, not {name}; use another "
                          "--output_path or train the same model. Nothing was written")
    refused, warned = resume_differences(config, ckpt, info, tile)
    if refused:
        raise ConfigError(
            f"--resume: this run differs from the checkpoint {path} in: {'; '.join(refused)}. Resuming would not "
            "continue the same model and split; resume with the checkpoint's settings, or train a new model "
            f"(another --checkpoint_path / --output_path, or --overwrite). Nothing was written"
        )
    if warned:
        log(f"warning: --resume with settings that differ from the checkpoint's: {'; '.join(warned)}; training "
            "continues with the new ones")


def check_same_split(val_blocks: Sequence[Sequence[int]], ckpt: Dict[str, Any], path: Path) -> None:
    """A resumed run must validate on the blocks it validated on before (else it trains on them)."""
    stored = [list(map(int, b)) for b in ckpt.get("validation_blocks") or []]
    if stored and stored != [list(map(int, b)) for b in val_blocks]:
        raise ConfigError(
            f"--resume: the validation blocks of this run differ from those in {path} (the labels, the mask or the "
            "raster's nodata changed); resuming would train on ground the model was validated on. Train a new "
            "model (another --checkpoint_path / --output_path, or --overwrite). Nothing was written"
        )

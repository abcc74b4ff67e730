"""Self-describing checkpoints, written atomically and read without unpickling code.

A checkpoint is a plain dict of tensors and JSON-able primitives (see the key list in
docs/ARCHITECTURE.md), so ``torch.load(..., weights_only=True)`` reads it: a file from
someone else can never run code on load. It holds what prediction needs to rebuild the
model and encode a raster exactly as in training (model name and kwargs, band encoder,
grid), and what resuming needs (optimiser, scheduler, epoch, RNG states, history).

Weights: ``state_dict`` holds the weights after the LAST finished epoch (resume continues
from them); ``best`` holds ``{"epoch", "score", "metric", "state_dict"}`` of the epoch with
the best validation score. ``build_model_from_checkpoint`` loads the BEST weights when
present, else the last ones.

Ensembles (format 2): ``members`` lists finished models, each a dict with its prediction
weights (``state_dict``) and, where it differs from the checkpoint's, its own
``model_kwargs`` / ``encoder`` (cross-validation folds fit their own band statistics) and
``calibration``. Prediction averages the members (``ensemble_members``); a checkpoint
without members (format 1, or a run that finished no member yet) is one member: its best
weights. The top-level training state belongs to the member trained last, so a cancelled
ensemble keeps its finished members and ``--resume`` continues the unfinished one.
``save_ensemble`` bundles separately trained checkpoints (e.g. cross-validation folds).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .errors import DataError
from .events import LogFn
from .files import write_bytes_atomic

FORMAT = "stack_segmenter.checkpoint/2"
#: Formats ``load_checkpoint`` reads: 1 = one model (no ``members``), 2 = adds ``members``.
FORMATS = ("stack_segmenter.checkpoint/1", FORMAT)
REQUIRED_KEYS = ("format", "model_name", "model_kwargs", "state_dict")
#: Keys a member may hold to override the checkpoint's own (folds fit their own encoder).
MEMBER_OVERRIDES = ("model_kwargs", "encoder", "calibration")
#: Training state that belongs to one run, not to an ensemble bundled by ``save_ensemble``.
TRAINING_STATE = ("optimizer", "scheduler", "rng", "best", "history", "patience_counter")


def save_checkpoint(path: str | Path, ckpt: Dict[str, Any], log: Optional[LogFn] = None) -> Path:
    """Writes ``ckpt`` atomically (files.py: temp file, fsync, read back, rename).

    The checkpoint is serialised in memory first, so its exact size is checked against the
    free space and named in a "No space left on device" error, and a crash at any moment
    leaves either the previous file or the new one, never a torn one.
    """
    data = dict(ckpt)
    data["format"] = FORMAT
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return write_bytes_atomic(path, buffer.getvalue(), log=log)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> Dict[str, Any]:
    """Loads a checkpoint written by ``save_checkpoint`` (``weights_only=True``).

    Raises:
        DataError: the file is missing, unreadable/truncated, or not one of our checkpoints.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"checkpoint {str(p)!r} does not exist; give the checkpoint.pt written by training")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle error, foreign objects: all "unreadable"
        raise DataError(
            f"checkpoint {str(p)!r} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
            "it is truncated, corrupt or not a PyTorch file; retrain or copy the file again"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in FORMATS:
        hint = " (it looks like a bare state dict, e.g. from the original train_raster.py)" if _looks_like_state_dict(ckpt) else ""
        raise DataError(
            f"{str(p)!r} is not a Stack Segmenter checkpoint (format {FORMAT!r}){hint}; "
            "train a model with this plugin (python -m core train ...) and use its checkpoint.pt"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise DataError(f"checkpoint {str(p)!r} lacks {missing}; it is incomplete, retrain the model")
    members = ckpt.get("members") or []
    if not isinstance(members, list) or not all(isinstance(m, dict) and isinstance(m.get("state_dict"), dict)
                                                for m in members):
        raise DataError(f"checkpoint {str(p)!r} holds malformed ensemble members; retrain the model")
    return ckpt


def _looks_like_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def model_weights(ckpt: Dict[str, Any], which: str = "best") -> Dict[str, torch.Tensor]:
    """The weights to use: ``best`` (falls back to the last when absent) or ``last``."""
    best: Optional[Dict[str, Any]] = ckpt.get("best")
    if which == "best" and best and best.get("state_dict"):
        return best["state_dict"]
    return ckpt["state_dict"]


def build_model_from_checkpoint(ckpt: Dict[str, Any], which: str = "best") -> nn.Module:
    """Rebuilds the model from ``model_kwargs`` and loads its weights (best by default).

    Raises:
        DataError: the stored weights do not fit the stored architecture.
    """
    from .models.registry import build_model

    kwargs = dict(ckpt["model_kwargs"])
    model = build_model(kwargs.pop("name", ckpt["model_name"]), **kwargs)
    try:
        model.load_state_dict(model_weights(ckpt, which))
    except RuntimeError as exc:
        raise DataError(
            f"the checkpoint's weights do not fit model {ckpt['model_name']} ({str(exc).splitlines()[0]}); "
            "the file was edited or written by another version; retrain the model"
        ) from None
    return model


def encoder_from_checkpoint(ckpt: Dict[str, Any]) -> Any:
    """The band encoder stored in the checkpoint (None when it holds none)."""
    from .encoding import BandEncoder

    enc = ckpt.get("encoder")
    return None if enc is None else BandEncoder.from_dict(enc)


# ----------------------------------------------------------------------------- ensembles


def ensemble_members(ckpt: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The models prediction averages, each as a complete view.

    Every view has ``model_name, model_kwargs, encoder, calibration, state_dict, label``
    (plus whatever the member stores: ``seed``, ``epoch``, ``best``, ``history``). Finished
    members when the checkpoint has any; else the checkpoint itself with its best weights
    (a format-1 file, or a run cancelled before its first member finished).
    """
    base = {"model_name": ckpt["model_name"], "model_kwargs": ckpt["model_kwargs"],
            "encoder": ckpt.get("encoder"), "calibration": None}
    members = ckpt.get("members") or []
    if not members:
        return [dict(base, state_dict=model_weights(ckpt), seed=ckpt.get("seed"), label="model")]
    out = []
    for i, member in enumerate(members):
        view = dict(base, label=f"member {i + 1}")
        view.update(member)
        out.append(view)
    return out


def build_member_model(member: Dict[str, Any]) -> nn.Module:
    """Rebuilds one member (a view from ``ensemble_members``) with its weights.

    Raises:
        DataError: the stored weights do not fit the stored architecture.
    """
    from .models.registry import build_model

    kwargs = dict(member["model_kwargs"])
    name = kwargs.pop("name", member["model_name"])
    model = build_model(name, **kwargs)
    try:
        model.load_state_dict(member["state_dict"])
    except RuntimeError as exc:
        raise DataError(
            f"the checkpoint's weights ({member.get('label', 'model')}) do not fit model {name} "
            f"({str(exc).splitlines()[0]}); the file was edited or written by another version; retrain the model"
        ) from None
    return model


def trained_on_validation_blocks(ckpt: Dict[str, Any]) -> bool:
    """Whether a member of the checkpoint was refit on the whole area (``training.refit_member``): its
    validation blocks are then no longer held out from the map it predicts."""
    return any((m.get("final_fit") or {}).get("area") == "whole" for m in ckpt.get("members") or [])


def finished_member(ckpt: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    """A member entry for the model a single-run checkpoint holds (its best weights).

    ``extra`` adds keys (e.g. ``calibration``); ``best`` keeps its epoch and score only.
    """
    best = ckpt.get("best") or {}
    member = {
        "seed": ckpt.get("seed"),
        "epoch": ckpt.get("epoch"),
        "best": {k: best.get(k) for k in ("epoch", "score", "metric")} if best else None,
        "history": list(ckpt.get("history") or []),
        "state_dict": model_weights(ckpt),
    }
    member.update(extra)
    return member


def save_ensemble(path: str | Path, checkpoints: Sequence[Dict[str, Any] | str | Path],
                  *, log: Optional[Callable[[str], None]] = None) -> Path:
    """Bundles trained checkpoints (dicts or files) into one ensemble checkpoint, atomically.

    For cross-validation folds or separately trained seeds. Every member of every input
    becomes a member of the result (an input ensemble contributes all its members). They
    must share the model name, the bands and the tile size; each keeps its own encoder and
    calibration where they differ. Validation blocks are kept only when all inputs share
    them (folds do not: every area was trained on by some member, so nothing is held out).

    Raises:
        DataError: no input, or inputs that cannot be averaged (different model or bands).
    """
    log = log or (lambda _m: None)
    loaded = [load_checkpoint(c) if isinstance(c, (str, Path)) else c for c in checkpoints]
    if not loaded:
        raise DataError("save_ensemble needs at least one checkpoint")
    first = loaded[0]
    for key in ("model_name", "band_count", "band_names", "tile_size"):
        for i, other in enumerate(loaded[1:], start=2):
            if other.get(key) != first.get(key):
                raise DataError(
                    f"checkpoint {i} has {key} {other.get(key)!r} but the first has {first.get(key)!r}; "
                    "an ensemble averages models of the same kind trained on the same bands"
                )
    base = {k: v for k, v in first.items() if k not in TRAINING_STATE and k not in ("members", "ensemble")}
    members: List[Dict[str, Any]] = []
    for ckpt in loaded:
        for view in ensemble_members(ckpt):
            member = {k: v for k, v in view.items() if k not in ("model_name", "label") + MEMBER_OVERRIDES}
            for key in MEMBER_OVERRIDES:
                if view.get(key) is not None and view.get(key) != base.get(key):
                    member[key] = view[key]
            members.append(member)
    if any(c.get("validation_blocks") != first.get("validation_blocks") for c in loaded[1:]):
        base["validation_blocks"], base["validation_blocks_map"] = [], []
        log("note: the checkpoints were validated on different blocks (e.g. cross-validation folds); the "
            "ensemble holds no validation blocks, so Evaluate treats every deposit as seen in training")
    base["state_dict"] = members[0]["state_dict"]
    base["epoch"] = max(int(m.get("epoch") or 0) for m in members)
    base["members"] = members
    base["ensemble"] = {"size": len(members), "source": "save_ensemble"}
    return save_checkpoint(path, base)


def describe_checkpoint(path: str | Path) -> Dict[str, Any]:
    """What a model needs from a raster, in JSON (``python -m core model-info``): the bands by name,
    which are categorical, and how it was trained. The QGIS tools ask it before they stack the
    evidence layers (categorical bands are resampled by nearest neighbour)."""
    ckpt = load_checkpoint(path)
    names = [str(n) for n in ckpt.get("band_names") or []]
    encoder = ensemble_members(ckpt)[0].get("encoder") or {}  # members share the bands and their kinds
    categorical = sorted(int(b) for b in (encoder.get("categories") or {}))
    return {
        "checkpoint": str(path),
        "model_name": ckpt.get("model_name"),
        "band_names": names,
        "categorical_bands": [names[b - 1] if 0 < b <= len(names) else f"band_{b}" for b in categorical],
        "tile_size": ckpt.get("tile_size"),
        "epoch": ckpt.get("epoch"),
        "crs_wkt": ckpt.get("crs_wkt"),
        "pixel_size": ckpt.get("pixel_size"),
    }

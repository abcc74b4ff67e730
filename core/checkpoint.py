"""Self-describing checkpoints, written atomically and read without unpickling code.

A checkpoint is a plain dict of tensors and JSON-able primitives (see the key list in
docs/ARCHITECTURE.md), so ``torch.load(..., weights_only=True)`` reads it: a file from
someone else can never run code on load. It holds what prediction needs to rebuild the
model and encode a raster exactly as in training (model name and kwargs, band encoder,
grid), and what resuming needs (optimiser, scheduler, epoch, RNG states, history).

Weights: ``state_dict`` holds the weights after the LAST finished epoch (resume continues
from them); ``best`` holds ``{"epoch", "score", "metric", "state_dict"}`` of the epoch with
the best validation score. ``build_model_from_checkpoint`` (used by predict) loads the
BEST weights when present, else the last ones.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from .errors import DataError

FORMAT = "stack_segmenter.checkpoint/1"
REQUIRED_KEYS = ("format", "model_name", "model_kwargs", "state_dict")


def _fsync_dir(folder: Path) -> None:
    """Makes the rename durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, ckpt: Dict[str, Any]) -> Path:
    """Writes ``ckpt`` atomically: temp file in the same folder, fsync, then ``os.replace``.

    A crash at any moment leaves either the previous file or the new one, never a torn one.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = dict(ckpt)
    data["format"] = FORMAT
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(out.parent)
    return out


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
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = " (it looks like a bare state dict, e.g. from the original train_raster.py)" if _looks_like_state_dict(ckpt) else ""
        raise DataError(
            f"{str(p)!r} is not a Stack Segmenter checkpoint (format {FORMAT!r}){hint}; "
            "train a model with this plugin (python -m core train ...) and use its checkpoint.pt"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise DataError(f"checkpoint {str(p)!r} lacks {missing}; it is incomplete, retrain the model")
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

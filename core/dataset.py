"""A torch Dataset of raster windows with their labels and validity masks.

Each item reads one window from disk (never the whole stack), encodes it with the
training-area statistics and returns ``{"x", "y", "valid"}``. The raster is opened lazily,
once per process, so DataLoader workers and DDP ranks each hold their own handle.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .encoding import BandEncoder
from .errors import DataError
from .raster import Box, gdal_env, open_dataset, read_window


def _crop(a: np.ndarray, box: Box, fill: Any) -> np.ndarray:
    """The box of a 2-D array, padded with ``fill`` where the box leaves the array."""
    r0, c0, r1, c1 = box
    out = np.full((r1 - r0, c1 - c0), fill, dtype=a.dtype)
    h, w = a.shape
    rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
    if rr0 < rr1 and cc0 < cc1:
        out[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = a[rr0:rr1, cc0:cc1]
    return out


def augment_planar(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, generator: Optional[torch.Generator] = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random flips and (square tiles only) 90-degree rotations, identical for x, y, valid.

    Map data has no preferred orientation, so these are label-preserving; colour jitter
    would not be (bands are measurements, not RGB).
    """
    draws = torch.rand(3, generator=generator)
    if draws[0] < 0.5:
        x, y, valid = x.flip(-1), y.flip(-1), valid.flip(-1)
    if draws[1] < 0.5:
        x, y, valid = x.flip(-2), y.flip(-2), valid.flip(-2)
    if x.shape[-1] == x.shape[-2]:
        k = int(draws[2] * 4) % 4
        if k:
            x, y, valid = (t.rot90(k, dims=(-2, -1)) for t in (x, y, valid))
    return x.contiguous(), y.contiguous(), valid.contiguous()


def augment_spherical(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor,
                      generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random longitude roll and east-west flip (symmetries of a global lat/lon grid).

    Rows are latitudes, so they are never rotated into columns.
    """
    width = x.shape[-1]
    shift = int(torch.randint(0, width, (1,), generator=generator))
    x, y, valid = x.roll(shift, -1), y.roll(shift, -1), valid.roll(shift, -1)
    if torch.rand(1, generator=generator) < 0.5:
        x, y, valid = x.flip(-1), y.flip(-1), valid.flip(-1)
    return x.contiguous(), y.contiguous(), valid.contiguous()


class TileDataset(Dataset):
    """Windows of a raster as training/validation samples.

    Args:
        raster_path: the stack (read window by window).
        windows: (row0, col0, row1, col1) boxes, all the same size for batching.
        labels: uint8 (H, W) 0/1 on the raster's grid.
        encoder: band encoding fitted on the training area.
        study_mask: bool (H, W), pixels outside are not valid (None = everywhere).
        augment: random flips/rotations (planar) or longitude roll + flip (spherical).
        spherical: the raster is a global lat/lon grid.

    Items: ``{"x": float32 (C_out, H, W), "y": int64 (H, W), "valid": bool (H, W)}``
    where valid = every band holds data AND inside the study mask.
    """

    def __init__(
        self,
        raster_path: str,
        windows: Sequence[Box],
        labels: np.ndarray,
        encoder: BandEncoder,
        study_mask: Optional[np.ndarray] = None,
        *,
        augment: bool = False,
        spherical: bool = False,
    ) -> None:
        if study_mask is not None and study_mask.shape != labels.shape:
            raise DataError(f"study mask {study_mask.shape} and labels {labels.shape} differ in shape")
        self.raster_path = str(raster_path)
        self.windows = [tuple(int(v) for v in w) for w in windows]
        self.labels = labels
        self.encoder = encoder
        self.study_mask = study_mask
        self.augment = augment
        self.spherical = spherical
        self._src: Any = None
        self._pid: Optional[int] = None

    def __len__(self) -> int:
        return len(self.windows)

    def __getstate__(self) -> Dict[str, Any]:
        """Pickled for worker processes without the open file handle."""
        state = dict(self.__dict__)
        state["_src"], state["_pid"] = None, None
        return state

    def _dataset(self) -> Any:
        """The open raster of this process (opened on first use, reopened after a fork)."""
        if self._src is None or self._pid != os.getpid():
            self._src = open_dataset(self.raster_path)
            self._pid = os.getpid()
        return self._src

    def close(self) -> None:
        """Closes the raster handle of this process (it reopens on the next item)."""
        if self._src is not None and self._pid == os.getpid():
            self._src.close()
        self._src, self._pid = None, None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn down rasterio
            pass

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        r0, c0, r1, c1 = self.windows[index]
        with gdal_env():
            data, valid = read_window(self._dataset(), r0, c0, r1 - r0, c1 - c0)
        if self.study_mask is not None:
            valid &= _crop(self.study_mask, (r0, c0, r1, c1), False)
        y = _crop(self.labels, (r0, c0, r1, c1), 0)
        x = torch.from_numpy(self.encoder.encode(data, valid))
        yt = torch.from_numpy(y.astype(np.int64))
        vt = torch.from_numpy(valid)
        if self.augment:
            x, yt, vt = (augment_spherical if self.spherical else augment_planar)(x, yt, vt)
        return {"x": x, "y": yt, "valid": vt}

"""A torch Dataset of raster windows with their labels and validity masks.

Each item reads one window from disk (never the whole stack), encodes it with the
training-area statistics and returns ``{"x", "y", "valid"}``. The raster is opened lazily,
once per process, so DataLoader workers and DDP ranks each hold their own handle.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .encoding import BandEncoder
from .errors import DataError
from .raster import PixelBox, gdal_env, open_dataset, read_window


def _crop(a: np.ndarray, box: PixelBox, fill: Any) -> np.ndarray:
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


def augment_patches(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Each (C, k, k) patch of a batch turned by its own draw of the square's 8 symmetries (flips and
    90-degree turns): what ``augment_planar`` does to a window, per sampled pixel of a context model
    (the centre, whose label the loss reads, stays the centre). One gather for the whole batch, in
    its layout: pixels-last patches come back pixels-last."""
    n, c, k, _ = x.shape
    turns = torch.from_numpy(rng.integers(0, 8, size=n))
    grid = torch.arange(k * k).view(k, k)
    sources = torch.stack([_symmetry(grid, t).reshape(-1) for t in range(8)])  # (8, k*k): where each pixel reads
    pixels = x.permute(0, 2, 3, 1).reshape(n, k * k, c)  # a view for pixels-last patches
    out = torch.gather(pixels, 1, sources[turns][:, :, None].expand(n, k * k, c))
    return out.view(n, k, k, c).permute(0, 3, 1, 2)


def _symmetry(square: torch.Tensor, t: int) -> torch.Tensor:
    """Symmetry ``t`` (0..7) of a square's last two axes: ``t % 4`` quarter turns, mirrored first when t >= 4."""
    return (square.flip(-1) if t >= 4 else square).rot90(t % 4, dims=(-2, -1))


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


MEMORY_BYTES = 1024**3
"""A raster whose encoded form fits in this many bytes is read once and kept in memory."""
BAND_NOISE = 0.1
"""Std of the Gaussian noise added to standardised numeric bands (``augment_bands``)."""
BAND_DROPOUT = 0.1
"""Chance that a band is blanked (set to its mean, 0) in a training sample (``augment_bands``)."""


def augment_bands(x: torch.Tensor, valid: torch.Tensor, groups: Sequence[Sequence[int]], *,
                  noise: float = BAND_NOISE, drop: float = BAND_DROPOUT) -> torch.Tensor:
    """Evidence-stack augmentation of a batch (B, C, H, W): band noise and band dropout.

    Each sample loses each raw band (all channels of its ``groups`` entry, so a one-hot
    categorical band goes as a whole) with chance ``drop``, so the model cannot lean on
    one band; numeric bands (single-channel groups) get Gaussian noise of std ``noise``
    (in standard deviations), as measurements carry. Invalid pixels stay 0. Uses the
    torch RNG, which training seeds per epoch (resume repeats it).
    """
    b, c = x.shape[:2]
    keep = torch.ones(b, c, device=x.device, dtype=x.dtype)
    numeric = torch.zeros(c, device=x.device, dtype=x.dtype)
    dropped = torch.rand(b, len(groups), device=x.device) < drop
    for g, channels in enumerate(groups):
        keep[:, list(channels)] = (~dropped[:, g]).to(x.dtype)[:, None]
        if len(channels) == 1:
            numeric[channels[0]] = 1.0
    if x.dim() == 4 and x.permute(0, 2, 3, 1).is_contiguous():  # pixels last: patches, single pixels
        xl = x.permute(0, 2, 3, 1)  # broadcasting over the last, contiguous axis: 6x faster on patches
        out = torch.randn_like(xl).mul_(noise * numeric).add_(xl)
        out.mul_(keep[:, None, None, :]).mul_(valid[..., None].to(x.dtype))
        return out.permute(0, 3, 1, 2)
    noisy = x + noise * torch.randn_like(x) * numeric[None, :, None, None]
    return noisy * keep[:, :, None, None] * valid[:, None].to(x.dtype)


def encoded_pixels(raster_path: str, encoder: BandEncoder, flat: np.ndarray,
                   memory: Optional["EncodedRaster"] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Encoded (C, n) values and validity (n,) of pixels at flat (row-major) indices.

    From ``memory`` when the raster is kept there, else in one chunked pass over the chunks
    that hold any of the pixels (bounded memory, any raster size).
    """
    if memory is not None:
        return memory.pixels(flat)
    from .raster import chunks, open_raster

    out = np.zeros((encoder.out_channels, flat.size), dtype=np.float32)
    ok = np.zeros(flat.size, dtype=bool)
    with open_raster(raster_path) as src:
        rows, cols = np.divmod(flat, src.width)
        for r0, c0, r1, c1 in chunks(src.height, src.width):
            hit = np.flatnonzero((rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1))
            if not hit.size:
                continue
            data, valid = read_window(src, r0, c0, r1 - r0, c1 - c0)
            x = encoder.encode(data, valid)
            out[:, hit] = x[:, rows[hit] - r0, cols[hit] - c0]
            ok[hit] = valid[rows[hit] - r0, cols[hit] - c0]
    return out, ok


class EncodedRaster:
    """A small raster read once, chunk by chunk, and kept encoded in memory.

    Training revisits every window each epoch; for rasters whose encoded form fits in
    ``MEMORY_BYTES`` (the demo data, most single-study stacks) reading and decoding
    compressed blocks again each epoch costs far more than the model (64 x 64 windows of a
    256-tiled, deflated stack decode whole blocks for every window). Larger rasters are
    read window by window as before (``fits`` says which).
    """

    def __init__(self, raster_path: str, encoder: BandEncoder) -> None:
        from .raster import chunks, open_raster

        with open_raster(raster_path) as src:
            height, width = src.height, src.width
            self.x = np.zeros((encoder.out_channels, height, width), dtype=np.float32)
            self.valid = np.zeros((height, width), dtype=bool)
            for r0, c0, r1, c1 in chunks(height, width):
                data, valid = read_window(src, r0, c0, r1 - r0, c1 - c0)
                encoder.encode(data, valid, out=self.x[:, r0:r1, c0:c1])
                self.valid[r0:r1, c0:c1] = valid
        self._pixels_last: Optional[np.ndarray] = None  # (H, W, C), for patches

    def pixels(self, flat: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Encoded (C, n) values and validity (n,) of pixels given as flat (row-major) indices."""
        return self.x.reshape(self.x.shape[0], -1)[:, flat], self.valid.reshape(-1)[flat]

    def patches(self, flat: np.ndarray, radius: int) -> np.ndarray:
        """Encoded (n, C, 2r+1, 2r+1) squares around pixels given as flat indices (0 outside the raster,
        as a prediction window sees there): what a context model trains on (``training.PixelBatches``).

        Cut from a pixels-last copy of the raster (made on first use, as large again as ``x``) and
        returned as a view in that layout: a pixel's bands are one run of memory, so the cut took
        about two thirds of the time it took from planes of bands on the demo's 110 channels, and
        the band layer reads them as one matrix product (``SmallCNN.centre``)."""
        if self._pixels_last is None:
            self._pixels_last = np.ascontiguousarray(self.x.transpose(1, 2, 0))
        height, width, _ = self._pixels_last.shape
        rows, cols = np.divmod(np.asarray(flat, dtype=np.int64), width)
        offsets = np.arange(-radius, radius + 1)
        rr, cc = rows[:, None] + offsets, cols[:, None] + offsets
        inside = ((rr >= 0) & (rr < height))[:, :, None] & ((cc >= 0) & (cc < width))[:, None, :]
        out = self._pixels_last[np.clip(rr, 0, height - 1)[:, :, None], np.clip(cc, 0, width - 1)[:, None, :]]
        out *= inside[..., None]
        return out.transpose(0, 3, 1, 2)

    @staticmethod
    def nbytes(height: int, width: int, encoder: BandEncoder) -> int:
        """Bytes the encoded raster takes."""
        return height * width * (4 * encoder.out_channels + 1)

    @classmethod
    def fits(cls, height: int, width: int, encoder: BandEncoder, budget: int = MEMORY_BYTES) -> bool:
        """Whether the encoded raster fits the memory budget."""
        return cls.nbytes(height, width, encoder) <= budget

    def window(self, box: PixelBox) -> Tuple[np.ndarray, np.ndarray]:
        """Encoded (C, h, w) and validity (h, w) of a box (0 / invalid outside the raster)."""
        r0, c0, r1, c1 = box
        _, height, width = self.x.shape
        if r0 >= 0 and c0 >= 0 and r1 <= height and c1 <= width:
            return self.x[:, r0:r1, c0:c1].copy(), self.valid[r0:r1, c0:c1].copy()
        x = np.zeros((self.x.shape[0], r1 - r0, c1 - c0), dtype=np.float32)
        valid = _crop(self.valid, box, False)
        rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r1, height), min(c1, width)
        if rr0 < rr1 and cc0 < cc1:
            x[:, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = self.x[:, rr0:rr1, cc0:cc1]
        return x, valid


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
        memory: the whole raster already encoded in memory (``EncodedRaster``, shared by
            the training and validation sets of small rasters): windows become slices.

    Items: ``{"x": float32 (C_out, H, W), "y": int64 (H, W), "valid": bool (H, W)}``
    where valid = every band holds data AND inside the study mask.
    """

    def __init__(
        self,
        raster_path: str,
        windows: Sequence[PixelBox],
        labels: np.ndarray,
        encoder: BandEncoder,
        study_mask: Optional[np.ndarray] = None,
        *,
        augment: bool = False,
        spherical: bool = False,
        memory: Optional["EncodedRaster"] = None,
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
        self.memory = memory

    def __len__(self) -> int:
        return len(self.windows)

    def __getstate__(self) -> Dict[str, Any]:
        """Pickled for worker processes without the open file handle."""
        state = dict(self.__dict__)
        state["_src"], state["_pid"] = None, None
        return state

    def _read(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoded x, labels and validity of one window (sliced from memory when the raster is there)."""
        box = self.windows[index]
        r0, c0, r1, c1 = box
        if self.memory is not None:
            x, valid = self.memory.window(box)
        else:
            with gdal_env():
                data, valid = read_window(self._dataset(), r0, c0, r1 - r0, c1 - c0)
        if self.study_mask is not None:
            valid &= _crop(self.study_mask, box, False)
        if self.memory is not None:
            x[:, ~valid] = 0.0
        else:
            x = self.encoder.encode(data, valid)
        y = _crop(self.labels, box, 0)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), torch.from_numpy(valid)

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
        x, yt, vt = self._read(index)
        if self.augment:
            x, yt, vt = (augment_spherical if self.spherical else augment_planar)(x, yt, vt)
        return {"x": x, "y": yt, "valid": vt}

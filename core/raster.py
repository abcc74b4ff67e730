"""Windowed raster reading with nodata masks, so a stack never has to fit in memory.

Every read goes through ``open_raster`` (a ``rasterio.Env`` with a bounded GDAL block
cache) and ``read_window`` (a float32 window plus a validity mask). A pixel is valid when
every band holds data: not its band's nodata value, not NaN or infinite, and not masked by
an internal GDAL mask band.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from .errors import DataError

GDAL_CACHE_MB = 64
"""Upper bound of GDAL's block cache (MB) while we read or write (GDAL's default is 5% of RAM)."""

CHUNK = 512
"""Side of the square chunks used when a whole-raster pass (masks, statistics) is needed."""

Box = Tuple[int, int, int, int]
"""A pixel window as (row0, col0, row1, col1), half-open (row1/col1 excluded)."""


@dataclass
class RasterInfo:
    """What the core needs to know about a raster, read without reading any pixels.

    Attributes:
        path: the file.
        width, height, count: columns, rows, bands.
        dtypes: numpy dtype name of each band.
        crs_wkt: the CRS as WKT ('' when the raster has none).
        transform: affine transform (a, b, c, d, e, f) in rasterio order.
        res: pixel size (xres, yres), both positive.
        nodata: per-band nodata value or None.
        band_names: band descriptions, ``band_N`` (1-based) where a band has none.
        bounds: (left, bottom, right, top) in CRS units.
    """

    path: str
    width: int
    height: int
    count: int
    dtypes: List[str]
    crs_wkt: str
    transform: Tuple[float, float, float, float, float, float]
    res: Tuple[float, float]
    nodata: List[Optional[float]]
    band_names: List[str]
    bounds: Tuple[float, float, float, float]

    @property
    def shape(self) -> Tuple[int, int]:
        """(height, width)."""
        return (self.height, self.width)

    def affine(self) -> "rasterio.Affine":
        """The transform as an ``affine.Affine`` object."""
        return rasterio.Affine(*self.transform)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able primitives only (goes into checkpoints and logs)."""
        d = asdict(self)
        for key in ("transform", "res", "bounds"):
            d[key] = [float(v) for v in d[key]]
        return d


def _band_names(descriptions: Sequence[Optional[str]]) -> List[str]:
    """Descriptions where set, else ``band_N`` (1-based), so every band has a stable name."""
    return [d if d else f"band_{i + 1}" for i, d in enumerate(descriptions)]


def _as_float(value: Optional[float]) -> Optional[float]:
    return None if value is None else float(value)


def gdal_env() -> "rasterio.Env":
    """A rasterio environment whose GDAL block cache is bounded (memory must not grow with the raster).

    rasterio hands GDAL_CACHEMAX to GDALSetCacheMax, which counts bytes (not megabytes).
    """
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024)


def read_info(path: str | Path) -> RasterInfo:
    """Reads the raster's metadata.

    Raises:
        DataError: the file is missing or GDAL cannot read it as a raster.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"raster {str(p)!r} does not exist; check the path (--raster_path)")
    try:
        with gdal_env(), rasterio.open(p) as src:
            t = src.transform
            return RasterInfo(
                path=str(p),
                width=int(src.width),
                height=int(src.height),
                count=int(src.count),
                dtypes=[str(d) for d in src.dtypes],
                crs_wkt=src.crs.to_wkt() if src.crs else "",
                transform=(float(t.a), float(t.b), float(t.c), float(t.d), float(t.e), float(t.f)),
                res=(abs(float(src.res[0])), abs(float(src.res[1]))),
                nodata=[_as_float(v) for v in src.nodatavals],
                band_names=_band_names(src.descriptions),
                bounds=tuple(float(v) for v in src.bounds),  # type: ignore[arg-type]
            )
    except RasterioIOError as exc:
        raise DataError(
            f"cannot read {str(p)!r} as a raster ({exc}); give a GDAL-readable raster such as a GeoTIFF"
        ) from None


def open_dataset(path: str | Path) -> "rasterio.io.DatasetReader":
    """Opens a raster and returns the handle (the caller closes it); see also ``open_raster``.

    For handles kept open across calls (one per DataLoader worker): wrap each read in
    ``gdal_env()`` so the block cache stays bounded.

    Raises:
        DataError: the file is missing or unreadable.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"raster {str(p)!r} does not exist; check the path (--raster_path)")
    try:
        with gdal_env():
            return rasterio.open(p)
    except RasterioIOError as exc:
        raise DataError(
            f"cannot read {str(p)!r} as a raster ({exc}); give a GDAL-readable raster such as a GeoTIFF"
        ) from None


@contextlib.contextmanager
def open_raster(path: str | Path) -> Iterator["rasterio.io.DatasetReader"]:
    """Opens a raster for windowed reading inside a bounded-cache GDAL environment.

    Raises:
        DataError: the file is missing or unreadable.
    """
    src = open_dataset(path)
    with gdal_env(), src:
        yield src


def _has_internal_mask(src: "rasterio.io.DatasetReader") -> bool:
    """True when some band carries a GDAL mask band (per-dataset mask or alpha), not just nodata."""
    for flags in src.mask_flag_enums:
        if MaskFlags.per_dataset in flags or MaskFlags.alpha in flags:
            return True
    return False


def _band_valid(band: np.ndarray, nodata: Optional[float]) -> np.ndarray:
    """Validity of one band in its native dtype (exact nodata comparison, as GDAL does)."""
    if np.issubdtype(band.dtype, np.floating):
        ok = np.isfinite(band)
        if nodata is not None and not math.isnan(nodata):
            ok &= band != band.dtype.type(nodata)
        return ok
    if nodata is None:
        return np.ones(band.shape, dtype=bool)
    info = np.iinfo(band.dtype)
    if not (info.min <= nodata <= info.max) or nodata != int(nodata):
        return np.ones(band.shape, dtype=bool)
    return band != band.dtype.type(int(nodata))


def _clip_window(src: "rasterio.io.DatasetReader", row: int, col: int, height: int, width: int
                 ) -> Optional[Tuple[int, int, int, int]]:
    """The part of a requested window inside the raster as (r0, c0, r1, c1), or None."""
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + height, src.height), min(col + width, src.width)
    if r0 >= r1 or c0 >= c1:
        return None
    return r0, c0, r1, c1


def read_window(src: "rasterio.io.DatasetReader", row: int, col: int, height: int, width: int,
                bands: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Reads a window of all bands, or of ``bands`` (1-based, in that order: a model's bands by name).

    The window may reach outside the raster: that part is padded with 0 and invalid.

    Returns:
        data: float32 (C, height, width); invalid pixels hold 0.
        valid: bool (height, width); True where every band read holds data.
    """
    indexes = list(bands) if bands is not None else list(range(1, src.count + 1))
    data = np.zeros((len(indexes), height, width), dtype=np.float32)
    valid = np.zeros((height, width), dtype=bool)
    inner = _clip_window(src, row, col, height, width)
    if inner is None:
        return data, valid
    r0, c0, r1, c1 = inner
    win = Window(c0, r0, c1 - c0, r1 - r0)
    try:
        raw = src.read(indexes=indexes if bands is not None else None, window=win)
    except RasterioIOError as exc:
        raise DataError(
            f"cannot read rows {r0}-{r1}, columns {c0}-{c1} of {src.name} ({' '.join(str(exc).split())[:200]}); "
            "the file is damaged or was changed while it was read: copy or rebuild it"
        ) from None
    ok = np.ones(raw.shape[1:], dtype=bool)
    for b, index in enumerate(indexes):
        ok &= _band_valid(raw[b], src.nodatavals[index - 1])
    if _has_internal_mask(src):
        ok &= src.dataset_mask(window=win) > 0
    block = raw.astype(np.float32, copy=False)
    block[:, ~ok] = 0.0
    block[~np.isfinite(block)] = 0.0  # finite in the source dtype can overflow float32
    sl = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
    data[(slice(None),) + sl] = block
    valid[sl] = ok
    return data, valid


def _origins(size: int, tile: int, stride: int) -> List[int]:
    """Origins along one axis: every stride, plus one aligned to the far edge when needed."""
    if tile >= size:
        return [0]
    out = list(range(0, size - tile + 1, stride))
    if out[-1] != size - tile:
        out.append(size - tile)
    return out


def iter_windows(height: int, width: int, tile: Tuple[int, int], stride: Optional[Tuple[int, int]] = None
                 ) -> List[Tuple[int, int]]:
    """Window origins (row, col) of ``tile``-sized windows covering a height x width raster.

    The last row/column of windows is aligned to the raster edge, so the whole raster is
    covered without windows reaching outside (unless the tile is larger than the raster,
    in which case the single origin (0, 0) is returned).
    """
    th, tw = tile
    sh, sw = stride if stride is not None else tile
    if min(th, tw, sh, sw) <= 0:
        raise DataError(f"tile {tile} and stride {stride} must be positive; e.g. --tile_size 256 256")
    return [(r, c) for r in _origins(height, th, sh) for c in _origins(width, tw, sw)]


def chunks(height: int, width: int, size: int = CHUNK) -> List[Box]:
    """Non-overlapping boxes covering the raster, for whole-raster passes in bounded memory."""
    return [(r, c, min(r + size, height), min(c + size, width))
            for r in range(0, height, size) for c in range(0, width, size)]


def coverage_mask(shape: tuple[int, int], windows: Sequence[Box], mask: Optional[np.ndarray] = None) -> np.ndarray:
    """bool (H, W): pixels inside any window (and inside ``mask`` when given)."""
    cover = np.zeros(shape, dtype=bool)
    for r0, c0, r1, c1 in windows:
        cover[max(r0, 0):r1, max(c0, 0):c1] = True
    if mask is not None:
        cover &= mask
    return cover


def read_valid_mask(path: str | Path, progress: Optional[Callable[[float], None]] = None) -> np.ndarray:
    """The validity mask of the whole raster (bool (H, W)), read chunk by chunk.

    One byte per pixel: the stack itself is never held in memory. ``progress`` gets the
    fraction read after each chunk (a whole pass over a large stack takes a while).
    """
    with open_raster(path) as src:
        out = np.zeros((src.height, src.width), dtype=bool)
        boxes = chunks(src.height, src.width)
        for i, (r0, c0, r1, c1) in enumerate(boxes, start=1):
            _, valid = read_window(src, r0, c0, r1 - r0, c1 - c0)
            out[r0:r1, c0:c1] = valid
            if progress is not None:
                progress(i / len(boxes))
    return out


def read_pixels(src: "rasterio.io.DatasetReader", rows: np.ndarray, cols: np.ndarray, size: int = CHUNK,
                should_stop: Optional[Any] = None) -> Tuple[np.ndarray, np.ndarray]:
    """All bands at scattered pixels, read chunk by chunk (each chunk once, only its needed part).

    Why: per-pixel models sample a few thousand pixels from stacks that never fit in
    memory; reading the bounding box of the chunk's pixels keeps memory at one chunk.
    ``should_stop`` (called per chunk) may raise to cancel.

    Returns:
        data: float32 (N, C) in the order of ``rows``/``cols`` (invalid pixels hold 0).
        valid: bool (N,).
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    data = np.zeros((rows.size, src.count), dtype=np.float32)
    valid = np.zeros(rows.size, dtype=bool)
    if rows.size == 0:
        return data, valid
    key = (rows // size) * ((src.width + size - 1) // size) + cols // size
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    for idx in np.split(order, bounds):
        if should_stop is not None:
            should_stop()
        rr, cc = rows[idx], cols[idx]
        r0, c0 = int(rr.min()), int(cc.min())
        win, ok = read_window(src, r0, c0, int(rr.max()) - r0 + 1, int(cc.max()) - c0 + 1)
        data[idx] = win[:, rr - r0, cc - c0].T
        valid[idx] = ok[rr - r0, cc - c0]
    return data, valid


def box_to_map(box: Box, info: RasterInfo) -> Tuple[float, float, float, float]:
    """A pixel box as a map-coordinate box (left, bottom, right, top) in the raster's CRS."""
    r0, c0, r1, c1 = box
    t = info.affine()
    xs, ys = zip(*(t * (c, r) for r, c in ((r0, c0), (r0, c1), (r1, c0), (r1, c1))))
    return (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)))


def map_to_pixel(info: RasterInfo, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Map coordinates to fractional (row, col) pixel coordinates (pixel centres at .5)."""
    inv = ~info.affine()
    cols, rows = inv * (np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return np.asarray(rows, dtype=float), np.asarray(cols, dtype=float)

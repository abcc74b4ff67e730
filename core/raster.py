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
#: Nodata of the maps we write (probability, uncertainty, out-of-fold maps).
MAP_NODATA: float = -9999.0
#: Block size (rows and columns) of the maps we write; GDAL wants a multiple of 16.
MAP_BLOCK: int = 256
"""Upper bound of GDAL's block cache (MB) while we read or write (GDAL's default is 5% of RAM)."""

CHUNK = 512
"""Side of the square chunks used when a whole-raster pass (masks, statistics) is needed."""

PixelBox = Tuple[int, int, int, int]
"""A pixel window as (row0, col0, row1, col1), half-open (row1/col1 excluded)."""
MapBox = Tuple[float, float, float, float]
"""A box in map coordinates as (left, bottom, right, top), the raster's CRS."""


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
    inner = _clip_window(src, row, col, height, width)
    if inner is None:
        return np.zeros((len(indexes), height, width), dtype=np.float32), np.zeros((height, width), dtype=bool)
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
    with np.errstate(over="ignore"):  # finite in float64 can overflow float32: zeroed below
        block = raw.astype(np.float32, copy=False)
    if not ok.all():
        block[:, ~ok] = 0.0  # every band of a pixel that lacks one (non-finite values included)
    if raw.dtype.kind == "f" and raw.dtype.itemsize > 4:
        block[~np.isfinite(block)] = 0.0
    if (r0, c0, r1, c1) == (row, col, row + height, col + width):
        return block, ok  # the whole window lies inside the raster (the usual case): no padded copy
    data = np.zeros((len(indexes), height, width), dtype=np.float32)
    valid = np.zeros((height, width), dtype=bool)
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


def chunks(height: int, width: int, size: int = CHUNK) -> List[PixelBox]:
    """Non-overlapping boxes covering the raster, for whole-raster passes in bounded memory."""
    return [(r, c, min(r + size, height), min(c + size, width))
            for r in range(0, height, size) for c in range(0, width, size)]


def coverage_mask(shape: tuple[int, int], windows: Sequence[PixelBox], mask: Optional[np.ndarray] = None) -> np.ndarray:
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


def box_to_map(box: PixelBox, info: RasterInfo) -> MapBox:
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


# ----------------------------------------------------------------------------- what the bands hold

FLOAT_SENTINELS = (-9999.0, -99999.0, -999999.0, -32768.0, -3.4028234663852886e38, 3.4028234663852886e38,
                   -1.7976931348623157e308, 1.7976931348623157e308, -1e30, 1e30)
"""Values that usually mean "no data" in float rasters (GIS defaults, float32 / float64 limits)."""
INT_SENTINELS = {"int16": (-32768, 32767, -9999), "uint16": (65535,), "int32": (-2147483648, 2147483647, -9999),
                 "uint32": (4294967295,), "int8": (-128,)}
"""The same for integer rasters (type limits, -9999); uint8's 255 is too often real data to guess."""
SURVEY_WINDOWS = 16
SURVEY_SIDE = 256
SURVEY_KEEP = 4096
"""Pixels kept per survey window for the statistics."""


@dataclass
class BandSurvey:
    """What a sample of windows shows about each band (bands in the order asked for).

    Attributes:
        bands: 1-based band numbers surveyed.
        names: their names.
        pixels: pixels read.
        valid: per band, pixels holding data (not nodata / NaN / masked).
        all_valid: pixels where every surveyed band holds data.
        sentinels: per band number, {value: count} of common nodata values that band does not declare.
        sample: float64 (bands, n) values at pixels where every band holds data (a subsample).
    """

    bands: List[int]
    names: List[str]
    pixels: int
    valid: List[int]
    all_valid: int
    sentinels: Dict[int, Dict[float, int]]
    sample: np.ndarray


def _sentinels_for(dtype: str) -> Tuple[float, ...]:
    if np.issubdtype(np.dtype(dtype), np.floating):
        return FLOAT_SENTINELS
    return tuple(float(v) for v in INT_SENTINELS.get(str(dtype), ()))


def _representable(value: float, dtype: np.dtype) -> bool:
    """Whether ``value`` exists in ``dtype`` (float32 has no 1.8e308, uint16 no -9999)."""
    if np.issubdtype(dtype, np.floating):
        return abs(value) <= float(np.finfo(dtype).max)
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


def _survey_windows(height: int, width: int, count: int = SURVEY_WINDOWS, side: int = SURVEY_SIDE) -> List[PixelBox]:
    """Up to ``count`` windows spread evenly over the raster (a grid of origins, edges included)."""
    h, w = min(side, height), min(side, width)
    per_axis = max(1, int(math.sqrt(count)))
    rows = sorted({int(round(v)) for v in np.linspace(0, height - h, min(per_axis, math.ceil(height / h)))})
    cols = sorted({int(round(v)) for v in np.linspace(0, width - w, min(per_axis, math.ceil(width / w)))})
    return [(r, c, r + h, c + w) for r in rows for c in cols]


def survey_bands(path: str | Path, bands: Optional[Sequence[int]] = None, seed: int = 0) -> BandSurvey:
    """Reads a few windows spread over the raster and says what each band holds (cheap: never the whole stack)."""
    rng = np.random.default_rng(seed)
    with open_raster(path) as src:
        indexes = list(bands) if bands is not None else list(range(1, src.count + 1))
        names = [src.descriptions[i - 1] or f"band_{i}" for i in indexes]
        valid = [0] * len(indexes)
        sentinels: Dict[int, Dict[float, int]] = {}
        kept: List[np.ndarray] = []
        pixels = all_valid = 0
        for r0, c0, r1, c1 in _survey_windows(src.height, src.width):
            win = Window(c0, r0, c1 - c0, r1 - r0)
            try:
                raw = src.read(indexes=indexes, window=win)
            except RasterioIOError as exc:
                raise DataError(f"cannot read {path} ({' '.join(str(exc).split())[:200]}); "
                                "the file is damaged") from None
            masked = src.dataset_mask(window=win) > 0 if _has_internal_mask(src) else None
            ok_all = np.ones(raw.shape[1:], dtype=bool)
            for k, index in enumerate(indexes):
                nodata = src.nodatavals[index - 1]
                ok = _band_valid(raw[k], nodata)
                if masked is not None:
                    ok &= masked
                valid[k] += int(ok.sum())
                ok_all &= ok
                for value in _sentinels_for(src.dtypes[index - 1]):
                    if (nodata is not None and float(nodata) == value) or not _representable(value, raw.dtype):
                        continue
                    n = int(np.count_nonzero(raw[k] == raw.dtype.type(value)))
                    if n:
                        sentinels.setdefault(index, {})[value] = sentinels.get(index, {}).get(value, 0) + n
            pixels += int(ok_all.size)
            all_valid += int(ok_all.sum())
            values = raw[:, ok_all].astype(np.float64)
            if values.shape[1] > SURVEY_KEEP:
                values = values[:, rng.choice(values.shape[1], SURVEY_KEEP, replace=False)]
            kept.append(values)
    sample = np.concatenate(kept, axis=1) if kept else np.zeros((len(indexes), 0))
    return BandSurvey(indexes, names, pixels, valid, all_valid, sentinels, sample)


def band_valid_counts(path: str | Path, bands: Optional[Sequence[int]] = None) -> Tuple[List[int], int]:
    """(valid pixels per band, pixels where every band holds data) over the whole raster, chunk by chunk."""
    with open_raster(path) as src:
        indexes = list(bands) if bands is not None else list(range(1, src.count + 1))
        counts = [0] * len(indexes)
        together = 0
        for r0, c0, r1, c1 in chunks(src.height, src.width):
            win = Window(c0, r0, c1 - c0, r1 - r0)
            raw = src.read(indexes=indexes, window=win)
            masked = src.dataset_mask(window=win) > 0 if _has_internal_mask(src) else None
            ok_all = np.ones(raw.shape[1:], dtype=bool)
            for k, index in enumerate(indexes):
                ok = _band_valid(raw[k], src.nodatavals[index - 1])
                if masked is not None:
                    ok &= masked
                counts[k] += int(ok.sum())
                ok_all &= ok
            together += int(ok_all.sum())
    return counts, together


def check_some_data(path: str | Path, bands: Optional[Sequence[int]] = None,
                    survey: Optional[BandSurvey] = None) -> None:
    """Raises DataError, naming the bands, when no pixel has data in every band (the map would be all nodata).

    The survey answers cheaply when it saw valid pixels; only a suspicious survey costs a
    whole-raster pass.
    """
    if survey is not None and survey.all_valid > 0:
        return
    counts, together = band_valid_counts(path, bands)
    if together > 0:
        return
    indexes = list(bands) if bands is not None else list(range(1, len(counts) + 1))
    all_names = read_info(path).band_names
    names = [all_names[i - 1] for i in indexes]
    empty = [f"band {i} ({n!r})" for i, n, c in zip(indexes, names, counts) if c == 0]
    if empty:
        raise DataError(
            f"{', '.join(empty)} of {path} {'has' if len(empty) == 1 else 'have'} no valid pixel (every value is "
            "nodata or NaN); every pixel needs every band, so nothing can be used. Fix the band's nodata value, or "
            "rebuild the stack without it"
        )
    raise DataError(
        f"no pixel of {path} has data in every band (each band has data, but never all at the same place); "
        "check each band's nodata value and extent, or rebuild the stack on a common area"
    )


def sentinel_warnings(survey: BandSurvey, info: "RasterInfo") -> List[str]:
    """One warning per band holding a common nodata value (-9999, -3.4e38, 65535, ...) it does not declare."""
    out = []
    for k, index in enumerate(survey.bands):
        found = survey.sentinels.get(index)
        if not found:
            continue
        value, count = max(found.items(), key=lambda kv: kv[1])
        declared = info.nodata[index - 1]
        share = 100.0 * count / max(1, survey.pixels)
        out.append(
            f"warning: band {index} ({survey.names[k]!r}) holds {value:g} in {share:.1f}% of the sampled pixels, but "
            f"its nodata value is {'not set' if declared is None else f'{declared:g}'}: such values are used as "
            f"real data (statistics, training, prediction). If {value:g} means 'no data', declare it, e.g. "
            f"gdal_edit.py -a_nodata {value:g} {info.path} (QGIS: Raster > Conversion > Translate, 'Assign a "
            "specified nodata value to output bands')"
        )
    return out


def coverage_warnings(survey: BandSurvey, share: float = 0.5) -> List[str]:
    """Bands holding data in far fewer sampled pixels than the best-covered band (the map is nodata there)."""
    best = max(survey.valid) if survey.valid else 0
    if best == 0:
        return []
    return [
        f"warning: band {index} ({name!r}) holds data in only {100.0 * n / survey.pixels:.0f}% of the sampled pixels "
        f"(the best-covered band: {100.0 * best / survey.pixels:.0f}%); a pixel needs every band, so the map is "
        "nodata wherever this band is"
        for index, name, n in zip(survey.bands, survey.names, survey.valid) if 0 < n < share * best
    ]


# ----------------------------------------------------------------------------- geography


def same_crs(wkt_a: str, wkt_b: str) -> bool:
    """CRS equivalence (not object equality): same EPSG code, or GDAL says they are the same."""
    from rasterio.crs import CRS

    try:
        a, b = CRS.from_user_input(wkt_a), CRS.from_user_input(wkt_b)
    except Exception:  # noqa: BLE001 - an unparsable CRS is simply "not known to be the same"
        return wkt_a == wkt_b
    if a == b:
        return True
    ea, eb = a.to_epsg(), b.to_epsg()
    return ea is not None and ea == eb


def global_grid_problem(info: RasterInfo) -> Optional[str]:
    """Why a raster is not a whole-globe geographic grid (-180..180 x -90..90, width = 2 x height); None if it is."""
    from rasterio.crs import CRS

    crs = CRS.from_user_input(info.crs_wkt) if info.crs_wkt else None
    left, bottom, right, top = info.bounds
    tol_x, tol_y = 1.01 * abs(info.res[0]), 1.01 * abs(info.res[1])
    if crs is None or not crs.is_geographic:
        return f"its CRS is {'missing' if crs is None else (crs.to_string() or 'projected')}, not geographic (EPSG:4326)"
    if abs(left + 180) > tol_x or abs(right - 180) > tol_x or abs(bottom + 90) > tol_y or abs(top - 90) > tol_y:
        return f"its extent {left:g}, {bottom:g}, {right:g}, {top:g} is not the whole globe (-180, -90, 180, 90)"
    if abs(info.width - 2 * info.height) > max(1, 0.02 * info.width):
        return f"it is {info.width} x {info.height} pixels; a global grid is twice as wide as high"
    return None


def is_global_raster(info: RasterInfo) -> bool:
    """A whole-globe EPSG:4326-like grid (what spherical models are made for)."""
    return global_grid_problem(info) is None


def check_global(info: RasterInfo) -> None:
    """Spherical mode needs a whole-globe geographic grid; a DataError says why this one is not, and the fix."""
    why = global_grid_problem(info)
    if why:
        raise DataError(
            f"--spherical runs the whole globe through a spherical model, but {info.path} is not a global "
            f"EPSG:4326 raster: {why}. Reproject to a global grid (e.g. gdalwarp -t_srs EPSG:4326 "
            "-te -180 -90 180 90 -ts 2N N), or leave out --spherical and use a planar model"
        )


def map_profile(info: RasterInfo) -> Dict[str, Any]:
    """The rasterio profile of a map on ``info``'s grid: float32, nodata MAP_NODATA, tiled MAP_BLOCK, deflate."""
    from affine import Affine

    block = MAP_BLOCK
    return {
        "driver": "GTiff",
        "width": info.width,
        "height": info.height,
        "count": 1,
        "dtype": "float32",
        "crs": info.crs_wkt or None,
        "transform": Affine(*info.transform[:6]),
        "nodata": MAP_NODATA,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "predictor": 3,
        "BIGTIFF": "IF_SAFER",
    }

"""Built-in synthetic demo dataset: an evidence stack, a known probability surface, deposits.

Why: a demo and the tests need a "raster stack + point labels" job whose answer is known.
The generator draws a hidden prospectivity surface (``truth.tif``) from a few latent
geological fields, builds a multi-band stack in which only a few bands carry those fields
(plus noise and nonlinear transforms) and many carry none, and samples the deposits from
the surface, so any model's probability map can be scored against the truth.

Everything is seeded: the same seed and sizes give identical arrays and deposits. Each
piece draws from its own named random stream, so the truth and the deposits do not change
with the band count. Only numpy, rasterio and geopandas are used (no torch, no scipy).
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ConfigError
from .events import LogFn
from .files import (WriteFailed, check_free_space, free_bytes, gdal_errors, prepare_folder, remove_stale_temps,
                    temp_path, verify_raster, write_error)

NODATA = -9999.0
CRS_EPSG = 3577  # GDA94 / Australian Albers: projected, metres (SEDEX Zn-Pb country)
PIXEL_SIZE = 100.0
ORIGIN_XY = (850_000.0, -2_150_000.0)  # upper-left corner, map units
BLOCK = 256
MIN_SIDE = 32
MAX_SIDE = 20_000
MIN_BANDS = 4
MAX_BANDS = 1000
PIXELS_PER_DEPOSIT = 20  # deposits stay rare: at most one per 20 pixels
MAX_STACK_BYTES = 4 * 1024**3  # the stack is built in memory before it is written
NOISE_SCALES_PX = (3.0, 12.0, 48.0)
FAVOURABLE_LITHOLOGY = 3
LITHOLOGY_CODES: Dict[int, str] = {
    1: "granite", 2: "sandstone", 3: "carbonaceous shale (favourable)", 4: "dolomite",
    5: "siltstone", 6: "basalt", 7: "quartzite", 8: "cover sediments",
}
# Coefficients of the hidden logit: these fields, and only these, make the truth.
LOGIT_WEIGHTS = {"host": 1.5, "fluid": 1.2, "favourable_lithology": 1.5, "fault_proximity": 2.0}
FAULT_DECAY_PX = 5.0

FILE_NAMES = {
    "raster": "stack.tif",
    "truth": "truth.tif",
    "deposits": "deposits.shp",
    "readme": "README.txt",
}

PathLike = Union[str, Path]
STAGING = "demo"
"""Name the staging folder's temporary name derives from: ``.demo.<pid>-<hex>.partial``."""


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class DemoSpec:
    """Validated sizes of one demo dataset (checked before any work is done)."""

    width: int
    height: int
    bands: int
    n_deposits: int
    seed: int

    def __post_init__(self) -> None:
        for name, lo, hi in (("width", MIN_SIDE, MAX_SIDE), ("height", MIN_SIDE, MAX_SIDE),
                             ("bands", MIN_BANDS, MAX_BANDS)):
            value = getattr(self, name)
            is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            if not is_int or not lo <= value <= hi:
                example = hi if is_int and value > hi else lo
                raise ConfigError(f"demo data {name} must be an integer from {lo} to {hi}, got {value!r}; "
                                  f"e.g. --{name} {example}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"demo data seed must be a non-negative integer, got {self.seed!r}; e.g. --seed 42")
        stack_bytes = 4 * self.width * self.height * self.bands
        if stack_bytes > MAX_STACK_BYTES:
            raise ConfigError(f"a {self.bands}-band {self.width} x {self.height} demo stack needs "
                              f"{stack_bytes / 1024**3:.1f} GiB of memory (limit {MAX_STACK_BYTES / 1024**3:.0f} GiB); "
                              "use fewer --bands or a smaller --width/--height")
        max_deposits = self.width * self.height // PIXELS_PER_DEPOSIT
        if isinstance(self.n_deposits, bool) or not isinstance(self.n_deposits, (int, np.integer)) \
                or not 1 <= self.n_deposits <= max_deposits:
            raise ConfigError(f"n_deposits must be from 1 to {max_deposits} (one per {PIXELS_PER_DEPOSIT} pixels) "
                              f"for a {self.width} x {self.height} grid, got {self.n_deposits!r}; ask for fewer "
                              f"deposits or a larger grid (--width/--height)")

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.height, self.width)


def _stream(seed: int, *tags: int) -> np.random.Generator:
    """An independent random stream per named piece, so pieces do not shift each other."""
    return np.random.default_rng([seed, *tags])


# Stream tags (first element after the seed).
_LATENT, _SIGNAL, _NOISE, _LAYOUT, _DEPOSITS = 1, 2, 3, 4, 5


# ----------------------------------------------------------------------------- random fields


def gaussian_field(rng: np.random.Generator, shape: Tuple[int, int], scales: Sequence[float],
                   weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """A standardised Gaussian random field that mixes correlation lengths ``scales`` (pixels).

    White noise is filtered in the Fourier domain by Gaussian kernels. The grid is padded by
    twice the largest scale and cropped, so the field does not wrap around the edges.
    """
    height, width = shape
    weights = np.ones(len(scales)) if weights is None else np.asarray(weights, dtype=float)
    pad = int(np.ceil(2 * max(scales)))
    ph, pw = _fast_size(height + pad), _fast_size(width + pad)
    spectrum = np.fft.rfft2(rng.standard_normal((ph, pw)))
    ky = np.fft.fftfreq(ph)[:, None]
    kx = np.fft.rfftfreq(pw)[None, :]
    k2 = ky**2 + kx**2
    filt = np.zeros_like(k2)
    for scale, weight in zip(scales, weights):
        kernel = np.exp(-2.0 * np.pi**2 * scale**2 * k2)
        filt += weight * kernel / np.sqrt(np.mean(kernel**2))  # each scale at unit variance
    field = np.fft.irfft2(spectrum * filt, s=(ph, pw))[:height, :width]
    return _standardise(field)


def _fast_size(n: int) -> int:
    """The next multiple of 32, which keeps the FFT sizes cheap."""
    return int(np.ceil(n / 32) * 32)


def _standardise(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    std = a.std()
    return (a / std if std > 0 else a).astype(np.float32)


def _segment_distance(rows: np.ndarray, cols: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance (pixels) from each (row, col) to the segment p0-p1."""
    d = p1 - p0
    t = ((rows - p0[0]) * d[0] + (cols - p0[1]) * d[1]) / max(float(d @ d), 1e-12)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(rows - (p0[0] + t * d[0]), cols - (p0[1] + t * d[1]))


def fault_distance(rng: np.random.Generator, shape: Tuple[int, int], n_faults: int) -> np.ndarray:
    """Distance in pixels to the nearest of ``n_faults`` random straight fault segments."""
    height, width = shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    diag = float(np.hypot(height, width))
    best = np.full(shape, np.inf)
    for _ in range(n_faults):
        centre = rng.random(2) * (height, width)
        angle = rng.uniform(0, np.pi)
        half = 0.5 * diag * rng.uniform(0.3, 0.8)
        step = half * np.array([np.sin(angle), np.cos(angle)])
        best = np.minimum(best, _segment_distance(rows, cols, centre - step, centre + step))
    return best.astype(np.float32)


def lithology_codes(rng: np.random.Generator, shape: Tuple[int, int]) -> np.ndarray:
    """Lithology codes 1..8 from a thresholded smooth field (units of unequal extent)."""
    field = gaussian_field(rng, shape, scales=(max(shape) / 24, max(shape) / 8), weights=(0.4, 1.0))
    cuts = np.quantile(field, np.cumsum(rng.dirichlet(np.full(len(LITHOLOGY_CODES), 4.0)))[:-1])
    return (np.digitize(field, cuts) + 1).astype(np.int16)


def valid_mask(rng: np.random.Generator, shape: Tuple[int, int]) -> np.ndarray:
    """Where the stack holds data: an irregular 'coastline' corner and a survey-gap strip are off."""
    height, width = shape
    rows = (np.arange(height)[:, None] + 0.5) / height
    cols = (np.arange(width)[None, :] + 0.5) / width
    wobble = gaussian_field(rng, shape, scales=(max(shape) / 16,))
    coast = rows + cols + 0.12 * wobble < 0.35
    strip_col = int(0.72 * width)
    strip_w = max(2, width // 128)
    gap = np.zeros(shape, dtype=bool)
    gap[height // 2:, strip_col:strip_col + strip_w] = True
    return ~(coast | gap)


# ----------------------------------------------------------------------------- hidden truth


@dataclass
class Latent:
    """The hidden geology every signal band and the truth derive from."""

    host: np.ndarray  # standardised field: favourable host-rock architecture
    fluid: np.ndarray  # standardised field: metal-bearing fluid pathways
    lithology: np.ndarray  # int codes 1..8
    fault_distance_px: np.ndarray
    valid: np.ndarray  # bool

    @property
    def fault_proximity(self) -> np.ndarray:
        return np.exp(-self.fault_distance_px / FAULT_DECAY_PX).astype(np.float32)


def latent_fields(spec: DemoSpec) -> Latent:
    """Draws the hidden fields (independent of the band count)."""
    rng = _stream(spec.seed, _LATENT)
    shape = spec.shape
    n_faults = int(np.clip(round(spec.width * spec.height / 60_000), 3, 12))
    return Latent(
        host=gaussian_field(rng, shape, scales=(8.0, 32.0), weights=(0.6, 1.0)),
        fluid=gaussian_field(rng, shape, scales=(4.0, 16.0), weights=(1.0, 0.7)),
        lithology=lithology_codes(rng, shape),
        fault_distance_px=fault_distance(rng, shape, n_faults),
        valid=valid_mask(rng, shape),
    )


def _logit_without_intercept(latent: Latent) -> np.ndarray:
    w = LOGIT_WEIGHTS
    return (w["host"] * latent.host + w["fluid"] * latent.fluid
            + w["favourable_lithology"] * (latent.lithology == FAVOURABLE_LITHOLOGY)
            + w["fault_proximity"] * latent.fault_proximity).astype(np.float64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _calibrate_intercept(logit: np.ndarray, target_mean: float) -> float:
    """The intercept that makes the mean probability equal ``target_mean`` (bisection)."""
    lo, hi = -40.0, 40.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _sigmoid(logit + mid).mean() > target_mean:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def true_probability(latent: Latent, expected_deposits: int) -> Tuple[np.ndarray, float]:
    """The hidden probability surface (float32, NODATA off the valid area) and its intercept.

    The intercept makes the probabilities sum to ``expected_deposits``: the truth is the
    chance that a pixel holds a deposit, so deposits are rare, as in real data."""
    logit = _logit_without_intercept(latent)
    intercept = _calibrate_intercept(logit[latent.valid], expected_deposits / np.count_nonzero(latent.valid))
    truth = _sigmoid(logit + intercept).astype(np.float32)
    truth[~latent.valid] = NODATA
    return truth, intercept


# ----------------------------------------------------------------------------- bands


@dataclass(frozen=True)
class SignalBand:
    """A band that carries part of the hidden geology."""

    name: str
    description: str
    build: Callable[[Latent, np.random.Generator], np.ndarray]


def _noise(rng: np.random.Generator, like: np.ndarray, scales: Sequence[float] = NOISE_SCALES_PX) -> np.ndarray:
    return gaussian_field(rng, like.shape, scales=scales, weights=rng.uniform(0.2, 1.0, len(scales)))


def _mag_rtp(lat: Latent, rng: np.random.Generator) -> np.ndarray:
    return 40.0 + 150.0 * (lat.host + 0.6 * _noise(rng, lat.host))


def _grav_bouguer(lat: Latent, rng: np.random.Generator) -> np.ndarray:
    return -20.0 + 6.0 * (0.8 * lat.host + 0.8 * _noise(rng, lat.host, scales=(24.0, 64.0)))


def _geochem_zn(lat: Latent, rng: np.random.Generator) -> np.ndarray:
    return np.exp(3.5 + 0.8 * lat.fluid + 0.4 * _noise(rng, lat.fluid))


def _geochem_pb(lat: Latent, rng: np.random.Generator) -> np.ndarray:
    return np.exp(2.5 + 0.5 * lat.fluid + 0.6 * lat.fault_proximity + 0.5 * _noise(rng, lat.fluid))


def _lith_code(lat: Latent, _rng: np.random.Generator) -> np.ndarray:
    return lat.lithology.astype(np.float32)


def _dist_fault_km(lat: Latent, _rng: np.random.Generator) -> np.ndarray:
    return lat.fault_distance_px * (PIXEL_SIZE / 1000.0)


# In priority order: a stack with b < 6 bands keeps the first b (the four latent fields first).
SIGNAL_BANDS: Tuple[SignalBand, ...] = (
    SignalBand("mag_rtp", "magnetics, reduced to pole (nT): host field + noise", _mag_rtp),
    SignalBand("geochem_zn", "soil Zn (ppm), lognormal: fluid field + noise", _geochem_zn),
    SignalBand("lith_code", "lithology code 1..8 (categorical; code 3 is favourable)", _lith_code),
    SignalBand("dist_fault_km", "distance to the nearest mapped fault (km)", _dist_fault_km),
    SignalBand("grav_bouguer", "Bouguer gravity (mGal): smoothed host field + long-wavelength noise", _grav_bouguer),
    SignalBand("geochem_pb", "soil Pb (ppm), lognormal: fluid field + fault proximity + noise", _geochem_pb),
)
CATEGORICAL_NAME = "lith_code"


def noise_band(rng: np.random.Generator, shape: Tuple[int, int]) -> np.ndarray:
    """A band unrelated to the truth: multi-scale field, a random transform, units and trend."""
    field = gaussian_field(rng, shape, scales=NOISE_SCALES_PX, weights=rng.uniform(0.1, 1.0, 3))
    kind = rng.integers(0, 3)
    if kind == 1:
        field = np.exp(0.6 * field)  # skewed, like assays
    elif kind == 2:
        field = np.abs(field)  # ridge-like, like derivatives
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    trend = (np.cos(angle) * cols + np.sin(angle) * rows) / max(shape)
    scale = 10.0 ** rng.uniform(-1.0, 2.5)
    offset = rng.uniform(-100.0, 1000.0)
    return offset + scale * (field + rng.uniform(0.0, 1.0) * trend)


@dataclass
class Layout:
    """Which 1-based band holds which content."""

    names: List[str]
    signal_bands: List[int]
    categorical_band: Optional[int]
    descriptions: List[str]


def band_layout(spec: DemoSpec) -> Layout:
    """Signal bands go to random positions (in priority order); the rest are noise."""
    signals = SIGNAL_BANDS[:min(len(SIGNAL_BANDS), spec.bands)]
    rng = _stream(spec.seed, _LAYOUT)
    positions = sorted(int(p) + 1 for p in rng.choice(spec.bands, size=len(signals), replace=False))
    names = [f"noise_{b:03d}" for b in range(1, spec.bands + 1)]
    descriptions = ["noise: multi-scale random field, unrelated to the truth"] * spec.bands
    categorical = None
    for band, sig in zip(positions, signals):
        names[band - 1] = sig.name
        descriptions[band - 1] = f"SIGNAL: {sig.description}"
        if sig.name == CATEGORICAL_NAME:
            categorical = band
    return Layout(names, positions, categorical, descriptions)


def build_stack(spec: DemoSpec, latent: Latent, layout: Layout, log: LogFn) -> np.ndarray:
    """All bands as float32 (bands, height, width), NODATA off the valid area."""
    stack = np.empty((spec.bands, spec.height, spec.width), dtype=np.float32)
    by_name = {s.name: (i, s) for i, s in enumerate(SIGNAL_BANDS)}
    for b, name in enumerate(layout.names, start=1):
        if name in by_name:
            slot, sig = by_name[name]
            stack[b - 1] = sig.build(latent, _stream(spec.seed, _SIGNAL, slot))
        else:
            stack[b - 1] = noise_band(_stream(spec.seed, _NOISE, b), spec.shape)
        stack[b - 1][~latent.valid] = NODATA
        if b % 25 == 0:
            log(f"built {b}/{spec.bands} bands")
    return stack


# ----------------------------------------------------------------------------- deposits


def sample_deposits(truth: np.ndarray, valid: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` distinct pixels drawn with probability proportional to the truth, jittered inside
    their pixel; returns (n, 2) fractional (row, col) pixel coordinates."""
    rng = _stream(seed, _DEPOSITS)
    flat = np.flatnonzero(valid.ravel())
    weights = truth.ravel()[flat].astype(np.float64)
    picks = flat[rng.choice(flat.size, size=n, replace=False, p=weights / weights.sum())]
    rows, cols = np.divmod(picks, truth.shape[1])
    jitter = rng.random((n, 2))
    return np.column_stack([rows + jitter[:, 0], cols + jitter[:, 1]])


def _transform() -> Any:
    from rasterio.transform import from_origin

    return from_origin(ORIGIN_XY[0], ORIGIN_XY[1], PIXEL_SIZE, PIXEL_SIZE)


def pixels_to_map(points_rc: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(row, col) pixel coordinates -> map x, y."""
    x = ORIGIN_XY[0] + points_rc[:, 1] * PIXEL_SIZE
    y = ORIGIN_XY[1] - points_rc[:, 0] * PIXEL_SIZE
    return x, y


# ----------------------------------------------------------------------------- writers


def write_geotiff(path: Path, data: np.ndarray, names: Sequence[str], tags: Dict[str, str]) -> None:
    """A tiled, deflate-compressed, pixel-interleaved float32 GeoTIFF with band descriptions."""
    import rasterio
    from rasterio.crs import CRS

    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype="float32",
                   crs=CRS.from_epsg(CRS_EPSG), transform=_transform(), nodata=NODATA,
                   tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="deflate", zlevel=1,
                   predictor=3, interleave="pixel", bigtiff="IF_SAFER")
    with rasterio.Env(GDAL_CACHEMAX=512 * 1024 * 1024), gdal_errors() as messages:  # bytes: GDALSetCacheMax
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            for band, name in enumerate(names, start=1):
                dst.set_band_description(band, name)
            dst.update_tags(**tags)
        verify_raster(path, messages, data.shape)


def write_deposits(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Point shapefile with ``id`` and ``label`` (all 1, like real deposit data)."""
    import geopandas as gpd

    n = len(x)
    frame = gpd.GeoDataFrame({"id": np.arange(1, n + 1, dtype=np.int32), "label": np.ones(n, dtype=np.int32)},
                             geometry=gpd.points_from_xy(x, y), crs=f"EPSG:{CRS_EPSG}")
    try:
        frame.to_file(path, driver="ESRI Shapefile")
        written = len(gpd.read_file(path))
    except Exception as exc:  # noqa: BLE001 - fiona/GDAL raise RuntimeError & co. for a failed write
        raise WriteFailed(" ".join(str(exc).split())[:300]) from None
    if written != n:
        raise WriteFailed(f"{path.name} holds {written} of {n} deposits after writing")


def readme_text(spec: DemoSpec, layout: Layout, intercept: float, truth_stats: Dict[str, float]) -> str:
    """What the files hold, how the truth is made, and which bands carry it."""
    w = LOGIT_WEIGHTS
    lines = [
        "Stack Segmenter demo dataset (synthetic; generated by core/demo_data.py)",
        "",
        f"seed {spec.seed}; grid {spec.width} x {spec.height} px of {PIXEL_SIZE:.0f} m; "
        f"CRS EPSG:{CRS_EPSG} (GDA94 / Australian Albers); nodata {NODATA:g} in every band.",
        "",
        "Files",
        f"  {FILE_NAMES['raster']}  {spec.bands}-band float32 evidence stack (tiled, deflate)",
        f"  {FILE_NAMES['truth']}  the hidden true probability of a deposit per pixel",
        f"  {FILE_NAMES['deposits']}  {spec.n_deposits} deposits (points, label = 1) sampled from truth.tif",
        "",
        "How the truth is made",
        f"  p = sigmoid({intercept:.3f} + {w['host']} * host + {w['fluid']} * fluid"
        f" + {w['favourable_lithology']} * [lithology == {FAVOURABLE_LITHOLOGY}]"
        f" + {w['fault_proximity']} * exp(-fault_distance_px / {FAULT_DECAY_PX:g}))",
        "  host, fluid: standardised Gaussian random fields (hidden); the intercept makes the",
        f"  probabilities sum to the deposit count (map mean {truth_stats['map_mean']:.6f},"
        f" mean at deposits {truth_stats['deposit_mean']:.6f}).",
        "  Deposits: distinct pixels drawn with probability proportional to p, jittered inside the pixel.",
        "",
        "Nodata: an irregular corner (top left) and a survey-gap strip (lower right half).",
        "",
        "Lithology codes: " + ", ".join(f"{k} {v}" for k, v in LITHOLOGY_CODES.items()),
        "",
        f"Bands (1-based; signal bands: {layout.signal_bands}; categorical band: {layout.categorical_band})",
    ]
    lines += [f"  {b:3d}  {name:<14} {desc}"
              for b, (name, desc) in enumerate(zip(layout.names, layout.descriptions), start=1)]
    return "\n".join(lines) + "\n"


def _prepare_output_dir(output_dir: PathLike) -> Path:
    return prepare_folder(Path(output_dir).expanduser(), "the demo output folder (--output_dir)").resolve()


def _publish(staging: Path, out: Path) -> None:
    """Moves the finished files into place (os.replace: each file appears whole or not at all).

    Stale shapefile sidecars (e.g. a .qix index of an older deposits.shp) are removed first."""
    stem = Path(FILE_NAMES["deposits"]).stem
    for old in out.glob(f"{stem}.*"):
        if old.is_file() and not (staging / old.name).exists():
            old.unlink()
    # The .shp goes last so a reader never sees a new .shp with old sidecars.
    names = sorted((p.name for p in staging.iterdir()), key=lambda n: n.endswith(".shp"))
    for name in names:
        os.replace(staging / name, out / name)


# ----------------------------------------------------------------------------- the entry point


def make_demo_data(output_dir: PathLike, *, seed: int = 42, width: int = 1024, height: int = 384,
                   bands: int = 99, n_deposits: int = 120, log: Optional[LogFn] = None) -> Dict[str, Any]:
    """Writes the seeded synthetic demo dataset into ``output_dir``.

    Returns the file paths ("raster", "deposits", "truth", "readme") and what a caller needs
    to use them: "n_deposits", "signal_bands" (1-based), "categorical_band" (1-based),
    "band_names", sizes, CRS, and the mean true probability on the map and at the deposits.
    """
    log = log or (lambda _msg: None)
    spec = DemoSpec(width=width, height=height, bands=bands, n_deposits=n_deposits, seed=seed)
    out = _prepare_output_dir(output_dir)
    started = time.perf_counter()
    log(f"demo data: {spec.bands} bands, {spec.width} x {spec.height} px, {spec.n_deposits} deposits, seed {spec.seed}")

    latent = latent_fields(spec)
    truth, intercept = true_probability(latent, spec.n_deposits)
    points = sample_deposits(truth, latent.valid, spec.n_deposits, spec.seed)
    at_deposits = truth[points[:, 0].astype(int), points[:, 1].astype(int)]
    stats = {"map_mean": float(truth[latent.valid].mean()), "deposit_mean": float(at_deposits.mean())}
    log(f"truth: mean probability {stats['map_mean']:.4f}, at deposits {stats['deposit_mean']:.4f}")

    layout = band_layout(spec)
    stack = build_stack(spec, latent, layout, log)

    # Everything is written and verified in a staging folder of our temporary pattern first
    # (files.py: a killed run's staging folder is removed by the next run), then moved in.
    remove_stale_temps(out / STAGING, log)
    needed = (spec.bands + 1) * spec.width * spec.height * 4
    check_free_space(out, needed, f"the demo data in {out}")
    staging = temp_path(out / STAGING)
    try:
        staging.mkdir()
        tags = {"source": "stack_segmenter demo data", "seed": str(spec.seed)}
        write_geotiff(staging / FILE_NAMES["raster"], stack, layout.names, tags)
        del stack
        write_geotiff(staging / FILE_NAMES["truth"], truth[None], ["true_probability"], tags)
        x, y = pixels_to_map(points)
        write_deposits(staging / FILE_NAMES["deposits"], x, y)
        (staging / FILE_NAMES["readme"]).write_text(readme_text(spec, layout, intercept, stats), encoding="utf-8")
        _publish(staging, out)
    except (OSError, WriteFailed) as exc:
        free = free_bytes(out)
        shutil.rmtree(staging, ignore_errors=True)
        raise write_error(out, exc, needed, free) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    log(f"demo data written to {out} in {time.perf_counter() - started:.1f} s")
    return {
        **{key: str(out / name) for key, name in FILE_NAMES.items()},
        "n_deposits": spec.n_deposits,
        "signal_bands": layout.signal_bands,
        "categorical_band": layout.categorical_band,
        "band_names": layout.names,
        "width": spec.width,
        "height": spec.height,
        "bands": spec.bands,
        "crs": f"EPSG:{CRS_EPSG}",
        "pixel_size": PIXEL_SIZE,
        "nodata": NODATA,
        "seed": spec.seed,
        "truth_mean": stats["map_mean"],
        "truth_mean_at_deposits": stats["deposit_mean"],
    }


def truth_correlation(map_path: Union[str, Path], truth_path: Union[str, Path]) -> Optional[float]:
    """Spearman rank correlation of a map with the demo's known truth over the pixels both hold.

    The honest yardstick of a demo map (no deposit sample can fool it); None when fewer than
    10 pixels overlap or the correlation is undefined (a constant map).
    """
    import rasterio
    from scipy.stats import spearmanr

    with rasterio.open(map_path) as a, rasterio.open(truth_path) as b:
        x, y = a.read(1, masked=True), b.read(1, masked=True)
    ok = ~(np.ma.getmaskarray(x) | np.ma.getmaskarray(y)) & np.isfinite(x.data) & np.isfinite(y.data)
    if ok.sum() < 10:
        return None
    rho = spearmanr(x.data[ok], y.data[ok]).correlation
    return float(rho) if np.isfinite(rho) else None

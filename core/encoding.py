"""Band encoding: robust standardisation of numeric bands, one-hot codes for class bands.

The statistics come from the TRAINING AREA only (training windows, inside the study mask,
valid pixels) and travel in the checkpoint as JSON-able primitives, so prediction encodes
a new raster exactly as training did. Real lithology maps hold 100+ codes, most of them
rare: a class band keeps its ``MAX_CATEGORIES`` most frequent codes (one channel each)
and groups the rest into one "other" channel. A code never seen in training encodes as
"other" when the band has that channel, else as all zeros; never as an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import BAND_SCALINGS
from .errors import ConfigError, DataError
from .events import LogFn
from .raster import PixelBox, chunks, coverage_mask, open_raster, read_window


FORMAT = "stack_segmenter.encoder/3"
#: Formats ``from_dict`` reads (1: no "other" channels; 1 and 2: z-scores only, no ranks).
FORMATS = ("stack_segmenter.encoder/1", "stack_segmenter.encoder/2", FORMAT)

MAX_CATEGORIES = 64
"""Codes of a categorical band kept as channels of their own (the most frequent); rarer ones share "other"."""
MAX_DISTINCT = 10_000
"""More distinct values than this and a "categorical" band is taken for a continuous one (refused)."""
MAX_SAMPLES = 100_000
"""Most pixels kept (uniform random subsample) to estimate the numeric statistics."""
CLIP_PERCENTILES = (0.5, 99.5)
"""Values are winsorised to these percentiles before mean/std, so outliers do not dominate."""
Z_CLIP = 10.0
"""Standardised values are clipped to [-Z_CLIP, Z_CLIP] (protects the model from outliers)."""
N_QUANTILES = 256
"""Quantile levels per numeric band of the rank transform (``BandEncoder.ranks``)."""
_LUT_KEYS = ((np.arange(1 << 16, dtype=np.uint32) << 16) | np.uint32(1 << 15)).view(np.float32)
"""The float32 in the middle of each cell of the top 16 bits (sign, exponent, 7 mantissa bits)."""


def _noop(_msg: str) -> None:
    return None


def _code(value: float) -> float | int:
    """Integral codes stored as int (readable JSON), others as float."""
    return int(value) if float(value).is_integer() else float(value)


@dataclass
class BandEncoder:
    """Per-band encoding of a raster stack, stored in the checkpoint.

    Attributes:
        band_names: names of the raw bands (descriptions or band_N).
        mean, std: per raw band; unused (0, 1) for categorical bands.
        categories: 1-based band number (as str, JSON keys) -> sorted list of the codes kept.
        other: 1-based band numbers (as str) whose rare and unseen codes share an "other" channel.
        z_clip: standardised values are clipped to [-z_clip, z_clip].
        ranks: 1-based band number (as str) -> [values, scores]: the band is encoded by its
            rank in the training area (a normal score, piecewise linear between the training
            quantiles ``values``), not by its z-score. Why: evidence bands are skewed (metal
            grades, distances, flow accumulation); a z-score squeezes most pixels into a
            sliver near -0.3 and leaves the tail to outliers, the rank spreads them evenly
            (5-fold spatial cv, README "Skill": better on the demo, Ecuador and Cloncurry).
    """

    band_names: List[str]
    mean: List[float]
    std: List[float]
    categories: Dict[str, List[float | int]] = field(default_factory=dict)
    z_clip: float = Z_CLIP
    other: List[str] = field(default_factory=list)
    ranks: Dict[str, List[List[float]]] = field(default_factory=dict)
    _tables: Dict[str, Tuple[np.float32, np.ndarray]] = field(default_factory=dict, init=False, repr=False,
                                                              compare=False)

    def __post_init__(self) -> None:
        n = len(self.band_names)
        if len(self.mean) != n or len(self.std) != n:
            raise DataError(f"encoder holds {n} band names but {len(self.mean)} means and {len(self.std)} stds")
        self.categories = {str(k): list(v) for k, v in self.categories.items()}
        self.other = sorted({str(b) for b in self.other}, key=int)
        for band, (values, scores) in self.ranks.items():
            if len(values) != len(scores) or not values or np.any(np.diff(values) <= 0):
                raise DataError(f"the rank table of band {band} in the checkpoint is damaged; retrain the model")

    def rank_lookup(self, band: int) -> Tuple[np.float32, np.ndarray]:
        """(centre, table) of 1-based ``band``'s rank transform: the score of ``x`` is
        ``table[bits(x - centre) >> 16]``.

        Why a table: interpolating between 256 quantiles costs a binary search per pixel
        (~55 ns a pixel and band, more than reading the stack); the top 16 bits of
        ``x - centre`` index 65 536 cells, fine near the centre and coarse (log-spaced) in
        the tails as ranks are, for what a z-score costs (2.6 against 2.4 ns, demo stack).
        Within a cell the score is that of its middle: at most 2^-8 of ``|x - centre|``
        away, far below a band's noise.
        """
        key = str(band)
        if key not in self._tables:
            values, scores = self.ranks[key]
            centre = np.float32(values[len(values) // 2])
            with np.errstate(invalid="ignore", over="ignore"):
                table = np.interp(_LUT_KEYS.astype(np.float64) + float(centre), values, scores)
            table[~np.isfinite(table)] = 0.0  # NaN keys; invalid pixels are zeroed anyway
            self._tables[key] = (centre, table.astype(np.float32))
        return self._tables[key]

    @property
    def band_count(self) -> int:
        """Raw band count (the model's input before encoding)."""
        return len(self.band_names)

    @property
    def categorical_bands(self) -> List[int]:
        """1-based numbers of the one-hot encoded bands."""
        return sorted(int(k) for k in self.categories)

    def _channels(self, band: int) -> int:
        """Channels of 1-based ``band``: 1 (numeric), or its codes kept (+ 1 for "other")."""
        cats = self.categories.get(str(band))
        if cats is None:
            return 1
        return len(cats) + (1 if str(band) in self.other else 0)

    @property
    def out_channels(self) -> int:
        """Channels after encoding: one per numeric band, one per kept code (and "other") of a class band."""
        return sum(self._channels(b) for b in range(1, self.band_count + 1))

    @property
    def channel_names(self) -> List[str]:
        """Name of each encoded channel (``name``, ``name=code`` or ``name=other``)."""
        out: List[str] = []
        for b, name in enumerate(self.band_names, start=1):
            cats = self.categories.get(str(b))
            if cats is None:
                out.append(name)
                continue
            out.extend(f"{name}={c}" for c in cats)
            if str(b) in self.other:
                out.append(f"{name}=other")
        return out

    def channel_groups(self) -> List[List[int]]:
        """The encoded channels of each raw band, in band order (for per-band penalties)."""
        groups: List[List[int]] = []
        ch = 0
        for b in range(1, self.band_count + 1):
            n = self._channels(b)
            groups.append(list(range(ch, ch + n)))
            ch += n
        return groups

    def encode(self, data: np.ndarray, valid: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Encodes a window: (C, h, w) raw values + bool (h, w) -> float32 (C_out, h, w).

        Invalid pixels encode as 0 in every channel (the mean of a numeric band). ``out``
        (float32, (C_out, h, w)) is filled in place when given, so a caller can encode a
        whole batch into one array without copies (prediction's hot path).
        """
        if data.shape[0] != self.band_count:
            raise DataError(
                f"the raster has {data.shape[0]} bands but the model was trained on {self.band_count}; "
                "use the same band stack as in training"
            )
        if out is None:
            out = np.empty((self.out_channels,) + data.shape[1:], dtype=np.float32)
        ch = 0
        for b in range(self.band_count):
            cats = self.categories.get(str(b + 1))
            if cats is None and str(b + 1) in self.ranks:
                centre, table = self.rank_lookup(b + 1)
                o = out[ch]
                np.subtract(data[b], centre, out=o, casting="unsafe")
                np.take(table, o.view(np.uint32) >> 16, out=o)
                ch += 1
            elif cats is None:
                o = out[ch]
                np.subtract(data[b], np.float32(self.mean[b]), out=o, casting="unsafe")
                np.divide(o, np.float32(self.std[b]), out=o)
                np.clip(o, -self.z_clip, self.z_clip, out=o)
                ch += 1
            else:
                for k, code in enumerate(cats):
                    out[ch + k] = data[b] == np.float32(code)
                ch += len(cats)
                if str(b + 1) in self.other:  # rare codes, and codes never seen in training
                    out[ch] = ~np.isin(data[b], np.asarray(cats, dtype=np.float32))
                    ch += 1
        out[:, ~valid] = 0.0
        return out

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able primitives only (it lives in the checkpoint, loaded with weights_only=True)."""
        return {
            "format": FORMAT,
            "band_names": [str(n) for n in self.band_names],
            "band_count": int(self.band_count),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "categories": {str(k): [_code(c) for c in v] for k, v in self.categories.items()},
            "z_clip": float(self.z_clip),
            "other": [str(b) for b in self.other],
            "ranks": {str(k): [[float(v) for v in r[0]], [float(v) for v in r[1]]] for k, r in self.ranks.items()},
            "out_channels": int(self.out_channels),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BandEncoder":
        """Rebuilds an encoder written by ``to_dict``.

        Raises:
            DataError: the dict is not an encoder of this format.
        """
        if not isinstance(d, dict) or d.get("format") not in FORMATS:
            raise DataError(f"band statistics in the checkpoint are not in format {FORMAT!r}; retrain the model")
        return cls(
            band_names=list(d["band_names"]),
            mean=[float(v) for v in d["mean"]],
            std=[float(v) for v in d["std"]],
            categories={str(k): list(v) for k, v in d.get("categories", {}).items()},
            z_clip=float(d.get("z_clip", Z_CLIP)),
            other=[str(b) for b in d.get("other", [])],
            ranks={str(k): [list(r[0]), list(r[1])] for k, r in d.get("ranks", {}).items()},
        )


class _Reservoir:
    """A uniform random subsample of at most ``size`` pixel vectors, in bounded memory.

    Each pixel gets a random key; the ``size`` smallest keys are kept. The result is a
    uniform sample of everything offered, whatever the order and chunking.
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.rng = rng
        self.keys = np.zeros(0, dtype=np.float64)
        self.values: Optional[np.ndarray] = None
        self.seen = 0

    def add(self, values: np.ndarray) -> None:
        """Offers (C, n) pixel vectors."""
        n = values.shape[1]
        if n == 0:
            return
        self.seen += n
        keys = self.rng.random(n)
        merged_keys = np.concatenate([self.keys, keys])
        merged = values if self.values is None else np.concatenate([self.values, values], axis=1)
        if merged_keys.size > self.size:
            keep = np.argpartition(merged_keys, self.size - 1)[: self.size]
            merged_keys, merged = merged_keys[keep], merged[:, keep]
        self.keys, self.values = merged_keys, merged


def robust_mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and std after winsorising to CLIP_PERCENTILES; std 1 for a constant band."""
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, CLIP_PERCENTILES)
    clipped = np.clip(values.astype(np.float64), lo, hi)
    mean, std = float(clipped.mean()), float(clipped.std())
    if not std > 1e-12:
        std = float(values.astype(np.float64).std())
    return mean, std if std > 1e-12 else 1.0


def rank_table(values: np.ndarray, levels: int = N_QUANTILES) -> List[List[float]]:
    """[values, scores] for ``BandEncoder.ranks``: the band's quantiles and their normal scores.

    Tied quantiles (a band with a mass at one value, e.g. zeros) keep one entry, with the
    mean score of the levels they span: the tied pixels map to the middle of their ranks.
    """
    from scipy.special import ndtri

    p = (np.arange(levels) + 0.5) / levels
    q = np.quantile(values.astype(np.float64), p)
    uniq, inverse = np.unique(q, return_inverse=True)
    scores = np.bincount(inverse, weights=ndtri(p)) / np.bincount(inverse)
    return [uniq.tolist(), scores.tolist()]


def categorical_band_numbers(categorical_bands: Sequence[int | str], names: Sequence[str]) -> List[int]:
    """Band numbers (1-based) and band names (exact, else ignoring case) -> sorted 1-based numbers."""
    count = len(names)
    folded = {n.lower(): i for i, n in reversed(list(enumerate(names, start=1)))}
    bands, unknown = set(), []
    for b in categorical_bands:
        if isinstance(b, int) or str(b).isdigit():
            bands.add(int(b))
        elif str(b) in names:
            bands.add(list(names).index(str(b)) + 1)
        elif str(b).lower() in folded:
            bands.add(folded[str(b).lower()])
        else:
            unknown.append(str(b))
    if unknown:
        raise ConfigError(f"categorical band(s) {', '.join(map(repr, unknown))} are not band names of the raster; "
                          f"its bands are {', '.join(names)} (--categorical_bands takes names or 1-based numbers)")
    bad = sorted(b for b in bands if not 1 <= b <= count)
    if bad:
        raise ConfigError(f"categorical band(s) {bad} do not exist; the raster has bands 1..{count} (--categorical_bands)")
    return sorted(bands)


def _add_codes(found: Dict[int, Dict[float, int]], data: np.ndarray, sel: np.ndarray, bands: List[int],
               names: List[str], max_distinct: int) -> None:
    """Counts each categorical band's codes; refuses bands that are not class codes."""
    for b in bands:
        codes, counts = np.unique(data[b - 1][sel], return_counts=True)
        fractional = codes[codes != np.round(codes)]
        if fractional.size:
            raise DataError(
                f"categorical band {b} ({names[b - 1]}) holds values that are not whole numbers (e.g. "
                f"{float(fractional[0]):g}); it looks continuous: drop it from --categorical_bands, or reclassify "
                "it to integer class codes"
            )
        tally = found[b]
        for code, count in zip(codes.tolist(), counts.tolist()):
            tally[code] = tally.get(code, 0) + int(count)
        if len(tally) > max_distinct:
            raise DataError(
                f"categorical band {b} ({names[b - 1]}) holds more than {max_distinct} distinct codes; "
                "it looks continuous: drop it from --categorical_bands, or reclassify it to fewer classes"
            )


def keep_frequent(tally: Dict[float, int], most: int) -> tuple[List[float | int], bool]:
    """The ``most`` most frequent codes (sorted), and whether rarer ones were left for "other"."""
    ranked = sorted(tally, key=lambda c: (-tally[c], c))
    return sorted(_code(c) for c in ranked[:most]), len(ranked) > most


def fit_encoder(
    raster_path: str | Path,
    windows: Sequence[PixelBox],
    categorical_bands: Sequence[int | str] = (),
    *,
    mask: Optional[np.ndarray] = None,
    max_samples: int = MAX_SAMPLES,
    max_categories: int = MAX_CATEGORIES,
    max_distinct: int = MAX_DISTINCT,
    scaling: str = BAND_SCALINGS[0],
    seed: int = 0,
    log: Optional[LogFn] = None,
    progress: Optional[Callable[[float], None]] = None,
) -> BandEncoder:
    """Fits the encoder on the valid pixels covered by ``windows`` (inside ``mask``).

    Reads chunk by chunk (each pixel once, however much the windows overlap); memory is
    bounded by ``max_samples`` pixels. ``windows`` are (row0, col0, row1, col1) boxes. A
    categorical band keeps its ``max_categories`` most frequent codes; the rest share an
    "other" channel. ``scaling`` encodes numeric bands by rank (``BandEncoder.ranks``) or
    by z-score. ``progress`` gets the fraction of chunks read.

    Raises:
        ConfigError: a categorical band number outside the raster.
        DataError: no valid pixel in the training area, or a categorical band that is not
            class codes (fractional values, or more than ``max_distinct`` distinct ones).
    """
    log = log or _noop
    if scaling not in BAND_SCALINGS:
        raise ConfigError(f"unknown band scaling {scaling!r}; choose one of {', '.join(BAND_SCALINGS)}")
    rng = np.random.default_rng(seed)
    with open_raster(raster_path) as src:
        names = [d if d else f"band_{i + 1}" for i, d in enumerate(src.descriptions)]
        bands = categorical_band_numbers(categorical_bands, names)
        cover = coverage_mask((src.height, src.width), windows, mask)
        reservoir = _Reservoir(max_samples, rng)
        found: Dict[int, Dict[float, int]] = {b: {} for b in bands}
        boxes = chunks(src.height, src.width)
        for i, (r0, c0, r1, c1) in enumerate(boxes, start=1):
            if progress is not None:
                progress(i / len(boxes))
            inside = cover[r0:r1, c0:c1]
            if not inside.any():
                continue
            data, valid = read_window(src, r0, c0, r1 - r0, c1 - c0)
            sel = valid & inside
            reservoir.add(data[:, sel])
            _add_codes(found, data, sel, bands, names, max_distinct)
    if reservoir.seen == 0 or reservoir.values is None:
        raise DataError(
            "the training area holds no valid pixel (all nodata or outside the study mask); "
            "check the raster's nodata, the mask (--mask_path) and the tile size"
        )
    means, stds = zip(*(robust_mean_std(reservoir.values[b]) for b in range(len(names))))
    kept = {b: keep_frequent(found[b], max_categories) for b in bands}
    ranks = ({str(b + 1): rank_table(reservoir.values[b]) for b in range(len(names)) if b + 1 not in bands}
             if scaling == "rank" else {})  # one of BAND_SCALINGS
    encoder = BandEncoder(
        band_names=names, mean=list(means), std=list(stds),
        categories={str(b): kept[b][0] for b in bands}, other=[str(b) for b in bands if kept[b][1]],
        ranks=ranks,
    )
    log(f"band statistics from {reservoir.seen} valid training pixel(s) (sample of {reservoir.values.shape[1]}); "
        f"{encoder.band_count} band(s) -> {encoder.out_channels} input channel(s); numeric bands encoded by "
        f"{'their rank in the training area (normal scores)' if ranks else 'z-score'}")
    for b in bands:
        codes = encoder.categories[str(b)]
        if kept[b][1]:
            total = sum(found[b].values())
            covered = sum(found[b][c] for c in found[b] if _code(c) in set(codes))
            log(f"categorical band {b} ({names[b - 1]}): {len(found[b])} codes; the {len(codes)} most frequent "
                f"kept as channels ({100.0 * covered / max(1, total):.1f} % of the training pixels), the "
                f"{len(found[b]) - len(codes)} rarer ones (and any code unseen in training) share one 'other' channel")
        else:
            log(f"categorical band {b} ({names[b - 1]}): {len(found[b])} code(s) {codes}")
    return encoder


SHIFT_WARN = 3.0
"""A band whose mean moved by more than this many training standard deviations is flagged."""
SCALE_WARN = 3.0
"""A band whose spread grew or shrank by more than this factor is flagged."""
MIN_SAMPLE = 50
"""Fewer valid sampled pixels than this: too few to compare the bands."""


def _distance(mean: float, std: float, ref_mean: float, ref_std: float) -> Tuple[float, float]:
    """(shift in reference standard deviations, spread ratio) of a band against a reference."""
    ref_std = ref_std if ref_std > 1e-12 else 1.0
    return abs(mean - ref_mean) / ref_std, (std if std > 1e-12 else 1e-12) / ref_std


def _matches(mean: float, std: float, ref_mean: float, ref_std: float) -> bool:
    """Statistics close to a reference band's (what a swapped band shows)."""
    shift, scale = _distance(mean, std, ref_mean, ref_std)
    return shift <= 0.5 and 0.67 <= scale <= 1.5


def compare_with_training(encoder: "BandEncoder", sample: np.ndarray, names: Sequence[str]) -> List[str]:
    """Warnings for numeric bands whose values look unlike training: shifted or rescaled, or swapped.

    ``sample`` (bands in the model's order, n pixels) comes from the raster to predict. A new
    area legitimately differs, so these are warnings; each names the band, what differs and,
    when another band matches the training statistics instead, that band (swapped order).
    """
    if sample.shape[1] < MIN_SAMPLE:
        return []
    numeric = [b for b in range(encoder.band_count) if str(b + 1) not in encoder.categories]
    stats = {b: robust_mean_std(sample[b]) for b in numeric}
    out = []
    for b in numeric:
        mean, std = stats[b]
        shift, scale = _distance(mean, std, encoder.mean[b], encoder.std[b])
        if shift <= SHIFT_WARN and 1.0 / SCALE_WARN <= scale <= SCALE_WARN:
            continue
        how = (f"mean {mean:.4g} vs {encoder.mean[b]:.4g} in training ({shift:.1f} training standard deviations "
               f"away), spread {scale:.2g}x the training one")
        like = [o for o in numeric if o != b and _matches(mean, std, encoder.mean[o], encoder.std[o])]
        hint = (f"; its values look like training band {like[0] + 1} ({encoder.band_names[like[0]]!r}): are the bands "
                "in another order than in training?") if like else ""
        out.append(
            f"warning: band {b + 1} ({names[b]!r}, trained as {encoder.band_names[b]!r}) looks unlike training: {how}"
            f"{hint}. Prediction goes on (a new area may differ); check the band order and units if this is not "
            "expected"
        )
    return out

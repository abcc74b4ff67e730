"""Spatial validation split and positive-aware sampling of training windows.

The raster is cut into a grid of blocks (each at least two tiles wide); some blocks
become validation blocks (about ``val_fraction`` of the usable area). Training windows
must stay out of every validation block grown by a buffer at least a tile wide, so no
pixel of a validation block lies inside any training tile and neighbouring pixels do not
leak either. Validation windows tile each validation block from the inside.

Several seeded block layouts are tried; the one that puts positives on both sides (and
comes closest to ``val_fraction``) wins, so tiny label sets still get a usable split.
When the buffer leaves no training window, it is reduced (logged) before giving up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import DEFAULT_TILE
from .errors import DataError
from .files import WriteFailed, write_atomic
from .raster import Box, RasterInfo, box_to_map, coverage_mask, iter_windows

LogFn = Callable[[str], None]
Pair = Tuple[int, int]

ATTEMPTS = 16
"""Seeded block layouts tried per buffer size."""
POSITIVE_SHARE = 0.5
"""Share of draws that go to windows holding positives (when they are rarer than that)."""
BLOCKS_TARGET = 5
"""Validation area is spread over about this many blocks (bigger blocks lose less to buffers)."""
MIN_TILE = 16


def _noop(_msg: str) -> None:
    return None


@dataclass
class Split:
    """A spatial train/validation split.

    Attributes:
        tile, stride: window size and step (rows, cols).
        buffer: gap (rows, cols) kept between validation blocks and training windows.
        val_blocks: validation blocks as (row0, col0, row1, col1) pixel boxes.
        train_windows, val_windows: (row0, col0, row1, col1) tile-sized windows.
        train_weights: one sampling weight per training window (WeightedRandomSampler):
            windows holding positives are drawn about POSITIVE_SHARE of the time.
        summary: counts (positives on each side, windows, fractions), JSON-able.
        train_mask, val_mask: bool (H, W) pixel masks, set only by ``make_globe_split``
            (one whole-raster window serves both sides; AND them into the study mask).
    """

    tile: Pair
    stride: Pair
    buffer: Pair
    val_blocks: List[Box]
    train_windows: List[Box]
    val_windows: List[Box]
    train_weights: List[float]
    summary: Dict[str, Any] = field(default_factory=dict)
    train_mask: Optional[np.ndarray] = None
    val_mask: Optional[np.ndarray] = None

    def val_blocks_map(self, info: RasterInfo) -> List[Tuple[float, float, float, float]]:
        """Validation blocks as map boxes (left, bottom, right, top) in the raster's CRS."""
        return [box_to_map(b, info) for b in self.val_blocks]


def _fits_split(height: int, width: int, tile: Pair) -> bool:
    """Room for a validation block, a one-tile buffer and training tiles along one axis."""
    return height >= 3 * tile[0] or width >= 3 * tile[1]


def resolve_tile(tile_size: Optional[Sequence[int]], height: int, width: int, log: Optional[LogFn] = None) -> Pair:
    """The tile (rows, cols): the one given, else DEFAULT_TILE or the raster size when smaller.

    The automatic tile is halved (logged) while the raster has no room for a spatial
    validation split with it. A given tile larger than the raster is an error.

    Raises:
        DataError: the given tile is larger than the raster.
    """
    log = log or _noop
    if tile_size is not None:
        th, tw = (int(v) for v in tile_size)
        if th > height or tw > width:
            raise DataError(
                f"tile {th} x {tw} is larger than the raster ({height} x {width} pixels); "
                f"use --tile_size {min(th, height)} {min(tw, width)} or smaller"
            )
        return th, tw
    tile = (min(DEFAULT_TILE, height), min(DEFAULT_TILE, width))
    while not _fits_split(height, width, tile) and min(tile) // 2 >= MIN_TILE:
        tile = (max(MIN_TILE, tile[0] // 2), max(MIN_TILE, tile[1] // 2))
    log(f"automatic tile size {tile[0]} x {tile[1]} for a {height} x {width} raster (set --tile_size to change)")
    return tile


def _integral(a: np.ndarray) -> np.ndarray:
    """Summed-area table, so any box sum costs four lookups."""
    dtype = np.int32 if a.size < 2**31 - 1 else np.int64
    s = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=dtype)
    np.cumsum(np.cumsum(a, axis=0, dtype=dtype), axis=1, out=s[1:, 1:])
    return s


def _box_sum(s: np.ndarray, b: Box) -> int:
    r0, c0, r1, c1 = b
    return int(s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0])


def _edges(size: int, block: int) -> List[int]:
    """Block edges along one axis; every block is at least ``block`` long (or the whole axis)."""
    n = max(1, size // block)
    return [int(round(v)) for v in np.linspace(0, size, n + 1)]


def block_grid(height: int, width: int, tile: Pair, usable_pixels: int, val_fraction: float,
               block_size: Optional[int] = None) -> List[Box]:
    """The candidate blocks: a grid of boxes at least two tiles wide.

    Without ``block_size`` the side is chosen so the validation area spans about
    BLOCKS_TARGET blocks (bigger blocks lose less area to the buffers).
    """
    side = block_size or int(math.sqrt(max(usable_pixels, 1) * val_fraction / BLOCKS_TARGET))
    bh, bw = max(2 * tile[0], side), max(2 * tile[1], side)
    if height < 2 * bh and width < 2 * bw:  # too few blocks: fall back to tile-sized blocks
        bh, bw = tile
    re, ce = _edges(height, bh), _edges(width, bw)
    return [(re[i], ce[j], re[i + 1], ce[j + 1]) for i in range(len(re) - 1) for j in range(len(ce) - 1)]


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _grow(b: Box, buffer: Pair) -> Box:
    return (b[0] - buffer[0], b[1] - buffer[1], b[2] + buffer[0], b[3] + buffer[1])


def _choose_blocks(blocks: List[Box], usable_s: np.ndarray, target: float, rng: np.random.Generator) -> List[Box]:
    """Adds blocks in random order while that brings the validation area closer to target."""
    chosen: List[Box] = []
    area = 0
    for i in rng.permutation(len(blocks)):
        n = _box_sum(usable_s, blocks[i])
        if n == 0:
            continue
        if not chosen or abs(area + n - target) < abs(area - target):
            chosen.append(blocks[i])
            area += n
        if area >= target:
            break
    return sorted(chosen)


def _val_windows(blocks: List[Box], tile: Pair, usable_s: np.ndarray) -> List[Box]:
    """Tile-sized windows inside each validation block (blocks are at least a tile wide)."""
    out: List[Box] = []
    for r0, c0, r1, c1 in blocks:
        for r, c in iter_windows(r1 - r0, c1 - c0, tile, tile):
            w = (r0 + r, c0 + c, r0 + r + tile[0], c0 + c + tile[1])
            if w[2] <= r1 and w[3] <= c1 and _box_sum(usable_s, w) > 0:
                out.append(w)
    return out


@dataclass
class _Layout:
    blocks: List[Box]
    train: List[Box]
    val: List[Box]
    stats: Dict[str, Any]

    def key(self, target_fraction: float) -> Tuple[bool, bool, int, float]:
        s = self.stats
        feasible = bool(self.train) and bool(self.val)
        both = s["train_positive_pixels"] > 0 and s["val_positive_pixels"] > 0
        closeness = -int(round(abs(s["val_area_fraction"] - target_fraction) / 0.05))
        return (feasible, both, closeness, s["train_area_fraction"])


def _layout(blocks: List[Box], windows: List[Box], tile: Pair, buffer: Pair, usable: np.ndarray,
            usable_s: np.ndarray, pos: np.ndarray, points: np.ndarray) -> _Layout:
    """Training/validation windows and their positive counts for one choice of blocks."""
    grown = [_grow(b, buffer) for b in blocks]
    train = [w for w in windows if not any(_overlaps(w, g) for g in grown)]
    val = _val_windows(blocks, tile, usable_s)
    total = max(int(usable.sum()), 1)
    in_val = coverage_mask(usable.shape, blocks, usable)
    in_train = coverage_mask(usable.shape, train, usable)
    rows, cols = points[:, 0].astype(int), points[:, 1].astype(int)
    stats = {
        "val_positive_pixels": int((pos & in_val).sum()),
        "train_positive_pixels": int((pos & in_train).sum()),
        "val_positive_points": int(in_val[rows, cols].sum()) if len(points) else 0,
        "train_positive_points": int(in_train[rows, cols].sum()) if len(points) else 0,
        "val_area_fraction": float(in_val.sum() / total),
        "train_area_fraction": float(in_train.sum() / total),
    }
    return _Layout(blocks, train, val, stats)


def positive_weights(windows: Sequence[Box], pos_s: np.ndarray, share: float = POSITIVE_SHARE) -> List[float]:
    """Sampling weights (summing to 1): windows holding positives get ``share`` of the draws.

    When positives are already at least that common, every window weighs the same.
    """
    has = np.array([_box_sum(pos_s, w) > 0 for w in windows], dtype=bool)
    n, p = len(windows), int(has.sum())
    if n == 0:
        return []
    if p == 0 or p == n or p / n >= share:
        return [1.0 / n] * n
    w = np.where(has, share / p, (1.0 - share) / (n - p))
    return [float(v) for v in w]


def _buffers(tile: Pair, buffer: Optional[Pair]) -> List[Pair]:
    """Buffers to try, widest first: the one given (or a tile), then half, then none."""
    first = buffer if buffer is not None else tile
    out = [first, (first[0] // 2, first[1] // 2), (0, 0)]
    return [b for i, b in enumerate(out) if b not in out[:i]]


def _check_inputs(labels: np.ndarray, usable: np.ndarray, tile: Pair) -> None:
    if labels.shape != usable.shape:
        raise DataError(f"labels {labels.shape} and valid mask {usable.shape} differ in shape")
    h, w = labels.shape
    if tile[0] > h or tile[1] > w:
        raise DataError(
            f"tile {tile[0]} x {tile[1]} is larger than the raster ({h} x {w} pixels); "
            f"use --tile_size {min(tile[0], h)} {min(tile[1], w)} or smaller"
        )
    if not usable.any():
        raise DataError("no valid pixel in the raster (inside the study mask); check nodata and --mask_path")


def make_split(
    labels: np.ndarray,
    usable: np.ndarray,
    tile: Pair,
    stride: Optional[Pair] = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    buffer: Optional[Pair] = None,
    block_size: Optional[int] = None,
    positive_points: Optional[np.ndarray] = None,
    attempts: int = ATTEMPTS,
    log: Optional[LogFn] = None,
) -> Split:
    """Splits the raster into training windows and validation blocks, spatially separated.

    Args:
        labels: uint8 (H, W) 0/1.
        usable: bool (H, W): valid raster pixels inside the study mask.
        tile, stride: window size and step (stride defaults to the tile).
        val_fraction: target share of the usable area in validation blocks.
        seed: makes the block layout repeatable.
        buffer: gap (rows, cols) between validation blocks and training windows;
            default one tile; reduced (logged) when it leaves no training window.
        block_size: side of the candidate blocks (default: automatic, >= 2 tiles).
        positive_points: (N, 2) (row, col) of positive features, to count them per side.

    Raises:
        DataError: tile larger than the raster, no valid pixel, or no split possible.
    """
    log = log or _noop
    tile = (int(tile[0]), int(tile[1]))
    stride = (int(stride[0]), int(stride[1])) if stride is not None else tile
    _check_inputs(labels, usable, tile)
    h, w = labels.shape
    pos = labels.astype(bool) & usable
    points = np.zeros((0, 2)) if positive_points is None else np.asarray(positive_points, dtype=float).reshape(-1, 2)
    usable_s, pos_s = _integral(usable), _integral(pos)
    windows = [(r, c, r + tile[0], c + tile[1]) for r, c in iter_windows(h, w, tile, stride)]
    windows = [b for b in windows if _box_sum(usable_s, b) > 0]
    blocks = block_grid(h, w, tile, int(usable.sum()), val_fraction, block_size)
    target = val_fraction * float(usable.sum())
    best: Optional[_Layout] = None
    best_buf = tile
    for buf in _buffers(tile, buffer):
        for k in range(attempts):
            chosen = _choose_blocks(blocks, usable_s, target, np.random.default_rng([seed, k]))
            lay = _layout(chosen, windows, tile, buf, usable, usable_s, pos, points)
            if best is None or lay.key(val_fraction) > best.key(val_fraction):
                best, best_buf = lay, buf
        if best is not None and best.key(val_fraction)[0]:
            break
        log(f"warning: a buffer of {buf[0]} x {buf[1]} px leaves no training window; trying a narrower one")
    assert best is not None
    if not best.key(val_fraction)[0]:
        side = max(MIN_TILE, min(h, w) // 4)
        raise DataError(
            f"the raster ({h} x {w} pixels) has no room for spatially separate training and validation "
            f"tiles of {tile[0]} x {tile[1]}; use a smaller tile, e.g. --tile_size {side} {side}"
        )
    return _finish(best, best_buf, tile, stride, pos_s, val_fraction, log)


def _finish(lay: _Layout, buffer: Pair, tile: Pair, stride: Pair, pos_s: np.ndarray, val_fraction: float,
            log: LogFn) -> Split:
    """Weights, summary and the plain-words report of the chosen layout."""
    weights = positive_weights(lay.train, pos_s)
    n_pos_windows = sum(1 for b in lay.train if _box_sum(pos_s, b) > 0)
    summary = dict(lay.stats)
    summary.update({
        "tile": list(tile), "stride": list(stride), "buffer": list(buffer),
        "val_fraction_target": float(val_fraction), "val_blocks": len(lay.blocks),
        "train_windows": len(lay.train), "val_windows": len(lay.val),
        "train_windows_with_positives": int(n_pos_windows),
    })
    log(
        f"validation split: {len(lay.blocks)} block(s) = {100 * summary['val_area_fraction']:.1f}% of the usable "
        f"area (target {100 * val_fraction:.0f}%), buffer {buffer[0]} x {buffer[1]} px; "
        f"{len(lay.train)} training window(s) ({n_pos_windows} with positives), {len(lay.val)} validation window(s); "
        f"positive pixels: {summary['train_positive_pixels']} training / {summary['val_positive_pixels']} validation; "
        f"positive features: {summary['train_positive_points']} training / {summary['val_positive_points']} validation"
    )
    if summary["val_positive_pixels"] == 0:
        log(
            "warning: NO positive label falls in the validation blocks, so validation cannot measure how well "
            "positives are found (AUC undefined); add labels, raise --val_fraction or use a smaller --tile_size"
        )
    if summary["train_positive_pixels"] == 0:
        log("warning: NO positive label falls in the training windows; the model cannot learn positives")
    return Split(tile, stride, buffer, lay.blocks, lay.train, lay.val, weights, summary)


def write_blocks_gpkg(blocks: Sequence[Box], info: RasterInfo, path: str | Path) -> Path:
    """Writes the validation blocks as polygons (raster CRS) to a GeoPackage, atomically.

    The file appears under its name only when complete and read back (files.write_atomic).
    """
    import geopandas as gpd
    from shapely.geometry import box

    path = Path(path)
    maps = [box_to_map(b, info) for b in blocks]
    gdf = gpd.GeoDataFrame(
        {
            "block": list(range(1, len(blocks) + 1)),
            "row0": [int(b[0]) for b in blocks], "col0": [int(b[1]) for b in blocks],
            "row1": [int(b[2]) for b in blocks], "col1": [int(b[3]) for b in blocks],
        },
        geometry=[box(*m) for m in maps],
        crs=info.crs_wkt or None,
    )
    def write(tmp: Path) -> None:
        try:
            gdf.to_file(tmp, driver="GPKG", layer="validation_blocks")
        except Exception as exc:  # noqa: BLE001 - fiona/GDAL raise RuntimeError & co. for a failed write
            raise WriteFailed(str(exc)) from None

    def verify(tmp: Path) -> None:
        try:
            n = len(gpd.read_file(tmp, layer="validation_blocks"))
        except Exception as exc:  # noqa: BLE001 - unreadable means not whole
            raise WriteFailed(f"the written GeoPackage cannot be read back ({exc})") from None
        if n != len(gdf):
            raise WriteFailed(f"the written GeoPackage holds {n} of {len(gdf)} blocks")

    write_atomic(path, write, verify=verify)
    return path


def _paint_wrapped(shape: Pair, boxes: Sequence[Box], grow: Pair) -> np.ndarray:
    """bool (H, W) of boxes grown by ``grow``; columns wrap around (longitude is periodic)."""
    h, w = shape
    out = np.zeros(shape, dtype=bool)
    for r0, c0, r1, c1 in boxes:
        rows = slice(max(r0 - grow[0], 0), min(r1 + grow[0], h))
        cols = np.arange(c0 - grow[1], c1 + grow[1]) % w
        out[rows, cols] = True
    return out


def make_globe_split(
    labels: np.ndarray,
    usable: np.ndarray,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    buffer: Optional[Pair] = None,
    positive_points: Optional[np.ndarray] = None,
    attempts: int = ATTEMPTS,
    log: Optional[LogFn] = None,
) -> Split:
    """Split for spherical models that see the whole globe as ONE window.

    Validation blocks become pixel masks instead of windows: ``train_mask`` excludes the
    blocks grown by ``buffer`` (default 1/16 of the grid; columns wrap around),
    ``val_mask`` is the blocks themselves. Both window lists hold the whole raster.
    """
    log = log or _noop
    h, w = labels.shape
    if labels.shape != usable.shape or not usable.any():
        raise DataError("no valid pixel in the raster (inside the study mask); check nodata and --mask_path")
    buf = buffer if buffer is not None else (max(1, h // 16), max(1, w // 16))
    pos = labels.astype(bool) & usable
    points = np.zeros((0, 2)) if positive_points is None else np.asarray(positive_points, dtype=float).reshape(-1, 2)
    usable_s = _integral(usable)
    side = max(4, int(math.sqrt(float(usable.sum()) * val_fraction / BLOCKS_TARGET)))
    blocks = block_grid(h, w, (max(2, side // 2), max(2, side // 2)), int(usable.sum()), val_fraction, side)
    target = val_fraction * float(usable.sum())
    best: Optional[Tuple[Tuple[bool, int], List[Box], np.ndarray, np.ndarray]] = None
    for k in range(attempts):
        chosen = _choose_blocks(blocks, usable_s, target, np.random.default_rng([seed, k]))
        val_mask = _paint_wrapped((h, w), chosen, (0, 0)) & usable
        train_mask = ~_paint_wrapped((h, w), chosen, buf) & usable
        both = bool((pos & val_mask).any() and (pos & train_mask).any()) and bool(train_mask.any())
        key = (both, -int(round(abs(val_mask.sum() / usable.sum() - val_fraction) / 0.05)))
        if best is None or key > best[0]:
            best = (key, chosen, train_mask, val_mask)
    assert best is not None
    _, chosen, train_mask, val_mask = best
    if not train_mask.any():
        raise DataError("no training pixel is left outside the validation blocks; lower --val_fraction")
    rows, cols = points[:, 0].astype(int), points[:, 1].astype(int)
    total = float(usable.sum())
    stats = {
        "val_positive_pixels": int((pos & val_mask).sum()),
        "train_positive_pixels": int((pos & train_mask).sum()),
        "val_positive_points": int(val_mask[rows, cols].sum()) if len(points) else 0,
        "train_positive_points": int(train_mask[rows, cols].sum()) if len(points) else 0,
        "val_area_fraction": float(val_mask.sum() / total),
        "train_area_fraction": float(train_mask.sum() / total),
    }
    whole = [(0, 0, h, w)]
    lay = _Layout(chosen, whole, whole, stats)
    split = _finish(lay, buf, (h, w), (h, w), _integral(pos), val_fraction, log)
    split.train_mask, split.val_mask = train_mask, val_mask
    return split

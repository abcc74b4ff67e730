"""Spatial validation split and positive-aware sampling of training windows.

The raster is cut into a grid of blocks (each at least two tiles wide); some blocks
become validation blocks (about ``val_fraction`` of the usable area). Training windows
must stay out of every validation block grown by a buffer at least a tile wide, so no
pixel of a validation block lies inside any training tile and neighbouring pixels do not
leak either. Validation windows tile each validation block from the inside.

Several seeded block layouts are tried; the one that puts positives on both sides (and
comes closest to ``val_fraction``) wins, so tiny label sets still get a usable split.
When the buffer leaves no training window, it is reduced (logged) before giving up.

Local models (``masked``: a per-pixel network sees no neighbour) need no tile-wide buffer:
their buffer is their context plus a margin, and training windows may reach into it and
into the blocks, whose pixels are masked out of training (``Split.train_mask``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .config import DEFAULT_TILE
from .errors import DataError
from .events import LogFn
from .files import WriteFailed, write_atomic
from .raster import PixelBox, RasterInfo, box_to_map, coverage_mask, iter_windows

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
        train_mask: bool (H, W) of the pixels that train when the training windows may reach
            into the buffer and the blocks (``make_split(masked=True)``); None: every usable
            pixel of a training window trains.
    """

    tile: Pair
    stride: Pair
    buffer: Pair
    val_blocks: List[PixelBox]
    train_windows: List[PixelBox]
    val_windows: List[PixelBox]
    train_weights: List[float]
    summary: Dict[str, Any] = field(default_factory=dict)
    train_mask: Optional[np.ndarray] = None

    def val_blocks_map(self, info: RasterInfo) -> List[Tuple[float, float, float, float]]:
        """Validation blocks as map boxes (left, bottom, right, top) in the raster's CRS."""
        return [box_to_map(b, info) for b in self.val_blocks]


def _fits_split(height: int, width: int, tile: Pair) -> bool:
    """Room for a validation block, a one-tile buffer and training tiles along one axis."""
    return height >= 3 * tile[0] or width >= 3 * tile[1]


def resolve_tile(tile_size: Optional[Sequence[int]], height: int, width: int, log: Optional[LogFn] = None,
                 preferred: Optional[int] = None) -> Pair:
    """The tile (rows, cols): the one given, else ``preferred`` (the model's automatic tile,
    default DEFAULT_TILE) or the raster size when smaller.

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
    side = int(preferred or DEFAULT_TILE)
    tile = (min(side, height), min(side, width))
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


def _box_sum(s: np.ndarray, b: PixelBox) -> int:
    r0, c0, r1, c1 = b
    return int(s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0])


def _edges(size: int, block: int) -> List[int]:
    """Block edges along one axis; every block is at least ``block`` long (or the whole axis)."""
    n = max(1, size // block)
    return [int(round(v)) for v in np.linspace(0, size, n + 1)]


def block_grid(height: int, width: int, tile: Pair, usable_pixels: int, val_fraction: float,
               block_size: Optional[int] = None) -> List[PixelBox]:
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


def _overlaps(a: PixelBox, b: PixelBox) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _grow(b: PixelBox, buffer: Pair) -> PixelBox:
    return (b[0] - buffer[0], b[1] - buffer[1], b[2] + buffer[0], b[3] + buffer[1])


def _choose_blocks(blocks: List[PixelBox], usable_s: np.ndarray, target: float, rng: np.random.Generator) -> List[PixelBox]:
    """Adds blocks in random order while that brings the validation area closer to target (globe split)."""
    chosen: List[PixelBox] = []
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


# ----------------------------------------------------------------------------- balancing


def point_pixels(points: Optional[np.ndarray], usable: np.ndarray) -> np.ndarray:
    """Integer (row, col) of the positive features that lie on a usable pixel, (N, 2)."""
    if points is None or len(points) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    rc = np.floor(np.asarray(points, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
    h, w = usable.shape
    inside = (rc[:, 0] >= 0) & (rc[:, 0] < h) & (rc[:, 1] >= 0) & (rc[:, 1] < w)
    rc = rc[inside]
    return rc[usable[rc[:, 0], rc[:, 1]]]


def block_counts(blocks: Sequence[PixelBox], usable_s: np.ndarray, rc: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(positive features, usable pixels) inside each block."""
    area = np.array([_box_sum(usable_s, b) for b in blocks], dtype=np.float64)
    pos = np.array([int(((rc[:, 0] >= b[0]) & (rc[:, 0] < b[2]) & (rc[:, 1] >= b[1]) & (rc[:, 1] < b[3])).sum())
                    for b in blocks], dtype=np.float64)
    return pos, area


class _Balance:
    """The cost of a grouping: squared relative misses of each group's share of positives and area.

    Groups left without usable area (or without positives, when there are enough to go
    round) cost EMPTY each, so the search never prefers them.
    """

    EMPTY = 1e3
    POSITIVE_WEIGHT = 2.0  # deposits matter more than area: they are what a fold scores

    def __init__(self, pos: np.ndarray, area: np.ndarray, shares: Sequence[float]) -> None:
        self.pos, self.area = pos, area
        self.shares = np.asarray(shares, dtype=np.float64)
        self.total_pos, self.total_area = float(pos.sum()), max(float(area.sum()), 1.0)
        self.need_pos = self.total_pos >= len(self.shares)
        self.wp = self.POSITIVE_WEIGHT if self.total_pos > 0 else 0.0

    def group_cost(self, g: np.ndarray, p: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Cost of group(s) ``g`` holding ``p`` positives and ``a`` area (vectorised)."""
        s = self.shares[g]
        cost = ((a / self.total_area - s) / s) ** 2
        if self.wp:
            cost = cost + self.wp * ((p / self.total_pos - s) / s) ** 2
            if self.need_pos:
                cost = cost + self.EMPTY * (p <= 0)
        return cost + self.EMPTY * (a <= 0)

    def cost(self, group: np.ndarray) -> float:
        g = np.arange(len(self.shares))
        p = np.bincount(group, weights=self.pos, minlength=len(g))
        a = np.bincount(group, weights=self.area, minlength=len(g))
        return float(self.group_cost(g, p, a).sum())


def _greedy(bal: _Balance, order: np.ndarray) -> np.ndarray:
    """Largest first: each block goes to the group whose cost it lowers most."""
    n_groups = len(bal.shares)
    g = np.arange(n_groups)
    p, a = np.zeros(n_groups), np.zeros(n_groups)
    group = np.zeros(len(bal.pos), dtype=np.int64)
    for i in order:
        before = bal.group_cost(g, p, a)
        after = bal.group_cost(g, p + bal.pos[i], a + bal.area[i])
        best = int(np.argmin(after - before))
        group[i] = best
        p[best] += bal.pos[i]
        a[best] += bal.area[i]
    return group


def _improve(bal: _Balance, group: np.ndarray, rng: np.random.Generator, sweeps: int = 30) -> np.ndarray:
    """Local search: single moves and pairwise swaps while they lower the cost."""
    n_groups = len(bal.shares)
    gi = np.arange(n_groups)
    p = np.bincount(group, weights=bal.pos, minlength=n_groups)
    a = np.bincount(group, weights=bal.area, minlength=n_groups)
    for _ in range(sweeps):
        improved = False
        for i in rng.permutation(len(group)):
            src = group[i]
            # move i to every other group
            base = bal.group_cost(gi, p, a)
            left = bal.group_cost(np.array([src]), p[src:src + 1] - bal.pos[i], a[src:src + 1] - bal.area[i])
            d_src = left[0] - base[src]
            d_dst = bal.group_cost(gi, p + bal.pos[i], a + bal.area[i]) - base
            d_dst[src] = np.inf
            dst = int(np.argmin(d_dst))
            if d_src + d_dst[dst] < -1e-12:
                group[i] = dst
                p[src] -= bal.pos[i]; a[src] -= bal.area[i]  # noqa: E702
                p[dst] += bal.pos[i]; a[dst] += bal.area[i]  # noqa: E702
                improved = True
                continue
            # swap i with every block j of another group
            others = np.nonzero(group != src)[0]
            if not len(others):
                continue
            gj = group[others]
            dp, da = bal.pos[others] - bal.pos[i], bal.area[others] - bal.area[i]
            delta = (bal.group_cost(np.full(len(others), src), p[src] + dp, a[src] + da) - base[src]
                     + bal.group_cost(gj, p[gj] - dp, a[gj] - da) - base[gj])
            k = int(np.argmin(delta))
            if delta[k] < -1e-12:
                j, dst = int(others[k]), int(gj[k])
                group[i], group[j] = dst, src
                p[src] += dp[k]; a[src] += da[k]  # noqa: E702
                p[dst] -= dp[k]; a[dst] -= da[k]  # noqa: E702
                improved = True
        if not improved:
            break
    return group


def balance_blocks(pos: np.ndarray, area: np.ndarray, shares: Sequence[float], rng: np.random.Generator,
                   restarts: int = 4, shuffle: bool = False) -> np.ndarray:
    """Assigns blocks to groups so each holds about its share of the positives AND of the area.

    Why a search: deposits cluster, so a random or area-only choice of blocks can leave a
    group with almost none of them. Greedy largest-first (blocks with most positives, then
    most area, placed where they lower the cost most), then moves and swaps while the cost
    falls; ``restarts`` seeded tie-breaks, the cheapest result wins. ``shuffle`` places the
    blocks in random order instead (other, equally balanced layouts for callers that rank
    layouts by more than balance). Deterministic for a given ``rng`` state.

    Args:
        pos, area: positive features and usable pixels per block.
        shares: target share of each group (sums to 1).

    Returns:
        int array: the group of each block.
    """
    bal = _Balance(np.asarray(pos, dtype=np.float64), np.asarray(area, dtype=np.float64), shares)
    best, best_cost = None, np.inf
    for _ in range(max(1, restarts)):
        jitter = rng.random(len(pos))
        order = np.argsort(jitter) if shuffle else np.lexsort((jitter, -bal.area, -bal.pos))
        group = _improve(bal, _greedy(bal, order), rng)
        cost = bal.cost(group)
        if cost < best_cost - 1e-12:
            best, best_cost = group.copy(), cost
    assert best is not None
    return best


def _val_windows(blocks: List[PixelBox], tile: Pair, usable_s: np.ndarray) -> List[PixelBox]:
    """Tile-sized windows inside each validation block (blocks are at least a tile wide)."""
    out: List[PixelBox] = []
    for r0, c0, r1, c1 in blocks:
        for r, c in iter_windows(r1 - r0, c1 - c0, tile, tile):
            w = (r0 + r, c0 + c, r0 + r + tile[0], c0 + c + tile[1])
            if w[2] <= r1 and w[3] <= c1 and _box_sum(usable_s, w) > 0:
                out.append(w)
    return out


@dataclass
class _Layout:
    blocks: List[PixelBox]
    train: List[PixelBox]
    val: List[PixelBox]
    stats: Dict[str, Any]
    train_mask: Optional[np.ndarray] = None

    def key(self, target_fraction: float, n_features: int, by_points: bool) -> Tuple[Any, ...]:
        """Ranks layouts: feasible; positives on both sides (else at least in training); features
        balanced; area near the target; most training features (fewest lost in the buffers);
        then the closest area, the closest share of features, the most training area."""
        s = self.stats
        feasible = bool(self.train) and bool(self.val)
        both = s["train_positive_pixels"] > 0 and s["val_positive_pixels"] > 0
        trains = s["train_positive_pixels"] > 0
        in_val = s["val_positive_points"] if by_points else s["val_positive_pixels"]
        in_train = s["train_positive_points"] if by_points else s["train_positive_pixels"]
        balanced = feature_balance_ok(in_val, n_features, target_fraction)
        area_miss = abs(s["val_area_fraction"] - target_fraction)
        area_ok = area_miss <= max(0.05, 0.25 * target_fraction)
        feature_miss = abs(in_val / max(n_features, 1) - target_fraction)
        return (feasible, both, trains, balanced, area_ok, in_train, -area_miss, -feature_miss,
                s["train_area_fraction"])


MIN_BALANCED_FEATURES = 5
"""From this many positive features on, validation must hold 0.5x..1.5x val_fraction of them."""


def feature_balance_ok(in_val: int, n_features: int, fraction: float) -> bool:
    """Whether ``in_val`` of ``n_features`` lies within 0.5x..1.5x ``fraction`` (always true for few)."""
    if n_features < MIN_BALANCED_FEATURES:
        return True
    return 0.5 * fraction * n_features <= in_val <= 1.5 * fraction * n_features


def _layout(blocks: List[PixelBox], windows: List[PixelBox], tile: Pair, buffer: Pair, usable: np.ndarray,
            usable_s: np.ndarray, pos: np.ndarray, points: np.ndarray, masked: bool = False) -> _Layout:
    """Training/validation windows and their positive counts for one choice of blocks.

    ``masked``: training windows are those holding a usable pixel outside the grown blocks, and
    only those pixels train (``_Layout.train_mask``); else windows stay out of the grown blocks.
    """
    train_mask: Optional[np.ndarray] = None
    if masked:
        train_mask = usable & ~buffer_mask(usable.shape, blocks, buffer)
        train_s = _integral(train_mask)
        train = [w for w in windows if _box_sum(train_s, w) > 0]
        in_train = train_mask
    else:
        grown = [_grow(b, buffer) for b in blocks]
        train = [w for w in windows if not any(_overlaps(w, g) for g in grown)]
        in_train = coverage_mask(usable.shape, train, usable)
    val = _val_windows(blocks, tile, usable_s)
    total = max(int(usable.sum()), 1)
    in_val = coverage_mask(usable.shape, blocks, usable)
    rows, cols = points[:, 0].astype(int), points[:, 1].astype(int)
    stats = {
        "val_positive_pixels": int((pos & in_val).sum()),
        "train_positive_pixels": int((pos & in_train).sum()),
        "val_positive_points": int(in_val[rows, cols].sum()) if len(points) else 0,
        "train_positive_points": int(in_train[rows, cols].sum()) if len(points) else 0,
        "val_area_fraction": float(in_val.sum() / total),
        "train_area_fraction": float(in_train.sum() / total),
    }
    return _Layout(blocks, train, val, stats, train_mask)


def positive_weights(windows: Sequence[PixelBox], pos_s: np.ndarray, share: float = POSITIVE_SHARE) -> List[float]:
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
    masked: bool = False,
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
        masked: training windows may reach into the buffer and the blocks, whose pixels are
            masked out (``Split.train_mask``): for local models, with a buffer of their context.

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
    by_points = positive_points is not None
    features = point_pixels(points, usable) if by_points else np.argwhere(pos)
    usable_s, pos_s = _integral(usable), _integral(pos)
    windows = [(r, c, r + tile[0], c + tile[1]) for r, c in iter_windows(h, w, tile, stride)]
    windows = [b for b in windows if _box_sum(usable_s, b) > 0]
    shares = (val_fraction, 1.0 - val_fraction)

    def rank(lay: _Layout) -> Tuple[Any, ...]:
        return lay.key(val_fraction, len(features), by_points)

    n_groups = max(2, int(round(1.0 / val_fraction)))

    best: Optional[_Layout] = None
    best_buf = tile
    for buf in _buffers(tile, buffer):
        for blocks in _split_grids(h, w, tile, int(usable.sum()), val_fraction, block_size):
            n_pos, n_area = block_counts(blocks, usable_s, features)
            for choice in _split_choices(n_pos, n_area, shares, n_groups, seed, attempts):
                chosen = sorted(b for b, a, c in zip(blocks, n_area, choice) if c and a > 0)
                lay = _layout(chosen, windows, tile, buf, usable, usable_s, pos, points, masked)
                if best is None or rank(lay) > rank(best):
                    best, best_buf = lay, buf
            if all(rank(best)[:5]):  # feasible, positives on both sides, features and area balanced
                break
        if best is not None and rank(best)[0]:
            break
        log(f"warning: a buffer of {buf[0]} x {buf[1]} px leaves no training window; trying a narrower one")
    assert best is not None
    if not rank(best)[0]:
        side = max(MIN_TILE, min(h, w) // 4)
        raise DataError(
            f"the raster ({h} x {w} pixels) has no room for spatially separate training and validation "
            f"tiles of {tile[0]} x {tile[1]}; use a smaller tile, e.g. --tile_size {side} {side}"
        )
    train_pos_s = pos_s if best.train_mask is None else _integral(pos & best.train_mask)
    split = _finish(best, best_buf, tile, stride, train_pos_s, val_fraction, log)
    _report_feature_balance(split.summary, len(features), val_fraction, by_points, log)
    return split


def _split_choices(n_pos: np.ndarray, n_area: np.ndarray, shares: Tuple[float, float], n_groups: int, seed: int,
                   attempts: int) -> Iterator[np.ndarray]:
    """Candidate validation sets (bool per block), all balanced in features and area.

    Two kinds, alternating seeds: the validation group of a two-way split at exactly
    ``val_fraction``, and every group of a balanced split into ``n_groups`` ~ 1 / val_fraction
    parts (k-fold style), which offers several equally balanced but different layouts to
    choose from (e.g. one that loses fewer deposits to the buffers).
    """
    for a in range(max(1, attempts // 2)):
        rng = np.random.default_rng([seed, a])
        yield balance_blocks(n_pos, n_area, shares, rng, restarts=1, shuffle=a > 0) == 0
        groups = balance_blocks(n_pos, n_area, [1.0 / n_groups] * n_groups, rng, restarts=1, shuffle=a > 0)
        for g in range(n_groups):
            yield groups == g


def _split_grids(height: int, width: int, tile: Pair, usable_pixels: int, val_fraction: float,
                 block_size: Optional[int]) -> Iterator[List[PixelBox]]:
    """Block grids to try: the automatic one, then ever smaller blocks (down to a tile).

    Smaller blocks let the balance reach clustered deposits; they are tried only when the
    bigger ones cannot balance them (bigger blocks lose less area to the buffers).
    """
    first = block_grid(height, width, tile, usable_pixels, val_fraction, block_size)
    yield first
    if block_size is not None:
        return
    bh, bw = first[0][2] - first[0][0], first[0][3] - first[0][1]
    while bh > tile[0] or bw > tile[1]:
        bh, bw = max(tile[0], bh // 2), max(tile[1], bw // 2)
        re, ce = _edges(height, bh), _edges(width, bw)
        yield [(re[i], ce[j], re[i + 1], ce[j + 1]) for i in range(len(re) - 1) for j in range(len(ce) - 1)]


def _report_feature_balance(summary: Dict[str, Any], n_features: int, val_fraction: float, by_points: bool,
                            log: LogFn) -> None:
    """Says how the positive features were shared, and warns when the 0.5x..1.5x target was missed."""
    what = "positive features" if by_points else "positive pixels"
    in_val = summary["val_positive_points"] if by_points else summary["val_positive_pixels"]
    summary["positive_features"] = int(n_features)
    summary["val_feature_fraction"] = float(in_val / n_features) if n_features else None
    if n_features < MIN_BALANCED_FEATURES:
        return
    lo, hi = 0.5 * val_fraction * n_features, 1.5 * val_fraction * n_features
    if feature_balance_ok(in_val, n_features, val_fraction):
        log(f"balance: validation holds {in_val} of {n_features} {what} (target {lo:.1f} to {hi:.1f}: "
            f"0.5x to 1.5x --val_fraction {val_fraction:g})")
    else:
        log(f"warning: validation holds {in_val} of {n_features} {what}, outside the target {lo:.1f} to {hi:.1f} "
            f"(0.5x to 1.5x --val_fraction {val_fraction:g}): the {what} are too clustered for the block grid; "
            "validation figures will be noisier (a smaller --tile_size allows smaller blocks)")


def _finish(lay: _Layout, buffer: Pair, tile: Pair, stride: Pair, pos_s: np.ndarray, val_fraction: float,
            log: LogFn) -> Split:
    """Weights, summary and the plain-words report of the chosen layout (``pos_s``: the training positives)."""
    weights = positive_weights(lay.train, pos_s)
    n_pos_windows = sum(1 for b in lay.train if _box_sum(pos_s, b) > 0)
    summary = dict(lay.stats)
    summary.update({
        "tile": list(tile), "stride": list(stride), "buffer": list(buffer),
        "val_fraction_target": float(val_fraction), "val_blocks": len(lay.blocks),
        "train_windows": len(lay.train), "val_windows": len(lay.val),
        "train_windows_with_positives": int(n_pos_windows), "masked": lay.train_mask is not None,
    })
    log(
        f"validation split: {len(lay.blocks)} block(s) = {100 * summary['val_area_fraction']:.1f}% of the usable "
        f"area (target {100 * val_fraction:.0f}%), buffer {buffer[0]} x {buffer[1]} px"
        f"{' (training windows reach into it, its pixels and the blocks masked out)' if lay.train_mask is not None else ''}; "
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
    return Split(tile, stride, buffer, lay.blocks, lay.train, lay.val, weights, summary, lay.train_mask)


# ----------------------------------------------------------------------------- cross-validation folds

BLOCKS_PER_FOLD = 4
"""The automatic block side gives about this many blocks per fold (more blocks balance better,
bigger ones lose less area to the buffers)."""
MIN_BLOCK = 8
"""Smallest block side (pixels) tried when deposits are too clustered for bigger blocks."""
BUFFER_FRACTION = 0.125
"""Default buffer: this share of the block side (so the area lost to buffers stays about the
same share of the raster whatever its size: about a third of the training area at 5 folds)."""


@dataclass
class Folds:
    """k spatial folds: a grid of blocks, each block in one fold, and a buffer.

    Every pixel lies in exactly one block and so in exactly one test fold. Fold ``f`` is
    trained on the usable pixels outside its test blocks grown by ``buffer``.

    Attributes:
        k: number of folds.
        blocks: (row0, col0, row1, col1) boxes tiling the raster.
        fold: the fold (0-based) of each block.
        buffer: gap (rows, cols) between a fold's test blocks and its training pixels.
        block_size: side of the blocks (rows, cols); edge blocks may be longer.
        summary: per-fold counts and the layout, JSON-able.
    """

    k: int
    blocks: List[PixelBox]
    fold: List[int]
    buffer: Pair
    block_size: Pair
    summary: Dict[str, Any] = field(default_factory=dict)

    def test_blocks(self, f: int) -> List[PixelBox]:
        """The blocks of fold ``f``."""
        return [b for b, g in zip(self.blocks, self.fold) if g == f]

    def fold_map(self, shape: Pair) -> np.ndarray:
        """int8 (H, W): the fold of every pixel."""
        out = np.full(shape, -1, dtype=np.int8)
        for (r0, c0, r1, c1), g in zip(self.blocks, self.fold):
            out[r0:r1, c0:c1] = g
        return out

    def test_mask(self, f: int, usable: np.ndarray) -> np.ndarray:
        """Usable pixels of fold ``f``'s test blocks."""
        return coverage_mask(usable.shape, self.test_blocks(f), usable)

    def train_mask(self, f: int, usable: np.ndarray) -> np.ndarray:
        """Usable pixels that may train fold ``f``: outside its test blocks grown by the buffer."""
        grown = [_grow(b, self.buffer) for b in self.test_blocks(f)]
        return usable & ~coverage_mask(usable.shape, grown)


def _square_grid(height: int, width: int, side: int) -> List[PixelBox]:
    re, ce = _edges(height, side), _edges(width, side)
    return [(re[i], ce[j], re[i + 1], ce[j + 1]) for i in range(len(re) - 1) for j in range(len(ce) - 1)]


def _fold_sides(usable_pixels: int, k: int, block_size: Optional[int]) -> List[int]:
    """Block sides to try, biggest first: the one given, else automatic then halved down to MIN_BLOCK."""
    if block_size is not None:
        return [int(block_size)]
    side = max(MIN_BLOCK, int(math.sqrt(max(usable_pixels, 1) / (BLOCKS_PER_FOLD * k))))
    sides = [side]
    while sides[-1] // 2 >= MIN_BLOCK:
        sides.append(sides[-1] // 2)
    return sides


def _fold_balance_ok(pos: np.ndarray, area: np.ndarray, k: int) -> bool:
    """Each fold within 0.5x..1.5x of 1/k of the area, and of the positives when there are enough."""
    lo, hi = 0.5 / k, 1.5 / k
    share_a = area / max(area.sum(), 1.0)
    ok = bool(((share_a >= lo) & (share_a <= hi)).all())
    if pos.sum() >= MIN_BALANCED_FEATURES * k / 2:
        share_p = pos / pos.sum()
        ok = ok and bool(((share_p >= lo) & (share_p <= hi)).all())
    return ok


def make_folds(
    labels: np.ndarray,
    usable: np.ndarray,
    k: int,
    *,
    positive_points: Optional[np.ndarray] = None,
    seed: int = 0,
    block_size: Optional[int] = None,
    buffer: Optional[int] = None,
    log: Optional[LogFn] = None,
) -> Folds:
    """Cuts the raster into k spatial folds balanced in positive features and usable area.

    Blocks get the automatic side (about BLOCKS_PER_FOLD blocks per fold) or ``block_size``;
    when the deposits are too clustered to share 0.5x..1.5x of 1/k per fold, ever smaller
    blocks are tried (logged), and the best balance found is kept with a warning.

    Args:
        labels: uint8 (H, W) 0/1 (positive pixels count when ``positive_points`` is None).
        usable: bool (H, W): valid raster pixels inside the study mask.
        k: number of folds (>= 2).
        positive_points: (N, 2) (row, col) of the positive features: they are what is balanced.
        block_size: block side in pixels (default automatic).
        buffer: gap in pixels between a fold's test blocks and its training pixels
            (default BUFFER_FRACTION of the block side).

    Raises:
        ConfigError: k < 2.
        DataError: no usable pixel or no positive; k larger than the blocks or the positive
            features allow (the message names the largest possible k).
    """
    from .errors import ConfigError

    log = log or _noop
    if k < 2:
        raise ConfigError(f"--folds must be at least 2, got {k}")
    if labels.shape != usable.shape:
        raise DataError(f"labels {labels.shape} and valid mask {usable.shape} differ in shape")
    if not usable.any():
        raise DataError("no valid pixel in the raster (inside the study mask); check nodata and --mask_path")
    h, w = usable.shape
    pos_px = labels.astype(bool) & usable
    features = point_pixels(positive_points, usable) if positive_points is not None else np.argwhere(pos_px)
    what = "positive feature(s)" if positive_points is not None else "positive pixel(s)"
    n_feat = len(features)
    if n_feat == 0:
        raise DataError("no positive label on a usable pixel: cross-validation needs positives "
                        "(check the labels, --label_column / --positive_values and the mask)")
    usable_s = _integral(usable)
    tried: List[Tuple[float, int, List[PixelBox], np.ndarray, np.ndarray, np.ndarray]] = []
    largest_k = 0
    for side in _fold_sides(int(usable.sum()), k, block_size):
        blocks = _square_grid(h, w, side)
        pos, area = block_counts(blocks, usable_s, features)
        fits = min(int((area > 0).sum()), int((pos > 0).sum()))
        largest_k = max(largest_k, fits)
        if fits < k:
            continue
        group = balance_blocks(pos, area, [1.0 / k] * k, np.random.default_rng(seed),
                               restarts=4 if len(blocks) <= 400 else 1)
        fold_pos = np.bincount(group, weights=pos, minlength=k)
        fold_area = np.bincount(group, weights=area, minlength=k)
        cost = _Balance(pos, area, [1.0 / k] * k).cost(group)
        tried.append((cost, side, blocks, group, fold_pos, fold_area))
        if _fold_balance_ok(fold_pos, fold_area, k):
            break
        log(f"note: blocks of {side} px cannot share the {what} evenly over {k} folds; trying smaller blocks")
    if not tried:
        if largest_k < 2:
            raise DataError(f"cross-validation needs positives in at least 2 separate blocks; the {n_feat} {what} "
                            "fall in a single block (add labels or give a smaller --block_size)")
        raise DataError(f"--folds {k} is more than this data allows: the {n_feat} {what} and the usable area fill "
                        f"at most {largest_k} separate blocks; the largest possible is --folds {largest_k}")
    ok = [t for t in tried if _fold_balance_ok(t[4], t[5], k)]
    cost, side, blocks, group, fold_pos, fold_area = ok[0] if ok else min(tried, key=lambda t: t[0])
    if (fold_pos <= 0).any():
        empty = [int(f) + 1 for f in np.nonzero(fold_pos <= 0)[0]]
        raise DataError(f"fold(s) {empty} would hold no positive; the largest possible is --folds "
                        f"{max(2, min(k - len(empty), largest_k))}")
    buf = int(buffer) if buffer is not None else max(1, int(round(side * BUFFER_FRACTION)))
    folds = Folds(k, blocks, [int(g) for g in group], (buf, buf), (side, side))
    folds.summary = _fold_summary(folds, usable, features, fold_pos, fold_area)
    _log_folds(folds, what, n_feat, ok != [], log)
    return folds


def _fold_summary(folds: Folds, usable: np.ndarray, features: np.ndarray, fold_pos: np.ndarray,
                  fold_area: np.ndarray) -> Dict[str, Any]:
    total_area = max(float(fold_area.sum()), 1.0)
    per_fold = []
    for f in range(folds.k):
        train = folds.train_mask(f, usable)
        n_train_feat = int(train[features[:, 0], features[:, 1]].sum()) if len(features) else 0
        per_fold.append({
            "fold": f + 1, "blocks": len(folds.test_blocks(f)),
            "test_positive_features": int(fold_pos[f]), "test_pixels": int(fold_area[f]),
            "test_area_fraction": float(fold_area[f] / total_area),
            "train_positive_features": n_train_feat, "train_pixels": int(train.sum()),
        })
    return {"k": folds.k, "block_size": list(folds.block_size), "buffer": list(folds.buffer),
            "blocks": len(folds.blocks), "positive_features": int(len(features)), "folds": per_fold}


def _log_folds(folds: Folds, what: str, n_feat: int, balanced: bool, log: LogFn) -> None:
    s = folds.summary
    per = s["folds"]
    log(f"cross-validation: {folds.k} folds of {s['blocks']} blocks of {folds.block_size[0]} x {folds.block_size[1]} "
        f"px, buffer {folds.buffer[0]} px; {what} per test fold: "
        + ", ".join(str(p["test_positive_features"]) for p in per)
        + f" (of {n_feat}); area per test fold: " + ", ".join(f"{100 * p['test_area_fraction']:.0f}%" for p in per)
        + "; training pixels per fold: " + ", ".join(str(p["train_pixels"]) for p in per))
    if not balanced:
        log(f"warning: the {what} are too clustered to give every fold 0.5x to 1.5x of its share even with "
            f"blocks of {folds.block_size[0]} px; the best balance found is used, so fold scores will be noisier")


def write_blocks_gpkg(blocks: Sequence[PixelBox], info: RasterInfo, path: str | Path, layer: str = "validation_blocks",
                      extra: Optional[Dict[str, Sequence[Any]]] = None) -> Path:
    """Writes blocks as polygons (raster CRS) to a GeoPackage layer, atomically.

    ``extra`` adds columns (one value per block, e.g. the fold of cross-validation blocks).
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
            **{k: list(v) for k, v in (extra or {}).items()},
        },
        geometry=[box(*m) for m in maps],
        crs=info.crs_wkt or None,
    )
    def write(tmp: Path) -> None:
        try:
            gdf.to_file(tmp, driver="GPKG", layer=layer)
        except Exception as exc:  # noqa: BLE001 - fiona/GDAL raise RuntimeError & co. for a failed write
            raise WriteFailed(str(exc)) from None

    def verify(tmp: Path) -> None:
        try:
            n = len(gpd.read_file(tmp, layer=layer))
        except Exception as exc:  # noqa: BLE001 - unreadable means not whole
            raise WriteFailed(f"the written GeoPackage cannot be read back ({exc})") from None
        if n != len(gdf):
            raise WriteFailed(f"the written GeoPackage holds {n} of {len(gdf)} blocks")

    write_atomic(path, write, verify=verify)
    return path


def buffer_mask(shape: Pair, boxes: Sequence[PixelBox], grow: Pair, wrap: bool = False) -> np.ndarray:
    """bool (H, W) of the boxes grown by ``grow`` (rows, cols), clipped at the edges; with ``wrap`` the
    columns wrap around instead (a whole-globe grid: longitude is periodic, so a buffer reaches across
    the antimeridian)."""
    h, w = shape
    out = np.zeros(shape, dtype=bool)
    for r0, c0, r1, c1 in boxes:
        rows = slice(max(r0 - grow[0], 0), min(r1 + grow[0], h))
        if wrap:
            out[rows, np.arange(c0 - grow[1], c1 + grow[1]) % w] = True
        else:
            out[rows, max(c0 - grow[1], 0):min(c1 + grow[1], w)] = True
    return out

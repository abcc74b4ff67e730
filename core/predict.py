"""Sliding-window inference with seamless blending, streamed into a probability GeoTIFF.

Why this shape: evidence stacks can be far larger than memory, and a model sees only a
tile at a time, so near a tile's inner edge its receptive field sees zero padding instead
of real neighbours. We therefore (1) plan overlapping windows row by row ("strips") on
the model's pooling lattice, clipped to the raster, with neighbours sharing a band wide
enough for the model's context, (2) give each window ~0 weight over half the shared band
at its inner edges (full weight up to the raster border, where every window sees the
same padding as one whole-raster window) and accumulate weighted sums, so every pixel
comes from a window that sees all its context: tiled output matches a single window; and
(3) write every row as soon as no later window can touch it. Only one strip of
accumulators (tile height x raster width) is ever in memory, whatever the raster's height.

The output is written to a temporary file beside the requested one and renamed when
complete, so a cancelled or failed run never leaves a half-written map under that name.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import datetime as _dt
import hashlib
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .config import PredictConfig
from .device import autocast_for, resolve_device
from .errors import ConfigError, DataError
from .events import Callbacks, LogFn, ProgressFn, StopFn

NODATA: float = -9999.0
#: Output GeoTIFF block size (rows and columns); GDAL wants a multiple of 16.
BLOCK: int = 256
#: Weight floor inside a window's discarded margin: every pixel lies in some window's
#: trusted interior (weight 1), so this changes a value by < 1e-4 of a difference, yet no
#: pixel can ever end with zero weight (and be lost) whatever the plan.
MARGIN_WEIGHT: float = 1e-4

Reader = Callable[[int, int, int, int], Tuple[np.ndarray, np.ndarray]]
#: Maps a batch of raw windows (B, C, h, w) + validity (B, h, w) to probabilities (B, h, w).
Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]
_FALLBACK_BAND_NAME = re.compile(r"^band_\d+$")


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Strip:
    """One row of windows: their top row, their left columns and the rows it finalises.

    After every window of this strip is accumulated, rows ``row0 .. final_end`` can never be
    touched again (the next strip starts at ``final_end``) and are written out.
    """

    row0: int
    cols: Tuple[int, ...]
    final_end: int


def grid_origins(size: int, tile: int, step: int) -> List[int]:
    """Origins 0, step, 2 step, ... until a window reaches the far edge (it may pass it: padded).

    A regular grid keeps every window on the same pooling lattice as a single whole-raster
    window (the step is a multiple of the model's downsampling), which is what makes tiled
    predictions match an untiled one; edge-aligned last windows would break that.
    """
    if size <= tile:
        return [0]
    return [i * step for i in range(math.ceil((size - tile) / step) + 1)]


def plan_strips(height: int, width: int, tile: Tuple[int, int], stride: Tuple[int, int]) -> List[Strip]:
    """Groups the window grid into strips (rows of windows); says which rows each finalises.

    Windows lie on a regular grid from the top-left corner (see ``grid_origins``); the last
    row/column of windows may reach past the raster (read padded, invalid there). A raster
    smaller than a tile gets one window at 0.
    """
    rows = grid_origins(height, tile[0], stride[0])
    cols = tuple(grid_origins(width, tile[1], stride[1]))
    ends = rows[1:] + [height]
    return [Strip(r, cols, min(e, height)) for r, e in zip(rows, ends)]


def stride_for(tile: Tuple[int, int], overlap: float, multiple: int = 1, context: int = 0) -> Tuple[int, int]:
    """Step between windows so that neighbours share about ``overlap`` of a tile.

    Each window discards half the shared band at an inner edge (``context_margin``), so the
    band must also be at least ``2 * context`` wide for the model's receptive field; that
    demand is capped at half a tile (at most 4x the windows of no overlap). The step is
    rounded down to a multiple of ``multiple`` (the model's downsampling factor) so every
    window sits on the same pooling lattice as a single whole-raster window.
    """

    def one(t: int) -> int:
        step = min(int(round(t * (1.0 - overlap))), t - 2 * min(context, t // 4))
        step = max(1, step)
        if multiple > 1 and step > multiple:
            step -= step % multiple
        return step

    return (one(tile[0]), one(tile[1]))


def model_context(arch: str, scale: int, layers: int) -> int:
    """Pixels of real neighbourhood a planar U-Net needs so zero padding does not show.

    The theoretical receptive radius (3x3 convolution pairs at every stage, pooling) is
    capped at two pixels of the deepest stage, ``2 * scale**layers``: farther pixels weigh
    little. Measured with random-weight U-Nets of 2, 3 and 4 stages (tiles 32, 64, 128):
    a margin of this size keeps tiled and single-window outputs within 0.01 of each other,
    while half of it left errors of 0.07-0.09. Other architectures: 0 (overlap only).
    """
    if arch != "unet":
        return 0
    encoder = sum(2 * scale**i for i in range(layers))
    decoder = sum(2 * scale**i for i in range(layers - 1))
    pooling = sum((scale - 1) * scale ** (i - 1) for i in range(1, layers))
    radius = encoder + decoder + pooling
    return min(radius, 2 * scale**layers) if scale > 1 else radius


def context_margin(tile: int, stride: int) -> int:
    """Pixels a window discards at an inner edge: half the overlap.

    A window's model sees zero padding instead of real neighbours near its edges, so its
    output there is untrusted. Each neighbour gives up half of what they share, so the
    trusted interiors still tile the raster (stride <= tile - 2 * margin).
    """
    return max(0, (tile - stride) // 2)


def edge_ramp(n: int, margin: int, ramp: int) -> np.ndarray:
    """Weight by distance from one inner edge: ~0 over ``margin``, then a smoothstep to 1.

    The smoothstep s(t) and its mirror s(1 - t) sum to 1, so two neighbours ramping over the
    same ``ramp`` pixels form a partition of unity there.
    """
    i = np.arange(n, dtype=np.float64)
    t = np.ones(n) if ramp <= 0 else np.clip((i - margin + 0.5) / float(ramp), 0.0, 1.0)
    w = np.where(i < margin, 0.0, t * t * (3.0 - 2.0 * t))
    return np.maximum(w, MARGIN_WEIGHT)


def axis_weight(origin: int, size: int, tile: int, stride: int) -> np.ndarray:
    """1-D weight of a window starting at ``origin``, clipped to the raster (``size``).

    An edge at the raster border is trusted (weight 1 up to it): any window there sees the
    same zero padding beyond the raster as a single whole-raster window does. An inner edge
    gets ``context_margin`` pixels of ~0 weight and then a ramp across the rest of the overlap.
    """
    n = min(tile, size - origin)
    margin = context_margin(tile, stride)
    ramp = max(0, tile - stride - 2 * margin)
    w = np.ones(n, dtype=np.float64)
    if origin > 0:
        w *= edge_ramp(n, margin, ramp)
    if origin + tile < size:
        w *= edge_ramp(tile, margin, ramp)[::-1][:n]
    return w.astype(np.float32)


def window_weight(origin: Tuple[int, int], shape: Tuple[int, int], tile: Tuple[int, int],
                  stride: Tuple[int, int]) -> np.ndarray:
    """2-D blending weight of the window at ``origin`` in a raster of ``shape``: separable."""
    wy = axis_weight(origin[0], shape[0], tile[0], stride[0])
    wx = axis_weight(origin[1], shape[1], tile[1], stride[1])
    return np.outer(wy, wx).astype(np.float32)


# ----------------------------------------------------------------------------- accumulation


class StripAccumulator:
    """Weighted sums of probabilities for the rows one strip of windows covers.

    The buffers are (tile height, raster width): memory grows with the width, never with
    the height. ``advance`` hands out finished rows and slides the buffers down.
    """

    def __init__(self, height: int, width: int, tile_h: int) -> None:
        self.height = height
        self.width = width
        self.rows = min(tile_h, height)
        self.base = 0
        self.acc = np.zeros((self.rows, width), dtype=np.float32)
        self.wsum = np.zeros((self.rows, width), dtype=np.float32)
        self.valid = np.zeros((self.rows, width), dtype=bool)

    @property
    def nbytes(self) -> int:
        return int(self.acc.nbytes + self.wsum.nbytes + self.valid.nbytes)

    def add(self, row: int, col: int, prob: np.ndarray, valid: np.ndarray, weight: np.ndarray) -> None:
        """Accumulates one window (clipped to the raster) at absolute ``row, col``."""
        h = min(prob.shape[0], self.height - row)
        w = min(prob.shape[1], self.width - col)
        r = row - self.base
        if r < 0 or r + h > self.rows:
            raise RuntimeError(f"window at row {row} is outside the strip buffer starting at {self.base}")
        wt = weight[:h, :w]
        self.acc[r:r + h, col:col + w] += prob[:h, :w] * wt
        self.wsum[r:r + h, col:col + w] += wt
        self.valid[r:r + h, col:col + w] |= valid[:h, :w]

    def advance(self, final_end: int) -> Tuple[int, np.ndarray, np.ndarray]:
        """Returns (first row, blended probabilities, validity) of rows up to ``final_end``.

        Rows without any weight (cannot happen with a covering plan) come out invalid.
        """
        n = final_end - self.base
        start = self.base
        wsum = self.wsum[:n]
        with np.errstate(invalid="ignore", divide="ignore"):
            prob = np.where(wsum > 0, self.acc[:n] / np.where(wsum > 0, wsum, 1.0), 0.0).astype(np.float32)
        valid = self.valid[:n] & (wsum > 0)
        for buf in (self.acc, self.wsum, self.valid):
            buf[: self.rows - n] = buf[n:].copy()
            buf[self.rows - n:] = 0
        self.base = final_end
        return start, np.clip(prob, 0.0, 1.0), valid


# ----------------------------------------------------------------------------- writing


class BlockRowWriter:
    """Writes finished rows into a tiled GeoTIFF in whole block rows.

    Re-writing a compressed block that GDAL already flushed appends a new copy to the file,
    so rows are held back until a full block row (or the end) is ready: every block is
    compressed exactly once and at most one block row waits in memory.
    """

    def __init__(self, dst: Any, block_rows: int, mask_fn: Optional[Callable[[int, int], np.ndarray]] = None) -> None:
        self.dst = dst
        self.block_rows = block_rows
        self.mask_fn = mask_fn
        self.pending: List[np.ndarray] = []
        self.pending_rows = 0
        self.next_row = 0
        self.peak_pending_bytes = 0

    def write(self, row0: int, prob: np.ndarray, valid: np.ndarray) -> None:
        """Queues rows starting at ``row0`` (must continue the previous ones)."""
        if row0 != self.next_row + self.pending_rows:
            raise RuntimeError(f"rows must come in order: expected {self.next_row + self.pending_rows}, got {row0}")
        if self.mask_fn is not None:
            valid = valid & self.mask_fn(row0, prob.shape[0])
        out = np.where(valid, prob, np.float32(NODATA)).astype(np.float32)
        self.pending.append(out)
        self.pending_rows += out.shape[0]
        self.peak_pending_bytes = max(self.peak_pending_bytes, sum(p.nbytes for p in self.pending))
        if self.pending_rows >= self.block_rows:
            self._flush(whole_blocks_only=True)

    def close(self) -> None:
        """Writes whatever is left (the last, partial block row)."""
        self._flush(whole_blocks_only=False)

    def _flush(self, whole_blocks_only: bool) -> None:
        if not self.pending:
            return
        from rasterio.windows import Window

        rows = np.concatenate(self.pending, axis=0)
        n = (rows.shape[0] // self.block_rows) * self.block_rows if whole_blocks_only else rows.shape[0]
        if n:
            self.dst.write(rows[:n], 1, window=Window(0, self.next_row, rows.shape[1], n))
            self.next_row += n
        rest = rows[n:]
        self.pending = [rest] if rest.shape[0] else []
        self.pending_rows = rest.shape[0]


# ----------------------------------------------------------------------------- the loop


def blend_windows(
    read: Reader,
    run: Runner,
    writer: BlockRowWriter,
    height: int,
    width: int,
    tile: Tuple[int, int],
    stride: Tuple[int, int],
    batch_size: int,
    cb: Callbacks,
) -> Dict[str, int]:
    """Reads, predicts, blends and writes strip by strip; polls ``should_stop`` per tile.

    Windows are clipped to the raster (the model pads them to its multiple, as it pads a
    single whole-raster window), and each is weighted by its trusted interior
    (``window_weight``). Returns counts (windows, strips) and the accumulators' bytes.
    """
    strips = plan_strips(height, width, tile, stride)
    accum = StripAccumulator(height, width, tile[0])
    jobs = [(i, cols) for i, strip in enumerate(strips) for cols in _batches(strip.cols, width, tile[1], batch_size)]
    prepare = getattr(run, "prepare", None)

    def load(strip: Strip, cols: List[int]) -> Tuple[np.ndarray, np.ndarray]:
        """Reads (and, when the runner can, encodes) one batch; runs on the prefetch thread."""
        h, w = min(tile[0], height - strip.row0), min(tile[1], width - cols[0])
        # One read spans the batch (neighbouring windows overlap): each pixel is read once.
        span_data, span_valid = read(strip.row0, cols[0], h, cols[-1] - cols[0] + w)
        data = np.stack([span_data[:, :, c - cols[0]:c - cols[0] + w] for c in cols])
        valid = np.stack([span_valid[:, c - cols[0]:c - cols[0] + w] for c in cols])
        return (prepare(data, valid) if prepare is not None else data), valid

    n_windows = 0
    # One thread reads (GDAL releases the GIL) the next batch while the model runs this one;
    # only that thread touches the source dataset.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stack-segmenter-read") as pool:
        pending = pool.submit(load, strips[jobs[0][0]], jobs[0][1]) if jobs else None
        for k, (i, cols) in enumerate(jobs):
            cb.check_stop("prediction stopped; no probability map was written")
            assert pending is not None
            x, valids = pending.result()
            if k + 1 < len(jobs):
                pending = pool.submit(load, strips[jobs[k + 1][0]], jobs[k + 1][1])
            probs = run.infer(x) if prepare is not None else run(x, valids)  # type: ignore[attr-defined]
            for col, prob, valid in zip(cols, probs, valids):
                weight = window_weight((strips[i].row0, col), (height, width), tile, stride)
                accum.add(strips[i].row0, col, prob, valid, weight)
            n_windows += len(cols)
            if k + 1 == len(jobs) or jobs[k + 1][0] != i:  # the strip is complete
                writer.write(*accum.advance(strips[i].final_end))
                cb.progress((i + 1) / len(strips))
    writer.close()
    return {"windows": n_windows, "strips": len(strips), "buffer_bytes": accum.nbytes}


def _batches(cols: Sequence[int], width: int, tile_w: int, n: int) -> Iterator[List[int]]:
    """Batches of at most ``n`` window columns whose clipped widths agree (stackable)."""
    batch: List[int] = []
    for col in cols:
        if batch and (len(batch) == n or min(tile_w, width - col) != min(tile_w, width - batch[0])):
            yield batch
            batch = []
        batch.append(col)
    if batch:
        yield batch


# ----------------------------------------------------------------------------- torch side


def class1_probability(logits: Any) -> Any:
    """Positive-class probability from logits (B, K, H, W): softmax for K >= 2, sigmoid for 1."""
    import torch

    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]


class TorchRunner:
    """Encodes raw windows with the checkpoint's encoder and runs the model on them.

    Planar U-Nets halve the size ``layers`` times, so windows are zero-padded to a multiple
    of ``multiple`` and cropped back (a raster smaller than a tile is padded the same way).
    """

    def __init__(self, model: Any, encoder: Any, device: Any, amp: Callable[[], Any], multiple: int = 1) -> None:
        self.model = model
        self.encoder = encoder
        self.device = device
        self.amp = amp
        self.multiple = max(1, int(multiple))

    def prepare(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Encodes a batch of raw windows (B, C, h, w) -> (B, C_out, h, w) float32, in one array."""
        if self.encoder is None:
            return np.where(valid[:, None], data, 0.0).astype(np.float32, copy=False)
        out = np.empty((data.shape[0], self.encoder.out_channels) + data.shape[2:], dtype=np.float32)
        for i, (d, v) in enumerate(zip(data, valid)):
            self.encoder.encode(d, v, out=out[i])
        return out

    encode = prepare  # the name the benchmarks and older callers use

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Positive-class probabilities (B, h, w) of an encoded batch."""
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(x)
        h, w = t.shape[-2:]
        ph = (-h) % self.multiple
        pw = (-w) % self.multiple
        if ph or pw:
            t = F.pad(t, (0, pw, 0, ph))
        with torch.inference_mode(), self.amp():
            prob = class1_probability(self.model(t.to(self.device)))
        return prob[:, :h, :w].float().cpu().numpy()

    def __call__(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return self.infer(self.prepare(data, valid))


# ----------------------------------------------------------------------------- checks


def check_against_checkpoint(config: PredictConfig, ckpt: Dict[str, Any]) -> None:
    """Optional model_name / in_channels / num_classes must agree with the checkpoint."""
    for key in ("model_name", "in_channels", "num_classes"):
        given = getattr(config, key)
        stored = ckpt.get(key)
        if given is not None and stored is not None and given != stored:
            raise ConfigError(
                f"--{key} {given!r} disagrees with the checkpoint, which holds {stored!r}; "
                f"leave --{key} out (it is read from the checkpoint) or pick the matching checkpoint"
            )


def _real_names(names: Optional[Sequence[str]]) -> bool:
    return bool(names) and not all(_FALLBACK_BAND_NAME.match(str(n)) for n in names)  # type: ignore[union-attr]


def match_bands(ours: Sequence[str], theirs: Sequence[str], path: str, log: LogFn) -> Optional[List[int]]:
    """The raster's band numbers (1-based) holding the model's bands, found by name in any order.

    None when the raster's bands are the model's, in the model's order. Names match exactly,
    else ignoring case. Bands the model does not use are left out (logged).

    Raises:
        DataError: naming every band the model needs that the raster lacks, and the raster's bands.
    """
    if list(ours) == list(theirs):
        return None
    exact = {name: i for i, name in reversed(list(enumerate(ours, start=1)))}
    folded = {name.lower(): i for i, name in reversed(list(enumerate(ours, start=1)))}
    order, missing = [], []
    for name in theirs:
        index = exact.get(name, folded.get(str(name).lower()))
        if index is None:
            missing.append(name)
        else:
            order.append(index)
    if missing:
        raise DataError(
            f"{path} lacks {len(missing)} band(s) the model was trained on: {', '.join(map(repr, missing))}. "
            f"Its bands are: {', '.join(map(repr, ours))}. Add the missing evidence (bands are matched by name, "
            "in any order), or rename the band descriptions to the names the model knows"
        )
    extra = [name for i, name in enumerate(ours, start=1) if i not in set(order)]
    if extra:
        log(f"note: {len(extra)} band(s) the model does not use are ignored: {', '.join(extra)}")
    if order != list(range(1, len(order) + 1)):
        log("bands matched by name (the raster holds them in another order than in training)")
    return order


def check_raster(info: Any, ckpt: Dict[str, Any], log: LogFn) -> Optional[List[int]]:
    """The raster must hold the bands the model was trained on; returns which bands to read, in order.

    With real band names on both sides (not all ``band_N``), bands are matched by name in any
    order (extra bands ignored); otherwise by position, and the counts must agree. Then the
    grid: another CRS or pixel size is a warning.
    """
    expected = int(ckpt.get("band_count", ckpt.get("in_channels", info.count)))
    theirs = list(ckpt.get("band_names") or [])
    ours = list(info.band_names or [])
    order: Optional[List[int]] = None
    if _real_names(theirs) and _real_names(ours) and len(theirs) == expected:
        order = match_bands(ours, theirs, info.path, log)
    elif info.count != expected:
        raise DataError(
            f"{info.path} has {info.count} band(s) but the model was trained on {expected}; "
            "predict on a stack with the same bands in the same order as in training (or give the bands "
            "names, as the model's: then they are matched by name)"
        )
    ck_crs = ckpt.get("crs_wkt")
    if ck_crs and info.crs_wkt and not same_crs(ck_crs, info.crs_wkt):
        log(f"warning: the raster's CRS differs from the training raster's; the model may not transfer ({info.path})")
    ck_px = ckpt.get("pixel_size")
    if ck_px:
        a = [abs(float(v)) for v in ck_px][:2]
        b = [abs(float(v)) for v in info.res][:2]
        if any(not math.isclose(x, y, rel_tol=1e-3) for x, y in zip(a, b)):
            log(
                f"warning: pixel size {b[0]:g} x {b[1]:g} differs from the training raster's {a[0]:g} x {a[1]:g}; "
                "features at another scale may be predicted poorly"
            )
    return order


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


def prepare_output(output_path: str, raster_path: str) -> Path:
    """Creates the output folder, checks it is writable and that we never overwrite the input."""
    out = Path(output_path).expanduser().resolve()
    if out.is_dir():
        raise DataError(f"--output_path {output_path} is a folder; give a file name such as {out / 'probability.tif'}")
    if out.exists() and Path(raster_path).exists() and os.path.samefile(out, raster_path):
        raise DataError(f"--output_path {output_path} is the input raster; choose another file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(
            f"cannot write into the output folder {out.parent} ({exc.strerror or exc}); "
            "choose a folder you can write to for --output_path"
        ) from None
    return out


def give_default_permissions(path: Path) -> None:
    """mkstemp files are private (0600); a finished output gets the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file (the checkpoint digest written into the map's tags)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- study area


class StudyArea:
    """Study-area polygons, rasterized one block of rows at a time (never the whole grid)."""

    def __init__(self, shapes: List[Any], transform: Sequence[float], width: int) -> None:
        self.shapes = shapes
        self.transform = transform
        self.width = width

    @classmethod
    def load(cls, path: str, info: Any, log: LogFn) -> "StudyArea":
        """Reads the polygons (labels.py's reader), reprojected to the raster's CRS."""
        from shapely.geometry import box

        from .labels import mask_source, read_vector, to_raster_crs

        gdf = read_vector(mask_source(path, log), what="study-area mask")
        gdf = gdf[gdf.geometry.notna() & gdf.geom_type.isin(["Polygon", "MultiPolygon"])]
        if gdf.empty:
            raise DataError(f"the mask {path} holds no polygons; --mask_path needs study-area polygons")
        gdf = to_raster_crs(gdf, info, log, "study-area mask")
        if not gdf.geometry.intersects(box(*info.bounds)).any():
            raise DataError(f"the mask {path} does not overlap the raster {info.path}; check its CRS and extent")
        return cls(list(gdf.geometry), info.transform, info.width)

    def rows(self, row0: int, n: int) -> np.ndarray:
        """Inside-mask flags of rows ``row0 .. row0 + n`` (bool, n x width)."""
        from affine import Affine
        from rasterio.features import geometry_mask

        t = Affine(*self.transform[:6]) * Affine.translation(0, row0)
        return geometry_mask(self.shapes, out_shape=(n, self.width), transform=t, invert=True)


# ----------------------------------------------------------------------------- the globe


def check_global(info: Any) -> None:
    """Spherical mode needs a whole-globe geographic grid: -180..180 x -90..90, width = 2 x height."""
    from rasterio.crs import CRS

    crs = CRS.from_user_input(info.crs_wkt) if info.crs_wkt else None
    left, bottom, right, top = info.bounds
    tol_x, tol_y = 1.01 * abs(info.res[0]), 1.01 * abs(info.res[1])
    why = None
    if crs is None or not crs.is_geographic:
        why = f"its CRS is {'missing' if crs is None else (crs.to_string() or 'projected')}, not geographic (EPSG:4326)"
    elif abs(left + 180) > tol_x or abs(right - 180) > tol_x or abs(bottom + 90) > tol_y or abs(top - 90) > tol_y:
        why = f"its extent {left:g}, {bottom:g}, {right:g}, {top:g} is not the whole globe (-180, -90, 180, 90)"
    elif abs(info.width - 2 * info.height) > max(1, 0.02 * info.width):
        why = f"it is {info.width} x {info.height} pixels; a global grid is twice as wide as high"
    if why:
        raise DataError(
            f"--spherical runs the whole globe through a spherical model, but {info.path} is not a global "
            f"EPSG:4326 raster: {why}. Reproject to a global grid (e.g. gdalwarp -t_srs EPSG:4326 "
            "-te -180 -90 180 90 -ts 2N N), or leave out --spherical and use a planar model"
        )


def resample_periodic(x: Any, size: Tuple[int, int]) -> Any:
    """Bilinear resampling of (B, C, H, W) global grids, periodic in longitude.

    Pixel centres map onto pixel centres; one column of circular padding on each side lets
    values across the antimeridian blend, and latitude clamps at the poles.
    """
    import torch
    import torch.nn.functional as F

    h_in, w_in = x.shape[-2:]
    if (h_in, w_in) == tuple(size):
        return x
    h_out, w_out = size
    padded = F.pad(x, (1, 1, 0, 0), mode="circular")
    cols = (torch.arange(w_out, dtype=torch.float64) + 0.5) * w_in / w_out - 0.5 + 1.0  # index in padded
    rows = (torch.arange(h_out, dtype=torch.float64) + 0.5) * h_in / h_out - 0.5
    gx = (cols + 0.5) / (w_in + 2) * 2 - 1
    gy = (rows + 0.5) / h_in * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1).to(x.dtype)
    grid = grid.unsqueeze(0).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)


def predict_globe(runner: TorchRunner, data: np.ndarray, valid: np.ndarray, grid: Optional[Tuple[int, int]]
                  ) -> np.ndarray:
    """Runs the whole globe through the model at once and brings the probability back.

    A spherical model gets its own ``grid`` (resampled there and back, periodic in
    longitude). A planar model (``grid`` None) sees the globe at its own size with a
    circular margin in longitude, so the antimeridian is not an edge for it either.
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(runner.encode(data[None], valid[None]))
    h, w = x.shape[-2:]
    with torch.inference_mode(), runner.amp():
        if grid is not None:
            logits = runner.model(resample_periodic(x, grid).to(runner.device))
            prob = resample_periodic(class1_probability(logits)[:, None].float().cpu(), (h, w))
        else:
            margin = min(w, max(runner.multiple, w // 8))
            padded = F.pad(x, (margin, margin, 0, 0), mode="circular")
            prob = class1_probability(runner.model(padded.to(runner.device)))[:, None, :, margin:margin + w]
    return prob[0, 0].float().cpu().clamp(0, 1).numpy()


def globe_into(src: Any, info: Any, runner: TorchRunner, grid: Optional[Tuple[int, int]],
               writer: BlockRowWriter, cb: Callbacks, bands: Optional[Sequence[int]] = None) -> Dict[str, int]:
    """Reads the whole globe (the model's ``bands``), predicts it in one pass and writes it."""
    from .raster import read_window

    cb.check_stop("prediction stopped; no probability map was written")
    data, valid = read_window(src, 0, 0, info.height, info.width, bands)
    writer.write(0, predict_globe(runner, data, valid, grid), valid)
    writer.close()
    cb.progress(1.0)
    return {"windows": 1, "strips": 1}


# ----------------------------------------------------------------------------- predict()


def _model_grid(ckpt: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    """The fixed input grid of a spherical model (its img_size), when the checkpoint has one."""
    for value in ((ckpt.get("model_kwargs") or {}).get("img_size"), ckpt.get("tile_size"), ckpt.get("raster_shape")):
        if value:
            return (int(value[0]), int(value[1]))
    return None


def _output_profile(info: Any) -> Dict[str, Any]:
    from affine import Affine

    block = BLOCK
    return {
        "driver": "GTiff",
        "width": info.width,
        "height": info.height,
        "count": 1,
        "dtype": "float32",
        "crs": info.crs_wkt or None,
        "transform": Affine(*info.transform[:6]),
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "predictor": 3,
        "BIGTIFF": "IF_SAFER",
    }


def _temp_output(out: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".partial.tif")
    os.close(fd)
    return Path(name)


def _tags(config: PredictConfig, ckpt: Dict[str, Any], tile: Tuple[int, int], spherical: bool) -> Dict[str, str]:
    from . import __version__

    return {
        "model_name": str(ckpt.get("model_name")),
        "checkpoint": str(Path(config.checkpoint).name),
        "checkpoint_sha256": file_sha256(config.checkpoint),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stack_segmenter_version": __version__,
        "source_raster": str(Path(config.raster_path).name),
        "mode": "whole globe" if spherical else f"sliding windows {tile[0]}x{tile[1]}, overlap {config.overlap:g}",
        "value": "probability of class 1 (positive), 0..1",
    }


def predict(
    config: PredictConfig,
    *,
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[StopFn] = None,
    log: Optional[LogFn] = None,
) -> Dict[str, Any]:
    """Writes the positive-class probability of every pixel of ``config.raster_path``.

    Every check (checkpoint, options, bands, output folder, globe) runs before any window is
    predicted. Returns ``{"output_path", "model_name", "width", "height", "nodata", ...}``.
    """
    import rasterio

    from .checkpoint import build_model_from_checkpoint, encoder_from_checkpoint, load_checkpoint
    from .models.catalog import parse_model_name
    from .raster import open_raster, read_info, read_window

    cb = Callbacks.of(progress, should_stop, log)
    ckpt = load_checkpoint(config.checkpoint)
    check_against_checkpoint(config, ckpt)
    info = read_info(config.raster_path)
    bands = check_raster(info, ckpt, cb.log)
    spec = parse_model_name(str(ckpt["model_name"]))
    if config.spherical:
        check_global(info)
        if not spec.spherical:
            cb.log(f"note: {spec.name} is planar: the whole globe goes through it at its own size, wrapped "
                   "in longitude")
    elif spec.spherical:
        cb.log(f"warning: {spec.name} is a spherical model run on local windows; the geometry is approximate "
               "(use --spherical on a global EPSG:4326 raster)")
    out = prepare_output(config.output_path, config.raster_path)
    study = StudyArea.load(config.mask_path, info, cb.log) if config.mask_path else None
    device = resolve_device(config.device)
    amp = autocast_for(config.amp_mode, device)
    model = build_model_from_checkpoint(ckpt).to(device).eval()
    multiple = 1 if spec.spherical else spec.scale ** spec.layers
    runner = TorchRunner(model, encoder_from_checkpoint(ckpt), device, amp, multiple)
    tile = _choose_tile(config, ckpt, info, spec.spherical, cb.log)
    stride = stride_for(tile, config.overlap, multiple, model_context(spec.arch, spec.scale, spec.layers))
    how = "whole globe" if config.spherical else f"windows {tile[0]} x {tile[1]}, stride {stride[0]} x {stride[1]}"
    cb.log(f"predicting {info.width} x {info.height} px with {spec.name} on {device}: {how}")
    tmp = _temp_output(out)
    try:
        with open_raster(config.raster_path) as src, rasterio.open(tmp, "w", **_output_profile(info)) as dst:
            writer = BlockRowWriter(dst, BLOCK, study.rows if study is not None else None)
            if config.spherical:
                grid = _model_grid(ckpt) if spec.spherical else None
                stats = globe_into(src, info, runner, grid, writer, cb, bands)
            else:
                stats = blend_windows(lambda r, c, h, w: read_window(src, r, c, h, w, bands), runner, writer,
                                      info.height, info.width, tile, stride, config.batch_size, cb)
            dst.set_band_description(1, f"probability of class 1 ({spec.name})")
            dst.update_tags(**_tags(config, ckpt, tile, config.spherical))
        give_default_permissions(tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    cb.log(f"probability map written to {out}")
    return {
        "output_path": str(out),
        "model_name": spec.name,
        "width": info.width,
        "height": info.height,
        "nodata": NODATA,
        "tile_size": list(tile),
        "windows": stats["windows"],
    }


def _choose_tile(
    config: PredictConfig, ckpt: Dict[str, Any], info: Any, spherical_model: bool, log: LogFn
) -> Tuple[int, int]:
    """--tile_size, else the training tile; spherical models only take their own grid."""
    grid = _model_grid(ckpt)
    if spherical_model and grid is not None:
        if config.tile_size and tuple(config.tile_size) != grid:
            log(f"note: {ckpt.get('model_name')} has a fixed grid {grid[0]} x {grid[1]}; --tile_size is ignored")
        return grid
    if config.tile_size:
        return (int(config.tile_size[0]), int(config.tile_size[1]))
    tile = ckpt.get("tile_size")
    if tile:
        return (int(tile[0]), int(tile[1]))
    log("note: the checkpoint names no tile size; using 256 x 256")
    return (256, 256)

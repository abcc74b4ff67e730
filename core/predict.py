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

The output is written to a temporary file beside the requested one (files.atomic_paths),
checked (GDAL's errors while writing, then reopened and read back) and renamed when
complete, so a cancelled or failed run, or a full disk, never leaves a half-written map under
that name nor replaces an earlier map.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
import datetime as _dt
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .calibration import class1_probability
from .config import PredictConfig
from .device import autocast_for, resolve_device
from .errors import ConfigError, DataError
from .events import Callbacks, LogFn, ProgressFn, StopFn
from .files import (WriteFailed, atomic_paths, check_output_location, check_outputs_not_inputs, file_sha256,
                    gdal_errors, verify_raster)
from .models.catalog import check_tile
from .raster import MAP_BLOCK as BLOCK, MAP_NODATA as NODATA

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

    The buffers are (layers, tile height, raster width): memory grows with the width and
    the number of layers (1, or one per ensemble member when the spread is wanted), never
    with the height. ``advance`` hands out finished rows and slides the buffers down.
    """

    def __init__(self, height: int, width: int, tile_h: int, layers: int = 1) -> None:
        self.height = height
        self.width = width
        self.rows = min(tile_h, height)
        self.base = 0
        self.acc = np.zeros((layers, self.rows, width), dtype=np.float32)
        self.wsum = np.zeros((self.rows, width), dtype=np.float32)
        self.valid = np.zeros((self.rows, width), dtype=bool)

    @property
    def nbytes(self) -> int:
        return int(self.acc.nbytes + self.wsum.nbytes + self.valid.nbytes)

    def add(self, row: int, col: int, prob: np.ndarray, valid: np.ndarray, weight: np.ndarray) -> None:
        """Accumulates one window (layers, h, w) or (h, w), clipped to the raster, at ``row, col``."""
        if prob.ndim == 2:
            prob = prob[None]
        h = min(prob.shape[1], self.height - row)
        w = min(prob.shape[2], self.width - col)
        r = row - self.base
        if r < 0 or r + h > self.rows:
            raise RuntimeError(f"window at row {row} is outside the strip buffer starting at {self.base}")
        wt = weight[:h, :w]
        self.acc[:, r:r + h, col:col + w] += prob[:, :h, :w] * wt
        self.wsum[r:r + h, col:col + w] += wt
        self.valid[r:r + h, col:col + w] |= valid[:h, :w]

    def advance(self, final_end: int) -> Tuple[int, np.ndarray, np.ndarray]:
        """Returns (first row, blended probabilities (layers, n, width), validity) up to ``final_end``.

        Rows without any weight (cannot happen with a covering plan) come out invalid.
        """
        n = final_end - self.base
        start = self.base
        wsum = self.wsum[:n]
        with np.errstate(invalid="ignore", divide="ignore"):
            prob = np.where(wsum > 0, self.acc[:, :n] / np.where(wsum > 0, wsum, 1.0), 0.0).astype(np.float32)
        valid = self.valid[:n] & (wsum > 0)
        for buf in (self.wsum, self.valid):
            buf[: self.rows - n] = buf[n:].copy()
            buf[self.rows - n:] = 0
        self.acc[:, : self.rows - n] = self.acc[:, n:].copy()
        self.acc[:, self.rows - n:] = 0
        self.base = final_end
        return start, np.clip(prob, 0.0, 1.0), valid


# ----------------------------------------------------------------------------- writing


RowsFn = Callable[[int, np.ndarray, np.ndarray], None]


class BlockRowWriter:
    """Writes finished rows into a tiled GeoTIFF in whole block rows.

    Re-writing a compressed block that GDAL already flushed appends a new copy to the file,
    so rows are held back until a full block row (or the end) is ready: every block is
    compressed exactly once and at most one block row waits in memory. ``on_rows`` sees
    every final row (values, validity after the mask), e.g. to sample the value distribution.
    ``gdal_messages`` (from ``files.gdal_errors``) is checked after each write, so a full disk
    ends the run as soon as GDAL reports it; ``valid_pixels`` counts what was not nodata.
    """

    def __init__(self, dst: Any, block_rows: int, mask_fn: Optional[Callable[[int, int], np.ndarray]] = None,
                 on_rows: Optional[RowsFn] = None, gdal_messages: Optional[List[str]] = None) -> None:
        self.dst = dst
        self.block_rows = block_rows
        self.mask_fn = mask_fn
        self.on_rows = on_rows
        self.gdal_messages = gdal_messages if gdal_messages is not None else []
        self.valid_pixels = 0
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
        if self.on_rows is not None:
            self.on_rows(row0, prob, valid)
        out = np.where(valid, prob, np.float32(NODATA)).astype(np.float32)
        self.valid_pixels += int(valid.sum())
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
            if self.gdal_messages:  # GDAL flushed blocks and failed (e.g. a full disk): stop now, not at the end
                raise WriteFailed(f"GDAL: {self.gdal_messages[0]}")
        rest = rows[n:]
        self.pending = [rest] if rest.shape[0] else []
        self.pending_rows = rest.shape[0]


class ValueHistogram:
    """The distribution of a map's valid values in fixed memory, for area-percentile cut-offs.

    Non-negative float32 values order like their bit patterns, so the top 20 bits of the
    pattern index a histogram with bins 0.05 % wide (relative) at every magnitude: a
    calibrated map with values near 1e-4 is resolved as finely as one near 0.5. Counts
    (or pixel areas on a geographic grid) go into 2^19 bins (4 MiB, whatever the raster's
    size). A cut-off is the lower edge of the bin where the ranked area reaches k %, so
    the pixels at or above it cover k % of the area, up to one bin.
    """

    SHIFT = 12
    BINS = 1 << 19  # covers every float32 in [0, 2)

    def __init__(self, area_fn: Optional[Callable[[int, int], np.ndarray]] = None) -> None:
        self.area_fn = area_fn
        self.weights = np.zeros(self.BINS, dtype=np.float64)

    def __call__(self, row0: int, values: np.ndarray, valid: np.ndarray) -> None:
        v = np.clip(values[valid].astype(np.float32), 0.0, 1.0)
        idx = v.view(np.uint32) >> self.SHIFT
        w = None if self.area_fn is None else self.area_fn(row0, values.shape[0])[valid].astype(np.float64)
        self.weights += np.bincount(idx, weights=w, minlength=self.BINS)

    def _edge(self, i: int) -> float:
        return float(np.array([i << self.SHIFT], dtype=np.uint32).view(np.float32)[0])

    def cutoffs(self, percents: Sequence[float]) -> Dict[str, Optional[float]]:
        """``{"top<k>": value}``: the value at which the top k % of the area begins (None when empty)."""
        total = self.weights.sum()
        if not total > 0:
            return {f"top{k:g}": None for k in percents}
        from_top = np.cumsum(self.weights[::-1]) / total
        out: Dict[str, Optional[float]] = {}
        for k in percents:
            target = k / 100.0 - 1e-12
            # k = 0: the highest non-empty bin (the maximum).
            j = int(np.searchsorted(from_top, target, side="left") if target > 0 else
                    np.searchsorted(from_top, 0.0, side="right"))
            out[f"top{k:g}"] = self._edge(self.BINS - 1 - min(j, self.BINS - 1))
        return out

    def percentile(self, q: float) -> Optional[float]:
        """The q-th percentile (lower bin edge; None when empty)."""
        cut = self.cutoffs([100.0 - q])
        return next(iter(cut.values()))


# ----------------------------------------------------------------------------- the loop


def _as_layers(probs: np.ndarray) -> np.ndarray:
    """A runner's output as (B, layers, h, w): plain callables return (B, h, w)."""
    return probs[:, None] if probs.ndim == 3 else probs


def blend_windows(
    read: Reader,
    run: Runner,
    writer: BlockRowWriter | Sequence[BlockRowWriter],
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
    (``window_weight``). A runner with ``layers`` > 1 (ensemble members) is blended layer
    by layer and its ``outputs(layers)`` turns the blended rows into one array per writer
    (the mean map and the members' spread); otherwise the single layer goes to the one
    writer. Returns counts (windows, strips) and the accumulators' bytes.
    """
    writers = [writer] if isinstance(writer, BlockRowWriter) else list(writer)
    strips = plan_strips(height, width, tile, stride)
    accum = StripAccumulator(height, width, tile[0], int(getattr(run, "layers", 1)))
    jobs = [(i, cols) for i, strip in enumerate(strips) for cols in _batches(strip.cols, width, tile[1], batch_size)]
    prepare = getattr(run, "prepare", None)
    outputs = getattr(run, "outputs", None) or (lambda layers: [layers[0]])

    def load(strip: Strip, cols: List[int]) -> Tuple[Any, np.ndarray]:
        """Reads (and, when the runner can, encodes) one batch; runs on the prefetch thread."""
        h, w = min(tile[0], height - strip.row0), min(tile[1], width - cols[0])
        # One read spans the batch (neighbouring windows overlap): each pixel is read once.
        span_data, span_valid = read(strip.row0, cols[0], h, cols[-1] - cols[0] + w)
        windows = [span_data[:, :, c - cols[0]:c - cols[0] + w] for c in cols]
        valid = np.stack([span_valid[:, c - cols[0]:c - cols[0] + w] for c in cols])
        # A runner that encodes reads the windows in place (views of the span): no stacked raw copy.
        return (prepare(windows, valid) if prepare is not None else np.stack(windows)), valid

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
            probs = _as_layers(run.infer(x) if prepare is not None else run(x, valids))  # type: ignore[attr-defined]
            for col, prob, valid in zip(cols, probs, valids):
                weight = window_weight((strips[i].row0, col), (height, width), tile, stride)
                accum.add(strips[i].row0, col, prob, valid, weight)
            n_windows += len(cols)
            if k + 1 == len(jobs) or jobs[k + 1][0] != i:  # the strip is complete
                start, layers, valid = accum.advance(strips[i].final_end)
                for out, rows in zip(writers, outputs(layers)):
                    out.write(start, rows, valid)
                cb.progress((i + 1) / len(strips))
    for out in writers:
        out.close()
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


@dataclass
class Member:
    """One model of the ensemble a checkpoint holds, ready to run."""

    model: Any
    group: int
    """Index of its band encoder in ``TorchRunner.encoders`` (members may share one)."""
    offset: float = 0.0
    """Calibration: added to the scaled class-1 logit (0 = the model's own output)."""
    scale: float = 1.0
    """Calibration: the factor on the class-1 rank score (older checkpoints: logit; 1 = the model's own output)."""
    ranks: Optional[Tuple[Any, Any]] = None
    """Calibration: the member's rank table (values, scores) as tensors on its device; None: raw logits."""


class TorchRunner:
    """Encodes raw windows with the members' encoders and runs every member on them.

    Windows are zero-padded to the model's input multiple (``ModelSpec.multiple``: a U-Net
    pools ``layers - 1`` times) and cropped back (a raster smaller than a tile is padded the same way).
    Members that share an encoder share one encoded batch; the first encoder's batch is
    encoded on the prefetch thread (``prepare``), any other group's when it is needed, so
    only one extra encoded batch exists at a time. ``infer`` returns the members' mean
    probability as one layer, or, with ``per_member``, one layer per member (for the spread).
    """

    def __init__(self, members: Sequence[Member], encoders: Sequence[Any], device: Any, amp: Callable[[], Any],
                 multiple: int = 1, per_member: bool = False) -> None:
        self.members = list(members)
        self.encoders = list(encoders)
        self.device = device
        self.amp = amp
        self.multiple = max(1, int(multiple))
        self.per_member = per_member and len(self.members) > 1

    @property
    def model(self) -> Any:
        """The first member's model (single-model callers)."""
        return self.members[0].model

    @property
    def layers(self) -> int:
        """Layers ``infer`` returns per window: 1 (the mean) or one per member."""
        return len(self.members) if self.per_member else 1

    def encode_group(self, group: int, data: np.ndarray | Sequence[np.ndarray], valid: np.ndarray) -> np.ndarray:
        """Encodes a batch of raw windows (B, C, h, w), or B windows (C, h, w), -> (B, C_out, h, w) float32."""
        encoder = self.encoders[group]
        if encoder is None:
            return np.where(valid[:, None], np.asarray(data), 0.0).astype(np.float32, copy=False)
        out = np.empty((len(data), encoder.out_channels) + data[0].shape[1:], dtype=np.float32)
        for i, (d, v) in enumerate(zip(data, valid)):
            encoder.encode(d, v, out=out[i])
        return out

    def prepare(self, data: np.ndarray | Sequence[np.ndarray], valid: np.ndarray
                ) -> Tuple[np.ndarray, Optional[Tuple[Any, np.ndarray]]]:
        """(the first encoder's batch, the raw batch when other encoders still need it)."""
        raw = (data, valid) if len(self.encoders) > 1 else None
        return self.encode_group(0, data, valid), raw

    def member_probability(self, member: Member, x: Any) -> Any:
        """One member's class-1 probability (B, H, W) of an encoded tensor batch, on the device.

        Callers move ``x`` to the device once for all members (``.to`` is then a no-op):
        an ensemble of n must not copy each batch to a GPU n times.
        """
        with torch_inference(), self.amp():
            return class1_probability(member.model(x.to(self.device)), member.offset, member.scale, member.ranks)

    def infer(self, batch: Any) -> np.ndarray:
        """Probabilities (B, layers, h, w) of a prepared batch (or of an encoded array)."""
        import torch
        import torch.nn.functional as F

        first, raw = batch if isinstance(batch, tuple) else (batch, None)
        encoded = {0: first}
        h, w = first.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        total: Any = None
        layers: List[np.ndarray] = []
        for group in sorted({m.group for m in self.members}):
            if group not in encoded:
                assert raw is not None
                encoded = {group: self.encode_group(group, *raw)}  # one extra batch at a time
            t = torch.from_numpy(encoded[group])
            if ph or pw:
                t = F.pad(t, (0, pw, 0, ph))
            t = t.to(self.device)  # once for every member of the group
            for member in (m for m in self.members if m.group == group):
                prob = self.member_probability(member, t)[:, :h, :w].float()
                if self.per_member:
                    layers.append(prob.cpu().numpy())
                else:
                    total = prob if total is None else total + prob
        if self.per_member:
            return np.stack(layers, axis=1)
        return (total / len(self.members)).cpu().numpy()[:, None]

    def outputs(self, layers: np.ndarray) -> List[np.ndarray]:
        """Blended layers -> [mean map] or [mean map, spread (population std across members)]."""
        if not self.per_member:
            return [layers[0]]
        return [layers.mean(axis=0), layers.std(axis=0)]

    def __call__(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return self.infer(self.prepare(data, valid))


def torch_inference() -> Any:
    """``torch.inference_mode()`` (imported when first needed)."""
    import torch

    return torch.inference_mode()


def load_members(ckpt: Dict[str, Any], device: Any) -> Tuple[List[Member], List[Any]]:
    """The checkpoint's members as runnable models (eval mode, on ``device``) and their encoders.

    Members with the same band statistics share one encoder (one encoding per batch).
    """
    import json

    from .calibration import member_calibration
    from .checkpoint import build_member_model, ensemble_members
    from .encoding import BandEncoder

    members: List[Member] = []
    encoders: List[Any] = []
    keys: Dict[str, int] = {}
    for view in ensemble_members(ckpt):
        enc = view.get("encoder")
        key = json.dumps(enc, sort_keys=True)
        if key not in keys:
            keys[key] = len(encoders)
            encoders.append(None if enc is None else BandEncoder.from_dict(enc))
        model = build_member_model(view).to(device).eval()
        members.append(Member(model, keys[key], *member_calibration(view.get("calibration"), device)))
    return members, encoders


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
    from .raster import same_crs

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


def check_band_values(path: str, info: Any, bands: Optional[List[int]], ckpt: Dict[str, Any], log: LogFn) -> None:
    """What the bands hold, from a sample of windows, before any window is predicted.

    An input with no pixel holding every band is an error naming the empty bands (the map
    would be all nodata); undeclared nodata values (-9999, -3.4e38, ...), bands that cover
    little of the raster and bands whose statistics differ from training (shifted, rescaled
    or swapped) are warnings: the run goes on.
    """
    from .checkpoint import encoder_from_checkpoint
    from .encoding import compare_with_training
    from .raster import check_some_data, coverage_warnings, sentinel_warnings, survey_bands

    survey = survey_bands(path, bands)
    check_some_data(path, bands, survey)
    lines = sentinel_warnings(survey, info) + coverage_warnings(survey)
    encoder = encoder_from_checkpoint(ckpt)
    if encoder is not None and encoder.band_count == len(survey.bands):
        lines += compare_with_training(encoder, survey.sample, survey.names)
    for line in lines:
        log(line)


def prepare_output(path: str, flag: str, config: PredictConfig) -> Path:
    """Checks an output path before any work (creating nothing): not an input, a file name, a writable folder."""
    out = Path(path).expanduser().resolve()
    check_outputs_not_inputs(
        [(flag, out)],
        [("input raster (--raster_path)", config.raster_path), ("model file (--checkpoint)", config.checkpoint),
         ("study-area mask (--mask_path)", config.mask_path or "")],
    )
    return check_output_location(out, flag)


def map_bytes(info: Any) -> int:
    """Disk space a map may take: float32 uncompressed (deflate usually needs less) plus headers."""
    return int(info.width) * int(info.height) * 4 + 64 * 1024


def remove_stale_sidecars(out: Path, log: LogFn) -> None:
    """GDAL statistics (.aux.xml) and overviews (.ovr) of the map just replaced would describe the old one."""
    for sidecar in (Path(str(out) + ".aux.xml"), Path(str(out) + ".ovr")):
        if sidecar.is_file():
            sidecar.unlink()
            log(f"removed {sidecar.name}: it described the map this run replaced")


# ----------------------------------------------------------------------------- the globe


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
    """Runs the whole globe through every member at once and brings the probabilities back.

    A spherical model gets its own ``grid`` (resampled there and back, periodic in
    longitude). A planar model (``grid`` None) sees the globe at its own size with a
    circular margin in longitude, so the antimeridian is not an edge for it either.
    Returns (layers, H, W): the members' mean, or one layer per member (``per_member``).
    """
    import torch
    import torch.nn.functional as F

    probs: List[np.ndarray] = []
    for group in sorted({m.group for m in runner.members}):
        x = torch.from_numpy(runner.encode_group(group, data[None], valid[None]))
        h, w = x.shape[-2:]
        # The model's input is made (resampled or wrapped) and moved to the device once per group.
        margin = min(w, max(runner.multiple, w // 8))
        model_in = resample_periodic(x, grid) if grid is not None else F.pad(x, (margin, margin, 0, 0), mode="circular")
        model_in = model_in.to(runner.device)
        for member in (m for m in runner.members if m.group == group):
            prob = runner.member_probability(member, model_in)
            if grid is not None:
                prob = resample_periodic(prob[:, None].float().cpu(), (h, w))[:, 0]
            else:
                prob = prob[:, :, margin:margin + w]
            probs.append(prob[0].float().cpu().clamp(0, 1).numpy())
    stacked = np.stack(probs)
    return stacked if runner.per_member else stacked.mean(axis=0, keepdims=True)


def globe_into(src: Any, info: Any, runner: TorchRunner, grid: Optional[Tuple[int, int]],
               writers: Sequence[BlockRowWriter], cb: Callbacks, bands: Optional[Sequence[int]] = None
               ) -> Dict[str, int]:
    """Reads the whole globe (the model's ``bands``), predicts it in one pass and writes it (and the spread)."""
    from .raster import read_window

    cb.check_stop("prediction stopped; no probability map was written")
    data, valid = read_window(src, 0, 0, info.height, info.width, bands)
    for writer, rows in zip(writers, runner.outputs(predict_globe(runner, data, valid, grid))):
        writer.write(0, rows, valid)
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
    }


@dataclass(frozen=True)
class OutputMeaning:
    """What the map's values are, in the words its band description and tags use."""

    calibrated: bool
    base_rate: Optional[float]
    description: str
    value: str


def output_meaning(ckpt: Dict[str, Any], model_name: str, n_members: int) -> OutputMeaning:
    """Calibrated probability when every member carries a calibration, else a prospectivity score."""
    from .checkpoint import ensemble_members

    cals = [m.get("calibration") for m in ensemble_members(ckpt)]
    ensemble = f", mean of {n_members} members" if n_members > 1 else ""
    if cals and all(c and c.get("logit_offset") is not None for c in cals):
        rate = float(np.mean([float(c.get("base_rate", 0.0)) for c in cals]))
        of = str(cals[0].get("base_rate_of") or "positives per pixel")
        return OutputMeaning(True, rate, f"probability of class 1, calibrated ({model_name}{ensemble})",
                             f"probability of class 1 (positive) per pixel, 0..1, calibrated so that its mean over "
                             f"the training area is the training base rate {rate:.3g} ({of})")
    return OutputMeaning(False, None, f"prospectivity score of class 1, not calibrated ({model_name}{ensemble})",
                         "prospectivity score of class 1 (positive), 0..1: it ranks the pixels but is not a "
                         "probability (the model carries no calibration; retrain it to get one)")


def _geographic_area(info: Any) -> Optional[Callable[[int, int], np.ndarray]]:
    """Pixel areas of rows (cos latitude) on a geographic grid, None on a projected one."""
    from .evaluate import is_geographic
    from .metrics import latitude_weights

    if not is_geographic(info.crs_wkt):
        return None
    a, b, c, d, e, f = (float(v) for v in info.transform[:6])

    def rows(row0: int, n: int) -> np.ndarray:
        return latitude_weights((a, b, c, d, e, f + e * row0), n, info.width)

    return rows


def check_outputs(config: PredictConfig, n_members: int) -> Tuple[Path, Optional[Path]]:
    """The map's path and the uncertainty map's (None when not asked for), both checked.

    Raises:
        ConfigError: an uncertainty map from a single model, or the same file for both maps.
        DataError: a folder, an input (raster, model, mask) or an unwritable folder as an output.
    """
    if config.uncertainty_path and n_members < 2:
        raise ConfigError(
            "--uncertainty_path needs an ensemble: the model holds a single member, so there is no spread "
            "between members to map; train with --ensemble 2 or more (Train segmenter: 'Ensemble members'), or "
            "leave out --uncertainty_path"
        )
    out = prepare_output(config.output_path, "--output_path", config)
    if not config.uncertainty_path:
        return out, None
    spread = prepare_output(config.uncertainty_path, "--uncertainty_path", config)
    if spread == out:
        raise ConfigError("--uncertainty_path names the same file as --output_path; give the uncertainty map "
                          "its own name, e.g. uncertainty.tif")
    return out, spread


def _cutoff_tags(cutoffs: Dict[str, Optional[float]]) -> Dict[str, str]:
    """``top1_cutoff`` ...: the value at which the top k % of the area begins (styling reads them)."""
    return {f"{k}_cutoff": repr(float(v)) for k, v in cutoffs.items() if v is not None}


def predict(
    config: PredictConfig,
    *,
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[StopFn] = None,
    log: Optional[LogFn] = None,
) -> Dict[str, Any]:
    """Writes the positive-class probability of every pixel of ``config.raster_path``.

    An ensemble checkpoint's members are averaged window by window; with
    ``uncertainty_path`` the members' per-pixel standard deviation goes to a second
    GeoTIFF. Every check (checkpoint, options, bands, outputs, globe) runs before any
    window is predicted. Returns ``{"output_path", "model_name", "width", "height",
    "nodata", "tile_size", "windows", "members", "calibrated", "area_cutoffs",
    "uncertainty_path"}``.
    """
    import rasterio

    from .checkpoint import ensemble_members, load_checkpoint
    from .metrics import TOP_PERCENTS
    from .models.catalog import parse_model_name
    from .labels import StudyArea
    from .raster import check_global, map_profile, open_raster, read_info, read_window

    cb = Callbacks.of(progress, should_stop, log)
    prepare_output(config.output_path, "--output_path", config)  # an input as the output: refused first
    ckpt = load_checkpoint(config.checkpoint)
    check_against_checkpoint(config, ckpt)
    info = read_info(config.raster_path)
    bands = check_raster(info, ckpt, cb.log)
    check_band_values(config.raster_path, info, bands, ckpt, cb.log)
    spec = parse_model_name(str(ckpt["model_name"]))
    n_members = len(ensemble_members(ckpt))
    if config.spherical:
        check_global(info)
        if not spec.spherical:
            cb.log(f"note: {spec.name} is planar: the whole globe goes through it at its own size, wrapped "
                   "in longitude")
    elif spec.spherical:
        cb.log(f"warning: {spec.name} is a spherical model run on local windows; the geometry is approximate "
               "(use --spherical on a global EPSG:4326 raster)")
    out, spread_out = check_outputs(config, n_members)
    planned = int((ckpt.get("ensemble") or {}).get("size") or n_members)
    if planned > n_members:
        cb.log(f"note: the checkpoint's ensemble is unfinished ({n_members} of {planned} members trained); "
               "predicting with the finished ones (train again with --resume to finish it)")
    study = StudyArea.load(config.mask_path, info, cb.log) if config.mask_path else None
    device = resolve_device(config.device)
    amp = autocast_for(config.amp_mode, device)
    members, encoders = load_members(ckpt, device)
    runner = TorchRunner(members, encoders, device, amp, spec.multiple, per_member=spread_out is not None)
    meaning = output_meaning(ckpt, spec.name, n_members)
    tile = _choose_tile(config, ckpt, info, spec.spherical, cb.log)
    stride = stride_for(tile, config.overlap, spec.multiple, spec.context)
    how = "whole globe" if config.spherical else f"windows {tile[0]} x {tile[1]}, stride {stride[0]} x {stride[1]}"
    what = f"an ensemble of {n_members} {spec.name} members" if n_members > 1 else spec.name
    cb.log(f"predicting {info.width} x {info.height} px with {what} on {device}: {how}")
    if not meaning.calibrated:
        cb.log("note: the model carries no calibration, so the map is a prospectivity score (a ranking), not a "
               "probability")
    area = _geographic_area(info)
    samples = [ValueHistogram(area)]
    targets = [out] + ([spread_out] if spread_out is not None else [])
    if spread_out is not None:
        samples.append(ValueHistogram())
    mask_fn = study.rows if study is not None else None
    with gdal_errors() as gdal_messages, atomic_paths(
            targets, needed=[map_bytes(info)] * len(targets), log=cb.log,
            verify=lambda tmp: verify_raster(tmp, gdal_messages, (1, info.height, info.width))) as tmps:
        with open_raster(config.raster_path) as src, ExitStack() as stack:
            dsts = [stack.enter_context(rasterio.open(t, "w", **map_profile(info))) for t in tmps]
            writers = [BlockRowWriter(d, BLOCK, mask_fn, on_rows=smp, gdal_messages=gdal_messages)
                       for d, smp in zip(dsts, samples)]
            if config.spherical:
                grid = _model_grid(ckpt) if spec.spherical else None
                stats = globe_into(src, info, runner, grid, writers, cb, bands)
            else:
                stats = blend_windows(lambda r, c, h, w: read_window(src, r, c, h, w, bands), runner, writers,
                                      info.height, info.width, tile, stride, config.batch_size, cb)
            tags = _tags(config, ckpt, tile, config.spherical)
            cutoffs = samples[0].cutoffs(TOP_PERCENTS)
            dsts[0].set_band_description(1, meaning.description)
            dsts[0].update_tags(**tags, value=meaning.value, calibrated="yes" if meaning.calibrated else "no",
                                members=str(n_members), **_cutoff_tags(cutoffs),
                                **({"base_rate": repr(meaning.base_rate)} if meaning.base_rate is not None else {}))
            if spread_out is not None:
                dsts[1].set_band_description(1, f"uncertainty: standard deviation across {n_members} members "
                                                f"({spec.name})")
                p99, top = samples[1].percentile(99.0), samples[1].percentile(100.0)
                dsts[1].update_tags(**tags, members=str(n_members), value=(
                    f"standard deviation of the {n_members} members' class-1 values (population std, ddof 0): "
                    "0 where the members agree, larger where they differ"),
                    **({"p99": repr(p99), "max": repr(top)} if p99 is not None else {}))
        if writers[0].valid_pixels == 0:
            raise DataError(
                f"every pixel of the map would be nodata: no pixel of {info.path} has data in every band the model "
                "uses" + (" inside the study-area mask" if study is not None else "")
                + "; check the raster's nodata values and bands (and --mask_path). No map was written"
            )
    for target in targets:
        remove_stale_sidecars(target, cb.log)
    cb.log(f"{'probability' if meaning.calibrated else 'score'} map written to {out}"
           + (f"; uncertainty map written to {spread_out}" if spread_out is not None else ""))
    return {
        "output_path": str(out),
        "model_name": spec.name,
        "width": info.width,
        "height": info.height,
        "nodata": NODATA,
        "tile_size": list(tile),
        "windows": stats["windows"],
        "members": n_members,
        "calibrated": meaning.calibrated,
        "area_cutoffs": cutoffs,
        "uncertainty_path": str(spread_out) if spread_out is not None else None,
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
        check_tile(config.tile_size, str(ckpt.get("model_name")))
        return (int(config.tile_size[0]), int(config.tile_size[1]))
    tile = ckpt.get("tile_size")
    if tile:
        return (int(tile[0]), int(tile[1]))
    log("note: the checkpoint names no tile size; using 256 x 256")
    return (256, 256)

"""The training loop: raster stack + vector labels -> one trained checkpoint per model.

Read it top to bottom: ``train()`` prepares the data once (labels, usable pixels), then
for each model in turn ``train_model()`` builds the split, the encoder, the datasets, the
model and the optimiser, runs ``run_epoch()`` / ``validate()`` per epoch, saves the
checkpoint atomically at the end of every epoch, and finally writes the report files
(``reports``: figures, metrics.pkl, metrics.json).

Decisions:
- Every epoch re-seeds the RNGs from (seed, epoch), so a resumed run continues exactly as
  an uninterrupted one would (and two CPU runs with the same seed give the same metrics).
- The checkpoint's ``state_dict`` holds the last epoch's weights (resume), ``best`` the
  best validation epoch's (prediction); see checkpoint.py.
- Early stopping and "best" follow the validation ROC AUC when validation has both
  classes, else the validation loss.
- DDP (torchrun): every rank trains on its share of the sampled windows; every rank
  validates all validation windows (identical numbers, no communication needed for early
  stopping); only rank 0 writes files and speaks.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import random
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import finished_member, model_weights, save_checkpoint
from .config import TrainConfig
from .dataset import EncodedRaster, TileDataset, augment_bands, augment_patches, encoded_pixels
from .device import autocast_for, resolve_device
from .encoding import BandEncoder, fit_encoder
from .errors import ConfigError, DataError, ResourceError, TrainingError
from .events import Callbacks, LogFn, MetricFn, ProgressFn, StopFn
from .files import append_text, prepare_folder, write_text_atomic
from .heldout import deposit_figures, skill_lines
from .labels import LabelRaster, rasterize_labels
from .losses import band_group_penalty, make_loss, positive_weight
from .models.catalog import ModelSpec, parse_model_name
from .models.pixel import PatchCentre
from .models.registry import build_model, count_parameters, model_kwargs
from .preflight import check_resume, check_same_split, check_train_targets
from .raster import (PixelBox, RasterInfo, box_to_map, check_some_data, coverage_mask, coverage_warnings,
                     is_global_raster, read_info, read_valid_mask, sentinel_warnings, survey_bands)
from .sampling import Split, buffer_mask, make_split, resolve_tile, write_blocks_gpkg

WARMUP_FRACTION = 0.05
"""Share of the optimiser steps spent warming the learning rate up (at least one step)."""
MAX_FIGURES = 4
"""validation_<i>.png images written per model."""
MAX_VAL_PIXELS = 2_000_000
"""Validation pixels kept for the AUCs (a seeded subsample beyond that)."""
SKILL_PREFIXES = ("val_prediction_rate", "val_top", "val_n_deposits", "train_")
"""Keys of the deposit-level figures (heldout.deposit_figures) in the final metrics."""
METRIC_KEYS = ("val_loss", "val_iou", "val_accuracy", "val_roc_auc", "val_pr_auc")
PREPARATION = 0.05
"""Share of the progress bar for reading the labels, the valid pixels and the band statistics."""


# ----------------------------------------------------------------------------- run context


@dataclass
class Dist:
    """This process's place in a (possibly) distributed run."""

    enabled: bool = False
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


class RunLog:
    """Log lines go to the caller and, once a model folder exists, to its train.log.

    A write failure of train.log (e.g. a full disk) is a clear CoreError (files.append_text).
    """

    def __init__(self, log: LogFn, speak: bool) -> None:
        self._log = log
        self._speak = speak
        self.lines: List[str] = []
        self._file: Optional[Path] = None

    def __call__(self, message: str) -> None:
        if not self._speak:
            return
        self.lines.append(message)
        self._log(message)
        if self._file is not None:
            append_text(self._file, message + "\n")

    def attach(self, path: Path, backlog: List[str], resumed: bool = False) -> None:
        """Starts a model's train.log with the shared preparation lines (backlog).

        A resumed run appends to the log of the run it continues; a new run starts a new log.
        """
        if not self._speak:
            return
        text = "".join(line + "\n" for line in backlog)
        if resumed and path.is_file():
            append_text(path, f"--- resumed {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n" + text)
        else:
            write_text_atomic(path, text)
        self._file = path


def init_distributed(config: TrainConfig, log: LogFn) -> Dist:
    """Joins the torchrun process group when DDP is asked for (gloo on CPU, nccl on CUDA)."""
    if not config.ddp:
        return Dist()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2 or "RANK" not in os.environ:
        log("note: --enable_ddp without torchrun (WORLD_SIZE < 2); training in a single process. "
            "Launch with: torchrun --nproc_per_node=N train_raster.py ... --enable_ddp")
        return Dist()
    import torch.distributed as tdist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = config.device != "cpu" and torch.cuda.is_available()
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(True, rank, world, local_rank)


def _quiet(_message: str) -> None:
    return None


def pick_device(name: str, dist: Dist) -> torch.device:
    """auto -> cuda when usable, else cpu; cuda asked for but missing is a ConfigError."""
    device = resolve_device(name)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    return device


# ----------------------------------------------------------------------------- data


@dataclass
class RasterData:
    """What every model shares: the raster's metadata, labels and usable pixels."""

    info: RasterInfo
    labels: LabelRaster
    usable: np.ndarray
    is_global: bool


@dataclass
class TileData:
    """Split, encoder and datasets for one tile size and split buffer (shared by models with both)."""

    tile: Tuple[int, int]
    split: Split
    encoder: BandEncoder
    train_set: TileDataset
    val_set: TileDataset
    pos_fraction: float
    whole_globe: bool
    area: Optional[torch.Tensor] = None
    _band_weights: Optional[List[float]] = field(default=None, repr=False)
    _screened: bool = field(default=False, repr=False)
    _sample: Optional[PixelSample] = field(default=None, repr=False)
    _whole_sample: Optional[PixelSample] = field(default=None, repr=False)

    def train_area(self, usable: np.ndarray) -> np.ndarray:
        """bool (H, W): the pixels that train (in a training window, usable, not masked out of training)."""
        mask = self.train_set.study_mask
        return coverage_mask(usable.shape, self.train_set.windows, usable if mask is None else usable & mask)

    def band_weights(self, usable: np.ndarray, seed: int, log: LogFn) -> Optional[List[float]]:
        """Per band group, the share of the band penalty it bears (``screened_weights``; None on the
        whole globe). Screened on first use only, so models without a band layer never pay for it,
        and once for all the members and models that share these tiles."""
        if not self._screened:
            self._screened = True
            sample = None if self.whole_globe else self.pixel_sample(usable, seed)
            if sample is not None:
                self._band_weights = screened_weights(sample, self.encoder, log)
        return self._band_weights

    def pixel_sample(self, usable: np.ndarray, seed: int) -> Optional[PixelSample]:
        """The training area's positive pixels and a seeded background sample, encoded (read once, then kept).

        Band screening compares the two; a per-pixel model trains on them (``PixelBatches``).
        None when the training area holds no positive or no pixel.
        """
        if self._sample is None:
            ts = self.train_set
            self._sample = draw_pixel_sample(ts.raster_path, ts.memory, ts.labels, self.train_area(usable),
                                             self.encoder, seed)
        return self._sample

    def whole_area_sample(self, usable: np.ndarray, seed: int) -> Optional[PixelSample]:
        """As ``pixel_sample``, drawn from every usable pixel (validation blocks and buffers included):
        what ``refit_member`` trains the saved model on."""
        if self._whole_sample is None:
            ts = self.train_set
            self._whole_sample = draw_pixel_sample(ts.raster_path, ts.memory, ts.labels, usable, self.encoder, seed)
        return self._whole_sample


def prepare_raster(config: TrainConfig, log: LogFn, progress: Callable[[float], None] = lambda _f: None,
                   area_mask: Optional[np.ndarray] = None) -> RasterData:
    """Reads the raster's metadata, burns the labels and finds the usable pixels (``progress`` 0..1).

    ``area_mask`` (bool (H, W)) narrows the study area: cross-validation passes a fold's
    training pixels, so the split, the band statistics and every sample stay inside them.
    """
    progress(0.0)
    info = read_info(config.raster_path)
    survey = survey_bands(config.raster_path)
    for line in sentinel_warnings(survey, info) + coverage_warnings(survey):
        log(line)
    labels = rasterize_labels(config.labels, info, log)
    if area_mask is not None:
        if area_mask.shape != info.shape:
            raise DataError(f"area mask {area_mask.shape} does not match the raster {info.shape}")
        labels.study_mask = area_mask.copy() if labels.study_mask is None else labels.study_mask & area_mask
    progress(0.2)
    usable = read_valid_mask(config.raster_path, lambda f: progress(0.2 + 0.8 * f))
    if not usable.any():
        check_some_data(config.raster_path)  # names the bands that hold no data
    if labels.study_mask is not None:
        usable &= labels.study_mask
    if not usable.any():
        raise DataError("no usable pixel: the raster is all nodata inside the study area; check nodata and --mask_path")
    log(f"raster {info.width} x {info.height} px, {info.count} band(s); {int(usable.sum())} usable pixel(s), "
        f"{int((labels.labels.astype(bool) & usable).sum())} positive")
    return RasterData(info, labels, usable, is_global_raster(info))


def tile_for(config: TrainConfig, spec: ModelSpec, data: RasterData, log: LogFn) -> Tuple[Tuple[int, int], bool]:
    """(tile, whole_globe): spherical models on a global raster take the whole globe."""
    if spec.spherical and data.is_global:
        return data.info.shape, True
    if spec.spherical:
        log(f"warning: {spec.name} is a spherical model but this raster is not a global EPSG:4326 grid; "
            "each tile is treated as a whole sphere, so the geometry is approximate (a planar model such as "
            "unet_sc2_layers4_e32 suits local rasters)")
    tile = resolve_tile(config.tile_size, data.info.height, data.info.width, log, spec.auto_tile)
    least = spec.minimum_tile
    if config.tile_size is None and min(tile) < least:  # our automatic choice, never below the model's minimum
        h, w = data.info.shape
        if min(h, w) < least:
            raise DataError(f"the raster is {h} x {w} px, smaller than {spec.name}'s minimum tile {least} x {least}; "
                            "use a model with fewer stages (e.g. unet_sc2_layers2_e32) or a larger raster")
        tile = (max(tile[0], least), max(tile[1], least))
        log(f"note: automatic tile raised to {tile[0]} x {tile[1]}, the smallest {spec.name} takes")
    return tile, False


def globe_masks(usable: np.ndarray, split: Split) -> Tuple[np.ndarray, np.ndarray]:
    """(training pixels, validation pixels) of a whole-globe sample: the validation blocks, and everything
    outside them and their buffer, which wraps across the antimeridian (longitude is periodic)."""
    val = usable & buffer_mask(usable.shape, split.val_blocks, (0, 0))
    train = usable & ~buffer_mask(usable.shape, split.val_blocks, split.buffer, wrap=True)
    return train, val


def prepare_tiles(config: TrainConfig, data: RasterData, tile: Tuple[int, int], whole_globe: bool,
                  encoder: Optional[BandEncoder], log: LogFn,
                  progress: Optional[Callable[[float], None]] = None, split_buffer: Optional[int] = None) -> TileData:
    """Spatial split, band encoder (training area only) and the two datasets for a tile size.

    For the whole globe, the split uses the automatic planar tile to place validation
    blocks; the single globe sample then counts only training pixels (validation blocks
    and their buffer masked out) in training, and only validation pixels in validation.
    ``split_buffer`` (a local model's, ``ModelSpec.split_buffer``): the split keeps only that
    buffer, and training windows reach into it with its and the blocks' pixels masked out.
    """
    lab = data.labels
    split_tile = resolve_tile(config.tile_size, *data.info.shape, log) if whole_globe else tile
    masked = split_buffer is not None and not whole_globe
    split = make_split(lab.labels, data.usable, split_tile, config.stride, val_fraction=config.val_fraction,
                       seed=config.seed, positive_points=lab.positive_points, log=log,
                       buffer=(split_buffer, split_buffer) if masked else None, masked=masked)
    train_mask = data.usable.copy()
    train_study = lab.study_mask
    if whole_globe:
        train_mask, val_mask = globe_masks(data.usable, split)
        train_study = train_mask
        train_windows: List[PixelBox] = [(0, 0, tile[0], tile[1])]
        val_windows: List[PixelBox] = [(0, 0, tile[0], tile[1])]
    else:
        train_windows, val_windows, val_mask = split.train_windows, split.val_windows, lab.study_mask
        if split.train_mask is not None:
            train_mask = train_study = split.train_mask
    if encoder is None:
        encoder = fit_encoder(config.raster_path, train_windows, config.categorical_bands,
                              mask=train_mask, scaling=config.band_scaling, seed=config.seed, log=log,
                              progress=progress)
    pos_fraction = _positive_fraction(lab.labels, coverage_mask(data.info.shape, train_windows, train_mask))
    memory = None
    if EncodedRaster.fits(data.info.height, data.info.width, encoder):
        memory = EncodedRaster(config.raster_path, encoder)
        log(f"the encoded raster ({EncodedRaster.nbytes(data.info.height, data.info.width, encoder) / 1024**2:.0f} "
            "MB) is kept in memory: each window is read once")
    train_set = TileDataset(config.raster_path, train_windows, lab.labels, encoder, train_study,
                            augment=config.augment, spherical=whole_globe, memory=memory)
    val_set = TileDataset(config.raster_path, val_windows, lab.labels, encoder, val_mask, memory=memory)
    area = None
    if whole_globe:
        from .metrics import latitude_weights

        area = torch.from_numpy(latitude_weights(data.info.transform, *data.info.shape).astype(np.float32))
    return TileData(tile, split, encoder, train_set, val_set, pos_fraction, whole_globe, area)


SAMPLE_BACKGROUND = 200_000
"""Background pixels drawn from the training area (``draw_pixel_sample``): what band screening
compares the deposits with, and what a per-pixel model learns the background from."""
SAMPLE_POSITIVES = 200_000
"""At most this many positive pixels are kept in the sample (polygon labels can hold millions)."""


@dataclass
class PixelSample:
    """Encoded pixels of the training area: ``x`` (n, C), ``y`` (n,) class labels; positives first.

    ``n_pos`` positives (labelled pixels) then a uniform background sample of the training
    area (which may hold a positive too, as the unlabelled side of presence-background
    learning does). Invalid pixels are dropped.
    """

    x: np.ndarray
    y: np.ndarray
    n_pos: int
    flat: Optional[np.ndarray] = None
    """Each row's pixel as a flat (row-major) index: where its patch is cut for a context model."""

    @property
    def n_background(self) -> int:
        """Background pixels: the rows of ``x`` after the positives."""
        return self.y.size - self.n_pos


def draw_pixel_sample(raster_path: str, memory: Optional[EncodedRaster], labels: np.ndarray, area: np.ndarray,
                      encoder: BandEncoder, seed: int) -> Optional[PixelSample]:
    """All positive pixels of ``area`` (a seeded subsample beyond SAMPLE_POSITIVES) and SAMPLE_BACKGROUND of its pixels."""
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero((labels > 0) & area)
    bg = np.flatnonzero(area)
    if not pos.size or not bg.size:
        return None
    if pos.size > SAMPLE_POSITIVES:
        pos = np.sort(rng.choice(pos, SAMPLE_POSITIVES, replace=False))
    if bg.size > SAMPLE_BACKGROUND:
        bg = np.sort(rng.choice(bg, SAMPLE_BACKGROUND, replace=False))
    flat = np.concatenate([pos, bg])
    x, ok = encoded_pixels(raster_path, encoder, flat, memory)
    n_pos = int(ok[: pos.size].sum())
    if not n_pos or not ok[pos.size:].any():
        return None
    return PixelSample(np.ascontiguousarray(x[:, ok].T), labels.reshape(-1)[flat[ok]].astype(np.int64), n_pos,
                       flat[ok])


def screened_weights(sample: PixelSample, encoder: BandEncoder, log: LogFn) -> List[float]:
    """The band penalty's per-band weights: the sample's deposits against its background."""
    from .screening import penalty_weights

    weights = penalty_weights(sample.x[: sample.n_pos].T, sample.x[sample.n_pos:].T, encoder.channel_groups())
    names = encoder.band_names
    shown = sorted(range(len(weights)), key=lambda i: weights[i])[:8]
    log("band screening (each band's share of --band_penalty; below 1: the band shows evidence on its own): "
        + ", ".join(f"{names[i]} {weights[i]:.2f}" for i in shown)
        + f"{' ...' if len(weights) > len(shown) else ''}; {sum(w < 1 for w in weights)} of {len(weights)} "
          "band(s) below 1")
    return weights


PIXEL_BATCH = 4096
"""Background pixels per optimisation step of a per-pixel model (``PixelBatches``)."""
PIXEL_POSITIVES = 512
"""Positive pixels per step of a per-pixel model (all of them when fewer)."""


PIXEL_EPOCH_STEPS = math.ceil(SAMPLE_BACKGROUND / PIXEL_BATCH)
"""The fewest optimisation steps of a per-pixel epoch (over all ranks): what a full background
sample takes. Why a floor: every step holds the deposits, so a small study area (Ecuador's
54 000 pixels: 14 steps) would otherwise see them 3.5 times less often over the same epochs than
a large one (49 steps) and end its schedule under-trained. A small sample is passed over again,
in a new order, until the epoch has its steps."""


def sample_steps(sample: PixelSample) -> int:
    """Steps of one pass over the background sample."""
    return max(1, math.ceil(sample.n_background / PIXEL_BATCH))


def pixel_steps(sample: PixelSample, dist: Dist) -> int:
    """Optimisation steps of a per-pixel epoch on each rank (``PixelBatches``)."""
    return math.ceil(max(sample_steps(sample), PIXEL_EPOCH_STEPS) / dist.world)


def _passes_note(sample: PixelSample) -> str:
    """Log text for an epoch that passes over a small sample more than once."""
    steps = sample_steps(sample)
    if steps >= PIXEL_EPOCH_STEPS:
        return ""
    return (f" ({PIXEL_EPOCH_STEPS / steps:.1f} passes over the sample: a small area's deposits are seen as often "
            "an epoch as a large area's)")


PatchFn = Callable[[np.ndarray], np.ndarray]
"""Flat pixel indices (n,) -> their encoded (n, C, 2r+1, 2r+1) patches (``EncodedRaster.patches``)."""


class PixelBatches:
    """One epoch of presence-background batches for a local model: passes over the background sample.

    Each step holds PIXEL_BATCH background pixels and PIXEL_POSITIVES positives drawn with
    replacement (all positives when fewer; the pu loss balances the two sides), shaped
    (n, C, 1, 1) so each pixel is a sample (band dropout per pixel); with ``patches`` (a
    context model, ``sample_patches``) each pixel comes with its square of neighbours,
    (n, C, 2r+1, 2r+1), and the labels stay (n, 1, 1): the loss is the centre's; ``flips``
    (--enable_data_augmentation) turns each patch by a random symmetry of the square. An epoch is one pass
    over the background sample, or as many passes (each in a new order) as make up
    PIXEL_EPOCH_STEPS steps. Seeded by (seed, epoch): a resumed run repeats it. DDP ranks
    take equal shares of the steps. Batches are cut as they are used, so an epoch holds no
    second copy of the sample.
    """

    def __init__(self, sample: PixelSample, seed: int, epoch: int, dist: Dist,
                 patches: Optional[PatchFn] = None, flips: bool = False) -> None:
        self.sample, self.dist, self.patches, self.flips = sample, dist, patches, flips
        self.rng = np.random.default_rng(epoch_seed(seed, epoch))
        passes = math.ceil(pixel_steps(sample, dist) * dist.world / sample_steps(sample))
        self.orders = [sample.n_pos + self.rng.permutation(sample.n_background) for _ in range(passes)]

    def __len__(self) -> int:
        return pixel_steps(self.sample, self.dist)

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        sample, dist = self.sample, self.dist
        steps = sample_steps(sample)
        x, y = torch.from_numpy(sample.x), torch.from_numpy(sample.y)
        for k in range(len(self)):
            j = k * dist.world + dist.rank  # every rank takes the same number of steps
            i = j % steps
            part = self.orders[j // steps][i * PIXEL_BATCH:(i + 1) * PIXEL_BATCH]
            pos = (np.arange(sample.n_pos) if sample.n_pos <= PIXEL_POSITIVES
                   else self.rng.choice(sample.n_pos, PIXEL_POSITIVES, replace=True))
            idx = torch.from_numpy(np.concatenate([pos, part]))
            xs = (x[idx][:, :, None, None] if self.patches is None
                  else torch.from_numpy(self.patches(sample.flat[idx.numpy()])))
            if self.flips and self.patches is not None:
                xs = augment_patches(xs, self.rng)
            yield {"x": xs, "y": y[idx][:, None, None],
                   "valid": torch.ones(idx.numel(), 1, 1, dtype=torch.bool)}


def training_pixels(config: TrainConfig, spec: ModelSpec, data: RasterData, td: TileData) -> Optional[PixelSample]:
    """The pixel sample a local model trains on with the pu loss; None: it trains on windows.

    A local model (``ModelSpec.pixel_sampled``: the per-pixel network, the additive one, the
    small CNN) is a presence-background model; fed 64-px windows it saw a handful of deposits
    per step and only a few hundred steps in all. The other losses weigh classes by the
    area's share, which a sample does not keep. A context model's patches are cut from the
    encoded raster in memory (``sample_patches``); a raster too large for it keeps windows.
    """
    if not spec.pixel_sampled or config.loss != "pu" or td.whole_globe or _patches_out_of_memory(spec, td):
        return None
    return td.pixel_sample(data.usable, config.seed)


def _patches_out_of_memory(spec: ModelSpec, td: TileData) -> bool:
    """A context model whose raster is not kept encoded in memory: no patches to cut, it trains on windows."""
    return bool(spec.context) and td.train_set.memory is None


def sample_patches(spec: ModelSpec, td: TileData) -> Optional[PatchFn]:
    """How a context model's sampled pixels get their neighbours (None: a per-pixel model needs none)."""
    memory = td.train_set.memory
    if not spec.context or memory is None:
        return None
    return partial(memory.patches, radius=spec.context)


def _sample_line(spec: ModelSpec, sample: PixelSample, dist: Dist) -> str:
    """Log line of a model that trains on a pixel sample."""
    side = 2 * spec.context + 1
    what = f"{side} x {side}-pixel patches (each sampled pixel and its neighbours)" if spec.context else "pixels"
    return (f"{spec.name} trains on {what}, not windows: {sample.n_pos} positive and {sample.n_background} "
            f"background pixel(s) of the training area, {pixel_steps(sample, dist)} step(s) of {PIXEL_BATCH} "
            "background pixels an epoch" + _passes_note(sample))


def _positive_fraction(labels: np.ndarray, area: np.ndarray) -> float:
    n = int(area.sum())
    return float((labels.astype(bool) & area).sum() / n) if n else 0.0


# ----------------------------------------------------------------------------- randomness


def seed_everything(seed: int) -> None:
    """Seeds python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A distinct, repeatable seed for each (seed, epoch, rank)."""
    return (int(seed) * 1_000_003 + epoch * 9_973 + rank * 131) % 2**31


def rng_state() -> Dict[str, Any]:
    """RNG states as tensors / JSON-able lists (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "python": [int(version), [int(v) for v in internal], gauss],
    }


MIN_EPOCH_STEPS = 16
"""Optimisation steps an epoch has at least. A small raster in 64-px tiles has a few dozen
training windows: two batches an epoch, 60 steps in 30 epochs, left the per-pixel model
nearly flat on the Ecuador landslides (5-fold cv: success rate 0.77, pooled held-out AUC
0.66, fold maps of different scales); larger rasters have more windows than this and are
unchanged."""


def epoch_draws(n_windows: int, batch_size: int, whole_globe: bool = False) -> int:
    """Windows drawn per epoch: as many as there are, and at least MIN_EPOCH_STEPS batches' worth."""
    return n_windows if whole_globe else max(n_windows, MIN_EPOCH_STEPS * batch_size)


def epoch_indices(weights: List[float], seed: int, epoch: int, dist: Dist, draws: Optional[int] = None) -> List[int]:
    """This rank's training windows for an epoch: positive-aware draws, split over the ranks.

    ``draws`` draws (default: as many as there are windows), with replacement, by
    ``weights``; every rank gets the same number of windows, so DDP ranks run the same
    number of steps.
    """
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    n = int(draws) if draws else len(weights)
    drawn = torch.multinomial(torch.tensor(weights, dtype=torch.double), n, replacement=True, generator=g).tolist()
    per_rank = math.ceil(n / dist.world)
    drawn = (drawn * dist.world)[: per_rank * dist.world]
    return drawn[dist.rank::dist.world]


# ----------------------------------------------------------------------------- optimisation


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimiser(model: nn.Module, config: TrainConfig, steps_per_epoch: int
                   ) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with a per-step warm-up + cosine schedule over all epochs."""
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    total = max(1, config.num_epochs * steps_per_epoch)
    warmup = max(1, int(WARMUP_FRACTION * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warmup))
    return opt, sched


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


# ----------------------------------------------------------------------------- epochs


@dataclass
class Step:
    """What one training step needs, bundled so the loop reads as prose."""

    model: nn.Module
    loss_fn: Callable[..., torch.Tensor]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: Any
    autocast: Callable[[], Any]
    device: torch.device
    max_grad_norm: float
    area: Optional[torch.Tensor]
    penalty: Optional[Callable[[], torch.Tensor]] = None
    augment: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None


def band_penalty_fn(model: nn.Module, encoder: BandEncoder, strength: float, log: LogFn,
                    screen: Callable[[], Optional[Sequence[float]]] = lambda: None
                    ) -> Optional[Callable[[], torch.Tensor]]:
    """The group-lasso term on the layer that reads the bands (None when off or not possible).

    Its strength is ``strength`` x sqrt(ln(bands)) (``band_penalty_scale``). ``screen`` gives
    each band's share of it (band screening); called only when the term applies.
    """
    if strength <= 0:
        return None
    layer = getattr(model, "band_layer", None)
    weight = getattr(layer, "weight", None)
    if weight is None or weight.dim() < 2 or weight.shape[1] != encoder.out_channels:
        log(f"note: --band_penalty is ignored: {type(model).__name__} has no band layer to penalise")
        return None
    groups = encoder.channel_groups()
    total = strength * band_penalty_scale(len(groups))
    if total <= 0:
        log("note: --band_penalty is off: a single band leaves nothing to select")
        return None
    log(f"band penalty {strength:g} x sqrt(ln {len(groups)} bands) = {total:.3g}")
    weights = screen()
    return lambda: total * band_group_penalty(layer.weight, groups, weights)  # read each step: may be a view


def band_penalty_scale(bands: int) -> float:
    """sqrt(ln(bands)): the factor on --band_penalty for a stack of ``bands`` bands.

    Why: the penalty must outweigh the chance evidence of the strongest noise band, and the
    largest of ``p`` chance correlations grows as sqrt(2 ln p) (the lasso's universal
    threshold). With one factor for every stack, a penalty strong enough to drop the noise
    of 99 bands starved a 5-band terrain stack (5-fold cv, README "Skill": the demo's 99
    bands want 0.03, Ecuador's 5 bands 0.01 to 0.02); 0.014 x sqrt(ln p) gives 0.030 and 0.018.
    """
    return math.sqrt(math.log(bands)) if bands > 1 else 0.0


def band_augmentation(encoder: BandEncoder) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Band noise + band dropout of a training batch (see dataset.augment_bands)."""
    groups = encoder.channel_groups()
    return lambda x, valid: augment_bands(x, valid, groups)


def band_ranking(model: nn.Module, encoder: BandEncoder) -> Optional[List[Tuple[str, float]]]:
    """(band, weight) of the layer that reads the bands, strongest first, relative to the strongest.

    The weight of a band is the root-mean-square of its band-layer weights (per encoded
    channel, so one-hot bands are not favoured); inputs are standardised, so it says how
    much the model leans on each band. None for models without a band layer.
    """
    weight = getattr(getattr(model, "band_layer", None), "weight", None)
    if weight is None or weight.shape[1] != encoder.out_channels:
        return None
    w = weight.detach().float().transpose(0, 1).reshape(weight.shape[1], -1).pow(2).sum(dim=1)
    norms = [float((w[list(g)].sum() / len(g)).sqrt()) for g in encoder.channel_groups()]
    top = max(norms, default=0.0) or 1.0
    return sorted(((name, n / top) for name, n in zip(encoder.band_names, norms)), key=lambda t: -t[1])


def _band_line(name: str, ranking: List[Tuple[str, float]]) -> str:
    weak = sum(1 for _, r in ranking if r < 0.1)
    shown = ", ".join(f"{band} {r:.2f}" for band, r in ranking[:12])
    return (f"{name}: band weights (band layer, relative to the strongest): {shown}"
            + (" ..." if len(ranking) > 12 else "") + f"; {weak} of {len(ranking)} band(s) below 0.1")


def diverged(what: str) -> TrainingError:
    """The error for NaN / inf losses or outputs, with what to try."""
    return TrainingError(
        f"{what}; lower --learning_rate (e.g. by 10x), try --amp_mode none, and check the raster's nodata "
        "value (huge or NaN values that are not declared as nodata)"
    )


def run_epoch(step: Step, loader: DataLoader, cb: Callbacks, where: str,
              on_batch: Callable[[float], None]) -> float:
    """One pass over this rank's training windows; returns the mean training loss."""
    step.model.train()
    total, count = 0.0, 0
    n = max(1, len(loader))
    area = None if step.area is None else step.area.to(step.device)
    for i, batch in enumerate(loader):
        cb.check_stop(where)
        x, y, valid = (batch[k].to(step.device, non_blocking=True) for k in ("x", "y", "valid"))
        if step.augment is not None:
            x = step.augment(x, valid)
        with step.autocast():
            logits = step.model(x)
        loss = step.loss_fn(logits.float(), y, valid, area)
        if step.penalty is not None:
            loss = loss + step.penalty()
        if not torch.isfinite(loss):
            raise diverged(f"the training loss became {loss.item()} ({where}, batch {i + 1})")
        step.opt.zero_grad(set_to_none=True)
        step.scaler.scale(loss).backward()
        step.scaler.unscale_(step.opt)
        nn.utils.clip_grad_norm_(step.model.parameters(), step.max_grad_norm)
        step.scaler.step(step.opt)
        step.scaler.update()
        step.sched.step()
        total += float(loss.item())
        count += 1
        on_batch((i + 1) / n)
    return total / max(1, count)


@dataclass
class Evaluation:
    """Validation numbers plus the material for the report."""

    metrics: Dict[str, float]
    tile_stats: Dict[str, List[float]] = field(default_factory=dict)
    examples: List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)


def _iou_accuracy(pred: np.ndarray, y: np.ndarray, num_classes: int = 2) -> Tuple[float, float]:
    """Mean IoU over classes present in prediction or label, and pixel accuracy."""
    if pred.size == 0:
        return float("nan"), float("nan")
    ious = []
    for k in range(num_classes):
        inter = np.sum((pred == k) & (y == k))
        union = np.sum((pred == k) | (y == k))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious)) if ious else float("nan"), float(np.mean(pred == y))


def _aucs(scores: np.ndarray, labels: np.ndarray, weights: Optional[np.ndarray]) -> Tuple[float, float]:
    from .metrics import pixel_aucs

    out = pixel_aucs(scores, labels, weights)
    nan = float("nan")
    return (nan if out["roc_auc"] is None else out["roc_auc"], nan if out["pr_auc"] is None else out["pr_auc"])


@torch.no_grad()
def validate(step: Step, loader: DataLoader, cb: Callbacks, seed: int, keep_examples: int = 0) -> Evaluation:
    """Validation loss, mean IoU, accuracy and ROC/PR AUC over the valid validation pixels."""
    step.model.eval()
    losses, weights_sum = 0.0, 0.0
    probs: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    areas: List[np.ndarray] = []
    stats: Dict[str, List[float]] = {"loss": [], "iou": [], "accuracy": []}
    examples: List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    area = None if step.area is None else step.area.to(step.device)
    for batch in loader:
        cb.check_stop("validation")
        x, y, valid = (batch[k].to(step.device) for k in ("x", "y", "valid"))
        with step.autocast():
            logits = step.model(x)
        logits = logits.float()
        prob = torch.softmax(logits, dim=1)[:, 1]
        for b in range(x.shape[0]):
            v = valid[b]
            if not v.any():
                continue
            one = step.loss_fn(logits[b:b + 1], y[b:b + 1], v[None], area)
            n = float(v.sum())
            losses += float(one) * n
            weights_sum += n
            p, t = prob[b][v].cpu().numpy(), y[b][v].cpu().numpy()
            if not (math.isfinite(float(one)) and np.isfinite(p).all()):
                raise diverged("the model's validation outputs became NaN or infinite")
            iou, acc = _iou_accuracy((p >= 0.5).astype(np.int64), t)
            stats["loss"].append(float(one))
            stats["iou"].append(iou)
            stats["accuracy"].append(acc)
            probs.append(p)
            labels.append(t)
            if area is not None:
                areas.append(area.expand_as(v)[v].cpu().numpy())
            if len(examples) < keep_examples:
                examples.append((prob[b].cpu().numpy(), y[b].cpu().numpy(), v.cpu().numpy(), x[b, :3].cpu().numpy()))
    if not probs:
        nan = float("nan")
        return Evaluation({k: nan for k in METRIC_KEYS}, stats, examples)
    p, t = np.concatenate(probs), np.concatenate(labels)
    w = np.concatenate(areas) if areas else None
    if p.size > MAX_VAL_PIXELS:
        keep = np.random.default_rng(seed).choice(p.size, MAX_VAL_PIXELS, replace=False)
        p, t, w = p[keep], t[keep], (None if w is None else w[keep])
    iou, acc = _iou_accuracy((p >= 0.5).astype(np.int64), t)
    roc, pr = _aucs(p, t, w)
    metrics = {"val_loss": losses / max(weights_sum, 1e-12), "val_iou": iou, "val_accuracy": acc,
               "val_roc_auc": roc, "val_pr_auc": pr}
    return Evaluation(metrics, stats, examples)


# ----------------------------------------------------------------------------- checkpoint content


def _versions() -> Dict[str, str]:
    from . import __version__

    out = {"stack_segmenter": str(__version__), "torch": str(torch.__version__), "numpy": str(np.__version__)}
    for dist_name in ("torch-harmonics", "rasterio", "geopandas"):
        try:  # metadata only: importing torch-harmonics here would break "imported only when used"
            out[dist_name] = importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def checkpoint_payload(config: TrainConfig, spec: ModelSpec, kwargs: Dict[str, Any], data: RasterData,
                       td: TileData, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                       state: "LoopState") -> Dict[str, Any]:
    """The self-describing checkpoint dict (keys listed in docs/ARCHITECTURE.md), loop state included."""
    info = data.info
    return {
        "model_name": spec.name,
        "model_kwargs": kwargs,
        "in_channels": int(info.count),
        "num_classes": 2,
        "band_names": list(info.band_names),
        "band_count": int(info.count),
        "encoder": td.encoder.to_dict(),
        "nodata": [None if v is None else float(v) for v in info.nodata],
        "crs_wkt": info.crs_wkt,
        "transform": [float(v) for v in info.transform],
        "pixel_size": [float(v) for v in info.res],
        "raster_shape": [int(info.height), int(info.width)],
        "tile_size": [int(td.tile[0]), int(td.tile[1])],
        "whole_globe": bool(td.whole_globe),
        "validation_blocks": [[int(v) for v in b] for b in td.split.val_blocks],
        "validation_blocks_map": [[float(v) for v in box_to_map(b, info)] for b in td.split.val_blocks],
        "split_summary": json.loads(json.dumps(td.split.summary, default=str)),
        "seed": int(config.seed),
        "versions": _versions(),
        "config": json.loads(config.to_json()),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state(),
        **state.to_checkpoint(),
    }


def _json_safe(values: Dict[str, Any]) -> Dict[str, Any]:
    """NaN / inf become None (JSON has no NaN)."""
    from .metrics import finite_or_none

    return {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in values.items()}


def monitor_score(metrics: Dict[str, float]) -> Tuple[str, float]:
    """(name, score to maximise): ROC AUC when defined, else minus the validation loss."""
    auc = metrics.get("val_roc_auc", float("nan"))
    if auc is not None and math.isfinite(auc):
        return "val_roc_auc", float(auc)
    return "val_loss", -float(metrics.get("val_loss", float("inf")))


# ----------------------------------------------------------------------------- how long to train


MIN_DEPOSITS_PER_BAND = 10
"""Training deposits per band below which ``--epoch_choice auto`` lets the validation blocks stop.

Why: with few deposits per band (the demo: about one per band, 95 of its 99 bands noise) the
per-pixel network memorises the deposits through chance patterns in the bands as it trains
on, and the validation blocks see it (their AUC falls from epoch 3 to 5 on in every fold);
stopping there is worth 0.04 to 0.06 of held-out AUC. With many deposits per band (Ecuador
about 19 to 22 in a fold, Cloncurry about 40) the validation block's early peaks are the block's own
character, not overfitting: training the whole schedule gained 0.01 to 0.04 (5-fold cv,
seeds 0 to 3, README "Skill"). Ten events per variable is the classic floor for a
regression model's stability (Peduzzi et al. 1996).
"""


def training_deposits(data: RasterData, area: np.ndarray) -> int:
    """Positive features (points, or polygons by their representative point) inside ``area``."""
    from .evaluate import deposit_pixels

    points = data.labels.positive_points
    if points is None or len(points) == 0:
        return 0
    rc, inside = deposit_pixels(points, *area.shape)
    return int(area[rc[inside, 0], rc[inside, 1]].sum())


def choose_epochs_by_validation(config: TrainConfig, spec: ModelSpec, data: RasterData, td: TileData,
                                sample: Optional[PixelSample]) -> Tuple[bool, str]:
    """(whether the validation blocks choose the epochs, why), from ``--epoch_choice``.

    ``auto``: the schedule when the training deposits are at least MIN_DEPOSITS_PER_BAND per band
    value the model reads at a pixel: its bands, times the patch of a context model, whose
    squares of neighbours give every deposit a fingerprint to learn (the small CNN on Ecuador,
    109 deposits for 5 bands x 5 x 5 values: success rate 0.997 after the 60-epoch schedule).
    """
    if config.epoch_choice == "validation":
        return True, "--epoch_choice validation"
    if config.epoch_choice == "schedule":
        return False, "--epoch_choice schedule"
    if sample is None:
        return True, "the model trains on windows, not pixels"
    deposits = training_deposits(data, td.train_area(data.usable))
    side = 2 * spec.context + 1
    values = td.encoder.band_count * side * side  # what the model reads at a pixel
    what = (f"{values} band value(s) in each {side} x {side}-pixel patch ({td.encoder.band_count} band(s))"
            if spec.context else f"{values} band(s)")
    per_band = deposits / max(1, values)
    unit = "per band value" if spec.context else "per band"
    if per_band < MIN_DEPOSITS_PER_BAND:
        return True, (f"{deposits} training deposit(s) for {what}, {per_band:.1f} {unit}, under "
                      f"{MIN_DEPOSITS_PER_BAND}: the network could learn them by chance patterns in the bands")
    return False, (f"{deposits} training deposit(s) for {what}, {per_band:.1f} {unit} (at least "
                   f"{MIN_DEPOSITS_PER_BAND})")


# ----------------------------------------------------------------------------- loop state


@dataclass
class LoopState:
    """Where the training loop stands, saved whole in every checkpoint and restored whole on resume.

    A resumed run continues exactly where an uninterrupted one would be: the same epoch, the
    same history, the same best weights and the same patience counter (early stopping).

    Attributes:
        epoch: epochs finished.
        history: one metric dict per finished epoch (NaN as None).
        best: ``{"epoch", "score", "metric", "state_dict"}`` of the best validation epoch
            (with ``keep_last``: of the latest epoch).
        stale: epochs since the best one (early stopping stops when it reaches --patience).
        keep_last: the schedule, not the validation blocks, sets the epochs (``--epoch_choice``):
            every epoch counts as the one to keep and nothing stops early. Not saved: each run
            decides it afresh.
    """

    epoch: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    best: Optional[Dict[str, Any]] = None
    stale: int = 0
    keep_last: bool = False

    def to_checkpoint(self) -> Dict[str, Any]:
        """The checkpoint keys that hold the loop state (``epoch``/``history``/``best`` as before)."""
        return {"epoch": int(self.epoch), "history": list(self.history), "best": self.best,
                "patience_counter": int(self.stale)}

    @classmethod
    def from_checkpoint(cls, ckpt: Dict[str, Any]) -> "LoopState":
        """The state a checkpoint holds; older checkpoints without a counter get it from the best epoch."""
        epoch = int(ckpt.get("epoch") or 0)
        best = ckpt.get("best")
        stale = ckpt.get("patience_counter")
        if stale is None:  # written before the counter was saved: epochs since the best one
            stale = epoch - int(best["epoch"]) if best and best.get("epoch") else 0
        return cls(epoch=epoch, history=list(ckpt.get("history") or []), best=best, stale=int(stale))

    def record(self, row: Dict[str, Any], model: nn.Module) -> bool:
        """Adds a finished epoch's metrics; keeps its weights when it is the best so far. Returns improved."""
        name, score = monitor_score(row)
        improved = (self.keep_last or self.best is None or self.best.get("metric") != name
                    or score > float(self.best["score"]))
        if improved:
            self.best = {"epoch": int(row["epoch"]), "score": score, "metric": name,
                         "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            self.stale = 0
        else:
            self.stale += 1
        self.history.append(_json_safe(row))
        self.epoch = int(row["epoch"])
        return improved

    def should_stop(self, patience: int) -> bool:
        """Early stopping: ``patience`` epochs in a row without improvement (0 = never; never with ``keep_last``)."""
        return bool(patience) and not self.keep_last and self.stale >= patience


# ----------------------------------------------------------------------------- one model


@dataclass
class ModelRun:
    """The outcome of training one model (what the result and the reports need)."""

    name: str
    checkpoint: Path
    output_dir: Path
    epochs_run: int
    epoch: int
    final: Evaluation
    history: List[Dict[str, Any]]
    num_params: int
    training_time: float
    members: int = 1
    block_map: Optional[Any] = None  # reports.BlockMap: the validation blocks and deposits, for the report


def _loader(dataset: TileDataset, batch_size: int, config: TrainConfig, indices: Optional[List[int]] = None,
             seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, shuffle=False,
                      num_workers=config.num_workers, generator=g, persistent_workers=False)


def tiles_for_model(config: TrainConfig, spec: ModelSpec, data: RasterData, tiles: Dict[Any, TileData],
                    resumed: Optional[Dict[str, Any]], log: LogFn,
                    progress: Optional[Callable[[float], None]] = None) -> TileData:
    """Split, encoder and datasets of one model; a resumed model keeps its statistics and its split."""
    tile, whole_globe = tile_for(config, spec, data, log)
    buffer = spec.split_buffer
    if resumed is not None and not (resumed.get("split_summary") or {}).get("masked"):
        buffer = None  # trained before local models had a narrow buffer: resume on the split it had
    if resumed is not None:  # the statistics the weights were trained with
        td = prepare_tiles(config, data, tile, whole_globe, BandEncoder.from_dict(resumed["encoder"]), log,
                           split_buffer=buffer)
        check_same_split(td.split.val_blocks, resumed, config.checkpoint_file(spec.name))
        return td
    if (tile, whole_globe, buffer) not in tiles:
        tiles[(tile, whole_globe, buffer)] = prepare_tiles(config, data, tile, whole_globe, None, log, progress,
                                                           split_buffer=buffer)
    return tiles[(tile, whole_globe, buffer)]


def start_model_files(config: TrainConfig, spec: ModelSpec, data: RasterData, td: TileData, runlog: RunLog,
                      lines: List[str], resumed: bool) -> Path:
    """The model folder's first files (train.log, validation_blocks.gpkg, config.json), once every check passed."""
    out_dir = prepare_folder(config.model_dir(spec.name), "the training output folder (--output_path)")
    runlog.attach(out_dir / "train.log", lines, resumed=resumed)
    write_blocks_gpkg(td.split.val_blocks, data.info, out_dir / "validation_blocks.gpkg")
    write_text_atomic(out_dir / "config.json", config.to_json() + "\n")
    return out_dir


def member_seed(seed: int, index: int) -> int:
    """The seed of ensemble member ``index`` (0-based): member 0 is the run's own seed."""
    return int(seed) + int(index)


@dataclass
class MemberOutcome:
    """What training one member produced (its model holds the best weights afterwards)."""

    model: nn.Module
    step: Step
    history: List[Dict[str, Any]]
    best: Optional[Dict[str, Any]]
    epochs_run: int
    epoch: int
    payload: Dict[str, Any]


@dataclass
class Ensemble:
    """The members of one model's checkpoint: finished ones and the one being trained."""

    size: int
    finished: List[Dict[str, Any]] = field(default_factory=list)

    def extras(self, index: int, seed: int) -> Dict[str, Any]:
        """The checkpoint keys that describe the ensemble while member ``index`` trains."""
        return {"members": list(self.finished), "member_index": int(index),
                "ensemble": {"size": int(self.size),
                             "seeds": [member_seed(seed, k) for k in range(max(self.size, len(self.finished)))]}}


class MemberMean(nn.Module):
    """An ensemble as one model for validation: ranks pixels as prediction's mean of calibrated members does.

    Prediction averages each member's calibrated probability (``calibration.class1_probability``
    with its scale and offset), so a member with a sharper or higher raw output does not lead
    the mean. The output is two-class logits whose class-1 probability is that mean shifted
    back by the members' mean offset (a monotone shift: every AUC and held-out deposit figure
    is the map's), so thresholds and the validation loss read it as they read one member's
    raw output.
    """

    def __init__(self, models: List[nn.Module], calibrations: Optional[Sequence[Optional[Dict[str, Any]]]] = None
                 ) -> None:
        from .calibration import member_calibration

        super().__init__()
        self.members = nn.ModuleList(models)
        cals = list(calibrations) if calibrations is not None else [None] * len(models)
        weight = next(models[0].parameters(), None) if models else None
        device = None if weight is None else weight.device
        self.calibrations = [member_calibration(c, device) for c in cals]  # (offset, scale, ranks) each
        self.shift = sum(offset for offset, _, _ in self.calibrations) / max(1, len(self.calibrations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .calibration import class1_probability

        probs = torch.stack([class1_probability(m(x), *cal)
                             for m, cal in zip(self.members, self.calibrations)]).mean(dim=0)
        p = probs.double().clamp(1e-300, 1.0 - 1e-16)
        z = (torch.log(p) - torch.log1p(-p) - self.shift).float()
        return torch.stack([torch.zeros_like(z), z], dim=1)


def member_step(config: TrainConfig, data: RasterData, td: TileData, kwargs: Dict[str, Any], seed: int, dist: Dist,
                device: torch.device, autocast: Callable[[], Any], log: LogFn,
                sample: Optional[PixelSample] = None, patches: bool = False) -> Tuple[nn.Module, Step]:
    """A fresh member (weights drawn from ``seed``) and what one optimisation step needs: optimiser, loss, ...

    ``sample``: the member trains on pixels (``PixelBatches``), which sets the steps per epoch;
    ``patches``: on pixel patches, so the step runs the model's centre output (``PatchCentre``).
    """
    seed_everything(epoch_seed(seed, 0))
    model = build_model(**kwargs).to(device)
    wrapped: nn.Module = PatchCentre(model) if patches else model
    if dist.enabled:
        wrapped = nn.parallel.DistributedDataParallel(wrapped,
                                                      device_ids=[device.index] if device.type == "cuda" else None)
    if sample is not None:
        steps = pixel_steps(sample, dist)
    else:
        draws = epoch_draws(len(td.train_set), config.batch_size, td.whole_globe)
        steps = math.ceil(math.ceil(draws / dist.world) / config.batch_size)
    opt, sched = make_optimiser(model, config, steps)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp_mode == "fp16")
    loss_fn = make_loss(config.loss, pos_weight=positive_weight(td.pos_fraction),
                        label_smoothing=config.label_smoothing, pu_prior=config.pu_prior)
    return model, Step(wrapped, loss_fn, opt, sched, scaler, autocast, device, config.max_grad_norm, td.area,
                       penalty=band_penalty_fn(model, td.encoder, config.band_penalty, log,
                                               lambda: td.band_weights(data.usable, config.seed, log)),
                       augment=band_augmentation(td.encoder) if config.augment else None)


def train_member(config: TrainConfig, spec: ModelSpec, data: RasterData, td: TileData, kwargs: Dict[str, Any],
                 index: int, ensemble: Ensemble, resumed: Optional[Dict[str, Any]], dist: Dist, device: torch.device,
                 autocast: Callable[[], Any], cb: Callbacks, log: LogFn, ckpt_path: Path,
                 progress: Callable[[float], None], keep_last: bool = False) -> MemberOutcome:
    """The training loop of one model (one ensemble member): epochs, checkpoint each epoch, early stop.

    ``resumed`` (the checkpoint's training state of this member) continues where it
    stopped. ``keep_last``: the schedule sets the epochs (``LoopState.keep_last``). Returns
    with the best (``keep_last``: the last) weights loaded into the model.
    """
    seed = member_seed(config.seed, index)
    n = ensemble.size
    part = spec.part(index)
    label = f"{spec.name} member {index + 1}/{n}" if n > 1 else spec.name
    sample = training_pixels(config, spec, data, td)
    patches = sample_patches(part, td) if sample is not None else None
    model, step = member_step(config, data, td, kwargs, seed, dist, device, autocast, log, sample, patches is not None)
    opt, sched = step.opt, step.sched
    if index < spec.part_count or resumed is not None:
        log(f"{part.name}: {count_parameters(model)} parameters, tile {td.tile[0]} x {td.tile[1]}, "
            f"{td.encoder.out_channels} input channel(s), loss {config.loss} (positive weight "
            f"{positive_weight(td.pos_fraction):.1f}, {100 * td.pos_fraction:.3f}% positive pixels in the training "
            f"area), device {device}, AMP {config.amp_mode}" + (f", DDP x{dist.world}" if dist.enabled else "")
            + (f", ensemble of {n} (seeds {seed - index}..{seed - index + n - 1})" if n > 1 else ""))
    if index < spec.part_count or resumed is not None:
        if sample is not None:
            log(_sample_line(part, sample, dist))
        elif spec.pixel_sampled and config.loss == "pu" and not td.whole_globe and _patches_out_of_memory(spec, td):
            log(f"note: {spec.name} trains on windows: its pixel patches are cut from the encoded raster kept in "
                "memory, and this raster is too large for that (the per-pixel pixel_* models train on pixels at "
                "any size)")
    if n > 1:
        log(f"{label}: seed {seed}" + (f", {part.name}" if spec.parts else ""))

    state = LoopState()
    if resumed is not None:
        model.load_state_dict(resumed["state_dict"])
        if resumed.get("optimizer") and config.num_epochs > 0:
            opt.load_state_dict(resumed["optimizer"])
            sched.load_state_dict(resumed["scheduler"])
        state = LoopState.from_checkpoint(resumed)
    state.keep_last = keep_last
    start = state.epoch

    def payload() -> Dict[str, Any]:
        return {**checkpoint_payload(config, spec, kwargs, data, td, model, opt, sched, state),
                **ensemble.extras(index, config.seed)}

    if dist.main and index > 0 and resumed is None and config.num_epochs > 0:
        # The file now names this member as the one in training (epoch 0): a cancel before its
        # first epoch ends resumes HERE, never by re-training the finished member before it.
        save_checkpoint(ckpt_path, payload(), log=log)
    val_loader = _loader(td.val_set, config.batch_size, config)
    eval_step = replace(step, model=model)  # validation runs on the unwrapped model (no DDP sync)
    epochs_run = 0
    last_epoch = config.num_epochs
    if config.num_epochs > 0 and start >= config.num_epochs:
        log(f"{label} already trained {start} epoch(s) (--num_epochs {config.num_epochs}); nothing to train")
    elif resumed is not None and state.should_stop(config.patience):
        log(f"{label} stopped early at epoch {start} ({state.stale} epoch(s) without improvement, --patience "
            f"{config.patience}); nothing to train (raise --patience to go on)")
        last_epoch = start
    durations: List[float] = []
    for epoch in range(start + 1, last_epoch + 1):
        epoch_started = time.time()
        seed_everything(epoch_seed(seed, epoch, dist.rank))
        loader: Any
        if sample is not None:
            loader = PixelBatches(sample, seed, epoch, dist, patches, config.augment)
        else:
            indices = epoch_indices(td.split.train_weights if not td.whole_globe else [1.0], seed, epoch, dist,
                                    epoch_draws(len(td.train_set), config.batch_size, td.whole_globe))
            loader = _loader(td.train_set, config.batch_size, config, indices, epoch_seed(seed, epoch, dist.rank))
        where = f"{label} epoch {epoch}/{config.num_epochs}"

        def on_batch(frac: float, epoch: int = epoch) -> None:
            progress((epoch - 1 - start + frac * 0.9) / max(1, config.num_epochs - start))

        train_loss = run_epoch(step, loader, cb, where, on_batch)
        ev = validate(eval_step, val_loader, cb, config.seed)
        row = {"model": spec.name, **({"member": index + 1} if n > 1 else {}), "epoch": epoch,
               "train_loss": train_loss, **ev.metrics, "lr": float(sched.get_last_lr()[0])}
        improved = state.record(row, model)
        epochs_run += 1
        if dist.main:
            save_checkpoint(ckpt_path, payload(), log=log)
        cb.metric(_json_safe(row))
        durations.append(time.time() - epoch_started)
        log(_epoch_line(row, improved and not state.keep_last) + _pace(durations, config.num_epochs - epoch))
        progress((epoch - start) / max(1, config.num_epochs - start))
        if state.should_stop(config.patience):
            assert state.best is not None
            log(f"early stopping: {state.best['metric']} has not improved for {state.stale} epoch(s) "
                f"(best epoch {state.best['epoch']})")
            break
    outcome_payload = payload()  # the last epoch's weights, before the best ones are loaded
    if state.best is not None and state.best.get("state_dict"):
        model.load_state_dict(state.best["state_dict"])
    return MemberOutcome(model, eval_step, state.history, state.best, epochs_run, state.epoch, outcome_payload)


def calibrate_member(config: TrainConfig, data: RasterData, td: TileData, model: nn.Module, step: Step,
                     cb: Callbacks, log: LogFn, label: str) -> Optional[Dict[str, Any]]:
    """The member's calibration (core/calibration.py): its rank table and offset over the training windows.

    Each logit becomes the normal score of its rank among the training windows' logits, times
    the fixed contrast, plus the offset that makes the mean the training base rate. None
    (logged) when the training area holds no positive: there is no base rate to meet.
    """
    from .calibration import MAX_LOGITS, calibration_record

    lab = data.labels
    rate, points = area_base_rate(data, td.train_area(data.usable))
    if not 0.0 < rate < 1.0:
        log(f"{label}: not calibrated (the training area holds no positive); the map will be a score")
        return None
    plain = TileDataset(config.raster_path, td.train_set.windows, lab.labels, td.encoder, td.train_set.study_mask,
                        augment=False, spherical=td.whole_globe)
    logits = collect_logits(model, _loader(plain, config.batch_size, config), step, cb, MAX_LOGITS, config.seed)
    record = calibration_record(logits, rate, "deposits per pixel" if points is not None else "positive pixels")
    log(f"{label}: calibrated to the training base rate {rate:.3g} ({record['base_rate_of']}): mean output "
        f"{record['mean_before']:.3g} -> {record['mean_after']:.3g} (rank in the training area x contrast "
        f"{record['logit_scale']:.3g}, offset {record['logit_offset']:+.2f})")
    return record


def area_base_rate(data: RasterData, area: np.ndarray) -> Tuple[float, Optional[int]]:
    """(base rate, deposits) of ``area`` (bool (H, W)): deposits per pixel for point labels, else the
    share of positive pixels (deposits None)."""
    from .calibration import base_rate
    from .evaluate import only_points

    lab = data.labels
    positives = int((lab.labels.astype(bool) & area).sum())
    points = training_deposits(data, area) if only_points(lab.summary) and len(lab.positive_points) else None
    return base_rate(positives, int(area.sum()), points), points


def refit_epochs(outcome: MemberOutcome) -> int:
    """The epochs of a member's validated model: its best epoch (the last one with ``keep_last``)."""
    best = outcome.best or {}
    return max(1, int(best.get("epoch") or outcome.epoch))


def refit_member(config: TrainConfig, setup: ModelSetup, data: RasterData, outcome: MemberOutcome,
                 member: Dict[str, Any], index: int, dist: Dist, device: torch.device, autocast: Callable[[], Any],
                 cb: Callbacks, log: LogFn, progress: Callable[[float], None]) -> Dict[str, Any]:
    """``--final_fit whole_area``: the member trained again on the whole training area (a per-pixel model).

    The validation blocks are there to choose when to stop; once they have, holding out their
    deposits (a fifth of a few dozen) only costs the map. The member is retrained from the
    same seed (same initial weights and learning-rate schedule) on a pixel sample of every
    usable pixel for the epochs its validation chose, then calibrated on that sample: its own
    rank table, the offset to the whole area's base rate. The validated weights and their
    calibration stay in the member as ``held_out_state_dict`` and ``held_out_calibration``:
    the final validation scores those, so its figures stay held-out figures.
    Returns the member entry to save; a cancel before it returns leaves the checkpoint as it
    was (the member is then calibrated and refit again on ``--resume``).
    """
    from .calibration import calibration_record

    td = setup.td
    sample = td.whole_area_sample(data.usable, config.seed)
    if sample is None:
        return member
    seed = member_seed(config.seed, index)
    epochs = refit_epochs(outcome)
    n = setup.ensemble.size
    label = f"{setup.spec.name} member {index + 1}/{n}" if n > 1 else setup.spec.name
    validated = td.pixel_sample(data.usable, config.seed)  # drawn (and kept) when the member trained
    log(f"{label}: final fit on the whole training area (validation blocks included): {sample.n_pos} positive "
        f"pixel(s) (the validated model had {validated.n_pos if validated else 0}), {epochs} epoch(s) as the "
        "validated model")
    patches = sample_patches(setup.spec.part(index), td)
    model, step = member_step(config, data, td, setup.kwargs(index), seed, dist, device, autocast, _quiet, sample,
                              patches is not None)
    for epoch in range(1, epochs + 1):
        seed_everything(epoch_seed(seed, epoch, dist.rank))
        where = f"{label} final fit epoch {epoch}/{epochs}"

        def on_batch(frac: float, epoch: int = epoch) -> None:
            progress((epoch - 1 + frac) / epochs)

        loss = run_epoch(step, PixelBatches(sample, seed, epoch, dist, patches, config.augment), cb, where,
                         on_batch)
        log(f"{where}: train_loss {_fmt(loss)}")
    held_out = member.get("calibration")
    entry = dict(member, held_out_state_dict=member["state_dict"], held_out_calibration=held_out,
                 state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
                 final_fit={"area": "whole", "epochs": epochs, "positive_pixels": int(sample.n_pos),
                            "background_pixels": int(sample.n_background)})
    if held_out is not None:
        rate, _ = area_base_rate(data, data.usable)
        logits = sample_logits(model, sample, step, patches)
        entry["calibration"] = calibration_record(logits, rate, held_out["base_rate_of"])
        log(f"{label}: final fit calibrated to the whole area's base rate {rate:.3g}: rank in the whole area x "
            f"contrast {entry['calibration']['logit_scale']:.3g}, offset {entry['calibration']['logit_offset']:+.2f}")
    progress(1.0)
    return entry


@torch.no_grad()
def sample_logits(model: nn.Module, sample: PixelSample, step: Step, patches: Optional[PatchFn] = None,
                  chunk: int = 65536) -> np.ndarray:
    """Class-1 logits (against class 0) of a local model for the sample's background pixels (``patches``:
    a context model, run on each pixel's patch)."""
    model.eval()
    out: List[np.ndarray] = []
    n = sample.n_background
    chunk = chunk if patches is None else max(1, chunk // 16)  # a patch holds up to (2r+1)^2 pixels
    for i in range(0, n, chunk):
        rows = slice(sample.n_pos + i, sample.n_pos + min(n, i + chunk))
        with step.autocast():
            if patches is None:
                logits = model(torch.from_numpy(sample.x[rows])[:, :, None, None].to(step.device))
            else:
                logits = model.centre(torch.from_numpy(patches(sample.flat[rows])).to(step.device))
            logits = logits.float()[:, :, 0, 0]
        out.append((logits[:, 1] - logits[:, 0]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@torch.no_grad()
def collect_logits(model: nn.Module, loader: DataLoader, step: Step, cb: Callbacks, most: Optional[int],
                   seed: int) -> np.ndarray:
    """Class-1 logits (against class 0) of every valid pixel of the loader's windows; a seeded
    subsample beyond ``most`` (None: all)."""
    model.eval()
    out: List[np.ndarray] = []
    for batch in loader:
        cb.check_stop("calibration")
        x, valid = batch["x"].to(step.device), batch["valid"].to(step.device)
        with step.autocast():
            logits = model(x).float()
        z = logits[:, 1] - logits[:, 0]
        out.append(z[valid].cpu().numpy())
    z = np.concatenate(out) if out else np.zeros(0, np.float32)
    if most is not None and z.size > most:
        z = z[np.random.default_rng(seed).choice(z.size, most, replace=False)]
    return z


def ensemble_size(config: TrainConfig, spec: ModelSpec) -> int:
    """Members of the model: ``--ensemble`` of each part of a mixed model (one part otherwise)."""
    return config.ensemble * spec.part_count


def _resumed_ensemble(config: TrainConfig, spec: ModelSpec, resumed: Optional[Dict[str, Any]], log: LogFn
                      ) -> Tuple[Ensemble, Optional[int]]:
    """The finished members of a resumed checkpoint and the member its training state belongs to."""
    n = ensemble_size(config, spec)
    if resumed is None:
        return Ensemble(n), None
    finished = list(resumed.get("members") or [])
    if len(finished) > n:
        parts = spec.part_count
        raise ConfigError(
            f"--resume: the checkpoint holds {len(finished)} finished ensemble members but --ensemble is "
            f"{config.ensemble}" + (f" ({n} members: {config.ensemble} of each of {parts} parts)" if parts > 1 else "")
            + f"; give --ensemble {math.ceil(len(finished) / parts)} or more, or another output path"
        )
    index = int(resumed.get("member_index", 0))
    if finished and index > 0:
        log(f"--resume: {len(finished)} finished member(s) kept; member {index + 1} continues")
    if index < len(finished) - 1 or (index == len(finished) - 1 and n > 1 and len(finished) > 1):
        log("note: only the last trained member keeps its optimiser state; the other finished members keep "
            "their weights as they are")
    return Ensemble(n, finished), index


@dataclass
class ModelSetup:
    """What every member of one model shares: its split, band statistics and datasets, its ensemble so far."""

    spec: ModelSpec
    td: TileData
    part_kwargs: List[Dict[str, Any]]
    ensemble: Ensemble
    resumed_index: Optional[int]
    checkpoint: Path
    output_dir: Path

    def kwargs(self, index: int) -> Dict[str, Any]:
        """``build_model`` arguments of ensemble member ``index`` (a mixed model's parts in turn)."""
        return self.part_kwargs[self.spec.part_index(index)]


def setup_model(config: TrainConfig, spec: ModelSpec, data: RasterData, tiles: Dict[Any, TileData], dist: Dist,
                runlog: RunLog, backlog: List[str], resumed: Optional[Dict[str, Any]],
                setup_progress: Optional[Callable[[float], None]]) -> ModelSetup:
    """The model's split, statistics and datasets, then its first files (once every check passed)."""
    ckpt_path = config.checkpoint_file(spec.name)
    first_line = len(runlog.lines)
    if resumed is not None:
        runlog(f"resuming {spec.name} from {ckpt_path} (after epoch {resumed.get('epoch', 0)})")
    elif config.resume:
        runlog(f"--resume: no checkpoint at {ckpt_path} yet; starting {spec.name} from scratch")
    ensemble, resumed_index = _resumed_ensemble(config, spec, resumed, runlog)
    td = tiles_for_model(config, spec, data, tiles, resumed, runlog, setup_progress)
    if dist.main:
        start_model_files(config, spec, data, td, runlog, backlog + runlog.lines[first_line:], resumed is not None)
    kwargs = [model_kwargs(spec.part(i).name, td.encoder.out_channels, 2, img_size=td.tile)
              for i in range(spec.part_count)]
    return ModelSetup(spec, td, kwargs, ensemble, resumed_index, ckpt_path, config.model_dir(spec.name))


REFIT_SHARE = 0.25
"""The share of a member's progress bar given to its final fit (``refit_member``)."""


def train_members(config: TrainConfig, setup: ModelSetup, data: RasterData, resumed: Optional[Dict[str, Any]],
                  dist: Dist, device: torch.device, autocast: Callable[[], Any], cb: Callbacks, log: LogFn,
                  progress: Callable[[float], None]) -> List[MemberOutcome]:
    """Trains the members still to train (each calibrated and saved into the checkpoint as it finishes)."""
    spec, ensemble, ckpt_path = setup.spec, setup.ensemble, setup.checkpoint
    only_validate = config.num_epochs == 0 and resumed is not None
    n = ensemble.size if config.num_epochs > 0 else 1
    outcomes: List[MemberOutcome] = []
    sample = training_pixels(config, spec, data, setup.td)
    refit = config.final_fit == "whole_area" and sample is not None
    by_validation = [True] * spec.part_count  # nothing to train (--num_epochs 0): no choice to make
    if config.num_epochs > 0:
        for i in range(spec.part_count):
            part = spec.part(i)
            by_validation[i], why = choose_epochs_by_validation(config, part, data, setup.td, sample)
            log(f"{part.name} epochs: " + (f"until the validation blocks' best epoch (patience {config.patience})"
                                           if by_validation[i] else f"all {config.num_epochs}, the validation "
                                           "blocks measure the last") + f"; {why}")
    share = REFIT_SHARE if refit else 0.0  # of each member's progress
    if config.final_fit == "whole_area" and not refit and config.num_epochs > 0:
        log(f"{spec.name} keeps its validated weights: the final fit on the whole area (--final_fit whole_area) "
            "is for local models (pixel_*, additive_*, cnn_*) trained on pixels with the pu loss")
    for k in range(0 if only_validate else n):
        def member_progress(frac: float, k: int = k, start: float = 0.0, width: float = 1.0 - share) -> None:
            progress((k + start + width * max(0.0, min(1.0, frac))) / n)

        if k < len(ensemble.finished) and k != setup.resumed_index:
            log(f"{spec.name} member {k + 1}/{n} is already trained; kept")
            continue
        state = resumed if (resumed is not None and k == setup.resumed_index) else None
        outcome = train_member(config, spec, data, setup.td, setup.kwargs(k), k, ensemble, state, dist, device,
                               autocast, cb, log, ckpt_path, member_progress,
                               keep_last=not by_validation[spec.part_index(k)])
        outcomes.append(outcome)
        if config.num_epochs == 0:  # no checkpoint to resume: validate an untrained model
            log(f"{spec.name}: --num_epochs 0 without a checkpoint to resume: validating the untrained model")
            if dist.main:
                save_checkpoint(ckpt_path, outcome.payload, log=log)
        elif outcome.epochs_run > 0 or state is None or k >= len(ensemble.finished):
            label = f"{spec.name} member {k + 1}/{n}" if n > 1 else spec.name
            calibration = calibrate_member(config, data, setup.td, outcome.model, outcome.step, cb, log, label)
            member = finished_member(outcome.payload, calibration=calibration, seed=member_seed(config.seed, k),
                                     **({"model_kwargs": setup.kwargs(k)} if spec.parts else {}))
            if refit:
                member = refit_member(config, setup, data, outcome, member, k, dist, device, autocast, cb, log,
                                      partial(member_progress, start=1.0 - share, width=share))
            if k < len(ensemble.finished):
                ensemble.finished[k] = member
            else:
                ensemble.finished.append(member)
            if dist.main:
                save_checkpoint(ckpt_path, {**outcome.payload, **ensemble.extras(k, config.seed)}, log=log)
    return outcomes


def final_validation(config: TrainConfig, setup: ModelSetup, data: RasterData, outcomes: List[MemberOutcome],
                     resumed: Optional[Dict[str, Any]], device: torch.device, autocast: Callable[[], Any],
                     cb: Callbacks, log: LogFn) -> Tuple[Evaluation, int]:
    """Scores the finished model (the members' mean) on the validation blocks: pixels, then held-out deposits.

    Returns the evaluation (metrics with the deposit figures) and the model's parameter count.
    """
    from .evaluate import only_points

    spec, td, ensemble = setup.spec, setup.td, setup.ensemble
    eval_step = Step(build_model(**setup.kwargs(0)).to(device), make_loss(config.loss, pos_weight=positive_weight(
        td.pos_fraction), label_smoothing=config.label_smoothing, pu_prior=config.pu_prior), None, None, None,
        autocast, device, config.max_grad_norm, td.area)  # type: ignore[arg-type]
    final_model = _final_model(ensemble, outcomes, resumed, eval_step.model, setup.kwargs)
    val_loader = _loader(td.val_set, config.batch_size, config)
    final = validate(replace(eval_step, model=final_model), val_loader, cb, config.seed, keep_examples=MAX_FIGURES)
    undefined = [k for k in ("val_roc_auc", "val_pr_auc") if not math.isfinite(final.metrics[k])]
    if undefined:
        log(f"note: {undefined[0]} is undefined (validation pixels hold a single class); reported as NaN")
    members = len(ensemble.finished)
    label = f"{spec.name} (ensemble of {members})" if members > 1 else spec.name
    plain_train = TileDataset(config.raster_path, td.train_set.windows, data.labels.labels, td.encoder,
                              td.train_set.study_mask, augment=False, spherical=td.whole_globe,
                              memory=td.train_set.memory)
    figures = deposit_figures(final_model, td.val_set, plain_train, data.info.shape, data.labels.positive_points,
                              device, autocast, config.batch_size, config.seed,
                              lambda: cb.check_stop("final evaluation"))
    final.metrics.update(figures)  # held-out skill first, fit second (issue 9); pixel figures after
    for line in skill_lines(label, figures):
        log(line)
    refits = [m["final_fit"]["epochs"] for m in ensemble.finished if m.get("final_fit")]
    if refits:
        final.metrics["final_fit_epochs"] = refits
        log(f"note: these held-out figures are the validated model's; the saved model was then trained again on "
            f"the whole training area for {', '.join(str(e) for e in refits)} epoch(s) (--final_fit whole_area), so "
            "the validation blocks are no longer held out from it (Cross-validate measures the whole procedure)")
    log(_final_line(label, final.metrics, points=only_points(data.labels.summary)))
    ranking = band_ranking(outcomes[-1].model, td.encoder) if outcomes else None
    if ranking is not None:
        log(_band_line(f"{spec.name} member {members}" if members > 1 else spec.name, ranking))
    others = sum(count_parameters(build_model(**setup.kwargs(i))) for i in range(1, spec.part_count))
    return final, count_parameters(eval_step.model) + others  # a mixed model's parts together


def train_model(config: TrainConfig, spec: ModelSpec, data: RasterData, tiles: Dict[Any, TileData],
                dist: Dist, device: torch.device, autocast: Callable[[], Any], cb: Callbacks, runlog: RunLog,
                backlog: List[str], progress: Callable[[float], None],
                resumed: Optional[Dict[str, Any]] = None,
                setup_progress: Optional[Callable[[float], None]] = None) -> ModelRun:
    """Trains (or, with 0 epochs, only validates) one model, as ``config.ensemble`` members, and writes its files.

    ``setup_progress`` (0..1) follows the band statistics, ``progress`` (0..1) the training.

    Members differ only by seed (initial weights, window draws, augmentation) and share the
    split and band statistics. The file is rewritten after every epoch and after every
    member (calibrated) finishes, so a cancel keeps the finished members and ``--resume``
    continues the member in training, then trains the rest.

    ``resumed``: the checkpoint to continue (checked by preflight.check_resume). Nothing is
    written for this model until its split and statistics are ready (and, on resume, the
    split is the checkpoint's).
    """
    from .reports import BlockMap

    setup = setup_model(config, spec, data, tiles, dist, runlog, backlog, resumed, setup_progress)
    t0 = time.time()
    outcomes = train_members(config, setup, data, resumed, dist, device, autocast, cb, runlog, progress)
    training_time = time.time() - t0
    final, num_params = final_validation(config, setup, data, outcomes, resumed, device, autocast, cb, runlog)
    members = len(setup.ensemble.finished)
    if members > 1:
        history = [row for m in setup.ensemble.finished for row in (m.get("history") or [])]
    else:
        history = outcomes[-1].history if outcomes else list((resumed or {}).get("history") or [])
    epoch = outcomes[-1].epoch if outcomes else int((resumed or {}).get("epoch", 0))
    progress(1.0)
    block_map = BlockMap.of(data.usable, setup.td.split.val_blocks, setup.td.train_area(data.usable),
                            data.labels.positive_points)
    return ModelRun(spec.name, setup.checkpoint, setup.output_dir, sum(o.epochs_run for o in outcomes), epoch, final,
                    history, num_params, training_time, max(1, members), block_map)


def _final_model(ensemble: Ensemble, outcomes: List[MemberOutcome], resumed: Optional[Dict[str, Any]],
                 template: nn.Module, kwargs_of: Callable[[int], Dict[str, Any]]) -> nn.Module:
    """The model the final validation scores: the mean of the finished members, else the one trained.

    A member refit on the whole area (``refit_member``) is scored by its validated weights
    (and their calibration): the refit learnt from the validation blocks too.

    ``template`` is a model of member 1's architecture on the right device; weights are loaded
    into it (one member) or into copies of it (several); a member of another architecture (a
    mixed model's other parts, ``kwargs_of(index)``) is built anew on that device.
    """
    import copy

    states = [(k, m.get("held_out_state_dict") or m["state_dict"]) for k, m in enumerate(ensemble.finished)]
    calibrations = [(m.get("held_out_calibration") if m.get("held_out_state_dict") else None) or m.get("calibration")
                    for m in ensemble.finished]
    if not states:
        if outcomes:
            return outcomes[-1].model
        assert resumed is not None
        states = [(int(resumed.get("member_index", 0)), model_weights(resumed))]
    models = []
    device = next(template.parameters()).device
    for index, state in states:
        if kwargs_of(index) != kwargs_of(0):
            model = build_model(**kwargs_of(index)).to(device)
        else:
            model = copy.deepcopy(template) if models else template
        model.load_state_dict(state)
        models.append(model.eval())
    return models[0] if len(models) == 1 else MemberMean(models, calibrations).eval()


def _fmt(v: Any) -> str:
    return "nan" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def _epoch_line(row: Dict[str, Any], improved: bool) -> str:
    return (f"{row['model']} epoch {row['epoch']}: train_loss {_fmt(row['train_loss'])}, val_loss "
            f"{_fmt(row['val_loss'])}, val_iou {_fmt(row['val_iou'])}, val_accuracy {_fmt(row['val_accuracy'])}, "
            f"val_roc_auc {_fmt(row['val_roc_auc'])}, val_pr_auc {_fmt(row['val_pr_auc'])}, lr {row['lr']:.2e}"
            + (" (best so far)" if improved else ""))


def _duration(seconds: float) -> str:
    """'45 s', '12 min', '3 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _pace(durations: List[float], epochs_left: int) -> str:
    """'; 12.3 s/epoch, about 20 min left' from the epochs timed so far (early stopping may end sooner)."""
    per_epoch = sum(durations) / len(durations)
    left = f"about {_duration(per_epoch * epochs_left)} left" if epochs_left > 0 else "last epoch"
    return f"; {per_epoch:.1f} s/epoch, {left}"


def _final_line(name: str, m: Dict[str, float], points: bool = False) -> str:
    """Pixel figures of the validation blocks; IoU and accuracy only for polygon labels (a few
    buffered points make them meaningless; they stay in metrics.json)."""
    extra = "" if points else f", mean IoU {_fmt(m['val_iou'])}, accuracy {_fmt(m['val_accuracy'])}"
    return (f"{name} pixel figures of the validation blocks (the weights kept): ROC AUC {_fmt(m['val_roc_auc'])}, "
            f"PR AUC {_fmt(m['val_pr_auc'])}, loss {_fmt(m['val_loss'])}{extra}")


# ----------------------------------------------------------------------------- train()


def train(
    config: TrainConfig,
    *,
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[StopFn] = None,
    log: Optional[LogFn] = None,
    metric: Optional[MetricFn] = None,
    area_mask: Optional[np.ndarray] = None,
) -> Dict[str, Any]:
    """Trains every model of ``config.models`` in turn.

    ``area_mask`` (bool (H, W), for cross-validation) restricts everything (split, band
    statistics, training and validation pixels) to those pixels of the raster.

    Returns ``{"models": {name: {"checkpoint", "output_dir", "epochs_run", "epoch",
    "metrics": {val_loss, val_iou, val_accuracy, val_roc_auc, val_pr_auc}, "final_fit_epochs"
    (per member refit on the whole area; empty when none was), ...}}}`` (undefined metrics are None).

    Raises:
        ConfigError: impossible device / AMP combination, a model already at the checkpoint path
            without --resume / --overwrite, a --resume that would not continue the same run
            (all before anything is written).
        DataError: unusable inputs, an output over an input. ResourceError: out of memory. TrainingError: NaN loss.
        Cancelled: ``should_stop`` said so; the last finished epoch's checkpoint is on disk.
    """
    from .reports import write_reports

    specs = [parse_model_name(m) for m in config.models]
    dist = init_distributed(config, log or (lambda _m: None))
    cb = Callbacks.of(progress if dist.main else None, should_stop,
                      log if dist.main else None, metric if dist.main else None)
    runlog = RunLog(cb.log, dist.main)
    try:
        resumes = check_train_targets(config, [s.name for s in specs], runlog)  # before anything is read
        device = pick_device(config.device, dist)
        autocast = autocast_for(config.amp_mode, device)
        data = prepare_raster(config, runlog, lambda f: cb.progress(PREPARATION * (0.2 + 0.4 * f)), area_mask)
        for spec in specs:  # every refusal comes before the first file of any model is written
            ckpt = resumes[spec.name]
            if ckpt is not None:
                check_resume(config, spec.name, ckpt, data.info, tile_for(config, spec, data, _quiet)[0], runlog)
        backlog = list(runlog.lines)
        tiles: Dict[Any, TileData] = {}
        runs: List[ModelRun] = []
        for i, spec in enumerate(specs):
            def model_progress(frac: float, i: int = i) -> None:
                share = min(1.0, (i + max(0.0, min(1.0, frac))) / len(specs))
                cb.progress(PREPARATION + (1.0 - PREPARATION) * share)

            def setup_progress(frac: float, i: int = i) -> None:
                if i == 0:  # the first model's band statistics end the preparation
                    cb.progress(PREPARATION * (0.6 + 0.4 * min(1.0, frac)))

            try:
                run = train_model(config, spec, data, tiles, dist, device, autocast, cb, runlog, backlog,
                                  model_progress, resumes[spec.name], setup_progress)
            except (RuntimeError, MemoryError) as exc:
                if _is_oom(exc):
                    raise ResourceError(
                        f"out of memory while training {spec.name} (batch {config.batch_size}, tile "
                        f"{config.tile_size or 'automatic'}); use a smaller --tile_size or --batch_size, or a "
                        "smaller model"
                    ) from None
                raise
            runs.append(run)
            if dist.main:
                write_reports(runs, runlog)
            model_progress(1.0)
        return {"models": {r.name: _result(r) for r in runs}}
    finally:
        if dist.enabled:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


def _result(run: ModelRun) -> Dict[str, Any]:
    return {
        "checkpoint": str(run.checkpoint),
        "output_dir": str(run.output_dir),
        "epochs_run": run.epochs_run,
        "epoch": run.epoch,
        "members": run.members,
        "report": str(Path(run.output_dir) / "report.html"),
        "metrics": _json_safe({k: run.final.metrics[k] for k in METRIC_KEYS}),
        "final_fit_epochs": list(run.final.metrics.get("final_fit_epochs") or []),
        "skill": _json_safe({k: v for k, v in run.final.metrics.items() if k.startswith(SKILL_PREFIXES)}),
    }

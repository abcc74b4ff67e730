"""Spatial cross-validation: one honest table of how good each map is.

Why: a map's skill shows only on ground its model never saw, and only beside the methods
geologists already trust. So the raster is cut into k folds of spatial blocks, balanced in
deposits (features) and area (sampling.make_folds); for each fold every candidate - any
registry model, trained by the core's own ``train`` restricted to the other folds, and
the per-pixel baselines of baselines.py - is fitted outside the fold's test blocks and
their buffer, and predicts the test blocks. Their predictions form one out-of-fold map per
candidate, in which every pixel comes from the model that did not train on its fold.

Scores per fold and pooled (deposits counted as features): prediction-rate AUC of the
held-out deposits against all held-out usable pixels, % of held-out deposits in the top
1/5/10/20 % of the held-out area, pixel PR AUC; mean and spread over folds; pooled figures
with a 95 % bootstrap interval over deposits; and beside them the success-rate AUC of the
training deposits (fit, not skill), estimated against a uniform sample of the training area.

Memory: the stack is only ever read window by window (the baselines' samples through
``read_pixels``, their predictions block by block); what is held whole is one byte per
pixel per mask and one float32 out-of-fold map per candidate.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .config import CVConfig, PredictConfig
from .errors import Cancelled, CoreError, DataError
from .events import Callbacks, LogFn, MetricFn, ProgressFn, StopFn
from .files import atomic_path, gdal_errors, prepare_folder, verify_raster, write_atomic, write_text_atomic
from .metrics import (TOP_PERCENTS, area_rank_fractions, bootstrap_mean_interval, finite_or_none, pixel_aucs,
                      rate_curve, top_threshold)
from .raster import CHUNK, MAP_NODATA as NODATA, RasterInfo, read_info, read_valid_mask
from .sampling import Folds, make_folds, point_pixels, write_blocks_gpkg

EVAL_SAMPLE = 20000
"""Uniform training-area pixels that the success-rate AUC ranks the training deposits against."""
MAX_POSITIVES = 20000
"""Positive pixels kept for the baselines (a seeded subsample beyond that, e.g. big polygons)."""
SCORE_KEYS = ("prediction_rate_auc",) + tuple(f"top{k}" for k in TOP_PERCENTS) + ("pr_auc", "success_rate_auc")
CSV_COLUMNS = ("fold", "candidate", "kind", "n_test_deposits", "n_train_deposits") + SCORE_KEYS + (
    "test_pixels", "train_pixels", "fit_seconds", "predict_seconds")
DEEP_WEIGHT = 20.0
"""Progress weight of training a deep model on one fold, against 1 for a baseline."""


# ----------------------------------------------------------------------------- data


@dataclass
class CVData:
    """What every fold and candidate shares."""

    info: RasterInfo
    labels: np.ndarray
    usable: np.ndarray
    mask_path: Optional[str]
    folds: Folds
    fold_map: np.ndarray
    deposits: np.ndarray
    deposit_fold: np.ndarray
    categorical: List[int]
    """1-based categorical bands (names given on the command line resolved to numbers)."""


@dataclass
class Samples:
    """Pixel samples shared by the folds (coordinates always; band values for the baselines)."""

    pos_rc: np.ndarray
    bg_rc: np.ndarray
    eval_rc: np.ndarray
    pos_X: Optional[np.ndarray] = None
    bg_X: Optional[np.ndarray] = None
    eval_X: Optional[np.ndarray] = None
    dep_X: Optional[np.ndarray] = None


@dataclass
class FoldFit:
    """One candidate's fold: the success-rate inputs and the times."""

    train_area_scores: np.ndarray
    train_deposit_scores: np.ndarray
    fit_seconds: float
    predict_seconds: float
    note: str = ""


@dataclass
class CandidateState:
    """The out-of-fold map and the fold rows of one candidate."""

    name: str
    kind: str
    oof: np.ndarray
    rows: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    failed: Optional[str] = None
    """Why the candidate was left out (a deep model that could not train), else None."""
    error: Optional[CoreError] = None


def _prepare(config: CVConfig, log: LogFn) -> CVData:
    """Labels, usable pixels and the folds (no band value is read here)."""
    from .labels import rasterize_labels

    from .encoding import categorical_band_numbers

    tc = config.train
    info = read_info(tc.raster_path)
    categorical_band_numbers(tc.categorical_bands, info.band_names)  # a bad band is refused before any work
    lab = rasterize_labels(tc.labels, info, log)
    usable = read_valid_mask(tc.raster_path)
    if lab.study_mask is not None:
        usable &= lab.study_mask
    if not usable.any():
        raise DataError("no usable pixel: the raster is all nodata inside the study area; check nodata and --mask_path")
    folds = make_folds(lab.labels, usable, config.folds, positive_points=lab.positive_points, seed=tc.seed,
                       block_size=config.block_size, buffer=config.buffer, log=log)
    fold_map = folds.fold_map(info.shape)
    deposits = point_pixels(lab.positive_points, usable)
    return CVData(info, lab.labels, usable, tc.labels.mask_path, folds, fold_map, deposits,
                  fold_map[deposits[:, 0], deposits[:, 1]].astype(np.int64),
                  categorical_band_numbers(tc.categorical_bands, info.band_names))


def _uniform(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) distinct (row, col) drawn uniformly from the True pixels of ``mask`` (all when fewer)."""
    flat = np.flatnonzero(mask)
    if flat.size > n:
        flat = np.sort(rng.choice(flat, size=n, replace=False))
    return np.stack(np.unravel_index(flat, mask.shape), axis=1).astype(np.int64)


def _draw_samples(config: CVConfig, data: CVData, read_values: bool, cb: Callbacks) -> Samples:
    """Seeded positives, background pool and evaluation sample; band values through windowed reads."""
    seed = config.train.seed
    min_train = min(max(f["train_pixels"], 1) / max(int(data.usable.sum()), 1)
                    for f in data.folds.summary["folds"])
    pool = int(math.ceil(config.background / max(min_train, 0.05)))
    pos_rc = _uniform(data.labels.astype(bool) & data.usable, MAX_POSITIVES, np.random.default_rng([seed, 1]))
    bg_rc = _uniform(data.usable, pool, np.random.default_rng([seed, 2]))
    eval_rc = _uniform(data.usable, EVAL_SAMPLE, np.random.default_rng([seed, 3]))
    samples = Samples(pos_rc, bg_rc, eval_rc)
    if not read_values:
        return samples
    from .raster import open_raster, read_pixels

    every = np.concatenate([pos_rc, bg_rc, eval_rc, data.deposits])
    cb.log(f"reading {len(every)} sample pixel(s) for the baselines ({len(pos_rc)} positive, {len(bg_rc)} "
           f"background, {len(eval_rc)} for the success rate, {len(data.deposits)} deposit(s))")
    with open_raster(config.train.raster_path) as src:
        X, _ = read_pixels(src, every[:, 0], every[:, 1], should_stop=lambda: cb.check_stop("cross-validation"))
    cuts = np.cumsum([len(pos_rc), len(bg_rc), len(eval_rc)])
    samples.pos_X, samples.bg_X, samples.eval_X, samples.dep_X = np.split(X, cuts)
    return samples


def _inside(rc: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return mask[rc[:, 0], rc[:, 1]] if len(rc) else np.zeros(0, dtype=bool)


# ----------------------------------------------------------------------------- baselines


def _fold_sample(config: CVConfig, data: CVData, samples: Samples, train_mask: np.ndarray, fold: int) -> Any:
    """The baselines' training sample of one fold: positives and background inside its training area."""
    from .baselines import Design, TrainingSample

    assert samples.pos_X is not None and samples.bg_X is not None
    pin = _inside(samples.pos_rc, train_mask)
    bin_ = np.flatnonzero(_inside(samples.bg_rc, train_mask))
    if bin_.size > config.background:
        bin_ = np.sort(np.random.default_rng([config.train.seed, 10, fold]).choice(bin_, config.background,
                                                                                  replace=False))
    pos_X, bg_X = samples.pos_X[pin], samples.bg_X[bin_]
    if not len(pos_X):
        raise DataError(f"fold {fold + 1} has no positive pixel in its training area (its buffer covers them); "
                        "use fewer --folds or a smaller --buffer")
    design = Design.fit(np.concatenate([pos_X, bg_X]), data.info.band_names, data.categorical)
    return TrainingSample(pos_X, bg_X, design, int(train_mask.sum()), samples.pos_rc[pin, 0],
                          samples.pos_rc[pin, 1], samples.bg_rc[bin_, 0], samples.bg_rc[bin_, 1])


def _sub_windows(block: Tuple[int, int, int, int], size: int = CHUNK) -> List[Tuple[int, int, int, int]]:
    r0, c0, r1, c1 = block
    return [(r, c, min(r + size, r1), min(c + size, c1)) for r in range(r0, r1, size) for c in range(c0, c1, size)]


def _predict_blocks(raster_path: str, blocks: Sequence[Tuple[int, int, int, int]], usable: np.ndarray,
                    models: Dict[str, Any], states: Dict[str, CandidateState], cb: Callbacks) -> float:
    """Reads the blocks window by window once and writes every baseline's scores into its map."""
    from .raster import open_raster, read_window

    t0 = time.perf_counter()
    with open_raster(raster_path) as src:
        for block in blocks:
            for r0, c0, r1, c1 in _sub_windows(block):
                cb.check_stop("cross-validation")
                sel = usable[r0:r1, c0:c1]
                if not sel.any():
                    continue
                data, valid = read_window(src, r0, c0, r1 - r0, c1 - c0)
                sel = sel & valid
                X = data[:, sel].T
                for name, model in models.items():
                    states[name].oof[r0:r1, c0:c1][sel] = model.predict(X)
    return time.perf_counter() - t0


def _run_baselines(config: CVConfig, data: CVData, samples: Samples, fold: int, states: Dict[str, CandidateState],
                   cb: Callbacks, done: Callable[[float], None]) -> Dict[str, FoldFit]:
    """Fits every baseline on one fold's training sample and predicts the fold's test blocks."""
    from .baselines import make_baseline

    train_mask = data.folds.train_mask(fold, data.usable)
    sample = _fold_sample(config, data, samples, train_mask, fold)
    assert samples.eval_X is not None and samples.dep_X is not None
    ein = _inside(samples.eval_rc, train_mask)
    din = _inside(data.deposits, train_mask)
    models: Dict[str, Any] = {}
    fits: Dict[str, FoldFit] = {}
    for name in config.baselines:
        if states[name].failed is not None:
            done(1.0)
            continue
        t0 = time.perf_counter()
        try:
            model = make_baseline(name).fit(sample, config.train.seed, lambda: cb.check_stop("cross-validation"))
        except Cancelled:
            raise
        except CoreError as exc:  # e.g. MaxEnt without elapid in this Python: the others still count
            _leave_out(states[name], fold, exc, cb)
            done(1.0)
            continue
        fit_s = time.perf_counter() - t0
        fits[name] = FoldFit(model.predict(samples.eval_X[ein]), model.predict(samples.dep_X[din]), fit_s, 0.0,
                             model.summary)
        models[name] = model
        cb.log(f"fold {fold + 1}/{config.folds} {name}: fitted on {len(sample.positives)} positive and "
               f"{len(sample.background)} background pixel(s) in {fit_s:.1f} s; {model.summary}")
        done(1.0)
    if not models:
        return fits
    seconds = _predict_blocks(config.train.raster_path, data.folds.test_blocks(fold), data.usable, models, states, cb)
    for fit in fits.values():
        fit.predict_seconds = seconds / max(len(fits), 1)
    return fits


# ----------------------------------------------------------------------------- deep models


def _run_model(config: CVConfig, data: CVData, samples: Samples, fold: int, name: str, state: CandidateState,
               out_dir: Path, cb: Callbacks, progress: Callable[[float], None]) -> FoldFit:
    """Trains a registry model with the core's ``train`` on the fold's training area, then ``predict``s."""
    import rasterio

    from .predict import predict
    from .training import train

    fold_dir = out_dir / "folds" / f"fold_{fold + 1}"
    # The fold models are this run's own working files: a rerun into the same folder replaces them.
    tc = replace(config.train, models=[name], output_path=str(fold_dir), checkpoint_path=None, resume=False,
                 overwrite=True, ddp=False)
    train_mask = data.folds.train_mask(fold, data.usable)
    prefix = f"fold {fold + 1}/{config.folds} {name}: "

    def log(message: str) -> None:
        cb.log(prefix + message)

    def metric(values: Dict[str, Any]) -> None:
        cb.metric({"fold": fold + 1, **values})

    t0 = time.perf_counter()
    result = train(tc, progress=lambda v: progress(0.9 * v), should_stop=cb.should_stop, log=log, metric=metric,
                   area_mask=train_mask)
    fit_s = time.perf_counter() - t0
    checkpoint = result["models"][name]["checkpoint"]
    prob_path = fold_dir / name / "probability.tif"
    t0 = time.perf_counter()
    pc = PredictConfig(checkpoint=checkpoint, raster_path=tc.raster_path, output_path=str(prob_path),
                       batch_size=tc.batch_size, device=tc.device, amp_mode=tc.amp_mode, mask_path=data.mask_path)
    predict(pc, progress=lambda v: progress(0.9 + 0.1 * v), should_stop=cb.should_stop, log=log)
    with rasterio.open(prob_path) as src:
        prob = src.read(1)
    test = data.folds.test_mask(fold, data.usable)
    state.oof[test] = prob[test]
    predict_s = time.perf_counter() - t0
    ein = samples.eval_rc[_inside(samples.eval_rc, train_mask)]
    din = data.deposits[_inside(data.deposits, train_mask)]
    return FoldFit(prob[ein[:, 0], ein[:, 1]], prob[din[:, 0], din[:, 1]], fit_s, predict_s,
                   f"checkpoint {checkpoint}")


# ----------------------------------------------------------------------------- scores


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values) & (values != NODATA)]


def score_fold(state: CandidateState, fold: int, data: CVData, fit: FoldFit) -> Dict[str, Any]:
    """One row of cv_results.csv: held-out scores of a fold, and the training-area success rate."""
    test = data.usable & (data.fold_map == fold)
    area = state.oof[test]
    ok = np.isfinite(area) & (area != NODATA)
    dep = data.deposits[data.deposit_fold == fold]
    dep_scores = _finite(state.oof[dep[:, 0], dep[:, 1]])
    curve = rate_curve(area[ok], dep_scores)
    pix = pixel_aucs(area[ok], data.labels[test][ok])
    success = rate_curve(_finite(fit.train_area_scores), _finite(fit.train_deposit_scores))
    row: Dict[str, Any] = {
        "fold": fold + 1, "candidate": state.name, "kind": state.kind,
        "n_test_deposits": int(dep_scores.size), "n_train_deposits": int(success.n_deposits),
        "prediction_rate_auc": finite_or_none(curve.auc), "pr_auc": finite_or_none(pix["pr_auc"]),
        "success_rate_auc": finite_or_none(success.auc),
        "test_pixels": int(ok.sum()), "train_pixels": int(data.folds.summary["folds"][fold]["train_pixels"]),
        "fit_seconds": round(fit.fit_seconds, 3), "predict_seconds": round(fit.predict_seconds, 3),
    }
    row.update({k: finite_or_none(v) for k, v in curve.top.items()})
    return row


def _folds_done(state: CandidateState) -> set[int]:
    """The folds (0-based) the candidate has finished."""
    return {int(r["fold"]) - 1 for r in state.rows}


def _held_out_scores(state: CandidateState, data: CVData, folds: Iterable[int]) -> Tuple[np.ndarray, np.ndarray]:
    """The candidate's finite scores over the held-out area of ``folds``, and its scores at those
    folds' deposits (``data.deposits`` order, unscored ones kept)."""
    folds = list(folds)
    area = _finite(state.oof[data.usable & np.isin(data.fold_map, folds)])
    dep = data.deposits[np.isin(data.deposit_fold, folds)]
    return area, (state.oof[dep[:, 0], dep[:, 1]] if len(dep) else np.zeros(0, np.float32))


def pooled_scores(state: CandidateState, data: CVData, n_boot: int, seed: int) -> Dict[str, Any]:
    """Scores of the whole out-of-fold map (every held-out deposit against all held-out area),
    with 95 % bootstrap intervals over deposits."""
    done = _folds_done(state)
    held = data.usable & np.isin(data.fold_map, list(done))
    area, dep_scores = _held_out_scores(state, data, done)
    dep_scores = _finite(dep_scores)
    curve = rate_curve(area, dep_scores)
    out: Dict[str, Any] = {"n_deposits": int(dep_scores.size), "n_pixels": int(area.size),
                           "prediction_rate_auc": finite_or_none(curve.auc)}
    ranks = area_rank_fractions(area, dep_scores)
    out["prediction_rate_auc_ci"] = list(bootstrap_mean_interval(ranks, n_boot, seed))
    for k in TOP_PERCENTS:
        out[f"top{k}"] = finite_or_none(curve.top.get(f"top{k}"))
        hit = 100.0 * (dep_scores >= top_threshold(area, k)) if area.size else np.zeros(0)
        out[f"top{k}_ci"] = list(bootstrap_mean_interval(hit, n_boot, seed + k))
    labels = data.labels[held]
    vals = state.oof[held]
    ok = np.isfinite(vals) & (vals != NODATA)
    out["pr_auc"] = finite_or_none(pixel_aucs(vals[ok], labels[ok])["pr_auc"])
    out["curve"] = {"area": curve.area.tolist()[:: max(1, len(curve.area) // 500)] + [1.0],
                    "captured": curve.captured.tolist()[:: max(1, len(curve.captured) // 500)] + [1.0]}
    return out


def deposit_ranks(state: CandidateState, data: CVData, folds: Iterable[int]) -> np.ndarray:
    """Per held-out deposit of ``folds`` (in ``data.deposits`` order): the share of those folds'
    held-out area that the candidate's map scores below it; NaN where the map has no score.

    The mean over the scored deposits is the pooled prediction-rate AUC; kept per deposit, two
    maps can be compared on the same deposits (``paired_comparisons``)."""
    area, scores = _held_out_scores(state, data, folds)
    ok = np.isfinite(scores) & (scores != NODATA)
    ranks = np.full(scores.shape, np.nan)
    ranks[ok] = area_rank_fractions(area, scores[ok])
    return ranks


def paired_comparisons(data: CVData, states: Dict[str, CandidateState], candidates: Dict[str, Any],
                       n_boot: int, seed: int) -> Optional[str]:
    """Adds ``against_best_baseline`` to every candidate but the best baseline; returns that baseline.

    Why paired: two maps are scored on the same held-out deposits, so their pooled AUCs rise and
    fall together with the deposits drawn. Overlapping marginal intervals say little; resampling
    the deposits once for both maps gives the interval of the difference itself. The entry holds
    ``difference`` (this candidate's pooled prediction-rate AUC minus the baseline's, on the folds
    both finished), ``difference_ci`` (95 % paired bootstrap over deposits) and ``verdict``
    (``paired_verdict``).
    """
    scored = [n for n, c in candidates.items()
              if c["kind"] == "baseline" and c["pooled"]["prediction_rate_auc"] is not None]
    if not scored:
        return None
    best = max(scored, key=lambda n: candidates[n]["pooled"]["prediction_rate_auc"])
    best_ranks: Dict[Tuple[int, ...], np.ndarray] = {}  # by fold set: ranked once, not once per candidate
    for name, c in candidates.items():
        if name == best:
            continue
        folds = tuple(sorted(_folds_done(states[name]) & _folds_done(states[best])))
        if folds not in best_ranks:
            best_ranks[folds] = deposit_ranks(states[best], data, folds)
        a, b = deposit_ranks(states[name], data, folds), best_ranks[folds]
        d = (a - b)[np.isfinite(a) & np.isfinite(b)]
        diff = finite_or_none(float(d.mean())) if d.size else None
        lo, hi = bootstrap_mean_interval(d, n_boot, seed)
        c["against_best_baseline"] = {"baseline": best, "difference": diff, "difference_ci": [lo, hi],
                                      "n_deposits": int(d.size), "verdict": paired_verdict(diff, (lo, hi))}
    return best


def paired_verdict(difference: Optional[float], interval: Sequence[Optional[float]]) -> str:
    """``ahead`` / ``behind`` when the paired 95 % interval of the difference excludes 0, else ``level``
    (``n/a`` without a difference). A map ahead by 0.001 on a few dozen deposits is level, not a win."""
    if difference is None:
        return "n/a"
    lo, hi = interval
    if lo is not None and lo > 0:
        return "ahead"
    if hi is not None and hi < 0:
        return "behind"
    return "level"


def fold_spread(rows: Sequence[Dict[str, Any]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Mean and standard deviation over folds of every score (None when undefined everywhere)."""
    mean: Dict[str, Any] = {}
    std: Dict[str, Any] = {}
    for key in SCORE_KEYS:
        v = np.array([r[key] for r in rows if r.get(key) is not None], dtype=np.float64)
        mean[key] = float(v.mean()) if v.size else None
        std[key] = float(v.std(ddof=1)) if v.size > 1 else None
    return mean, std


# ----------------------------------------------------------------------------- outputs


def _write_csv(path: Path, rows: Sequence[Dict[str, Any]]) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            out = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
            out.writeheader()
            for r in rows:
                out.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})

    return write_atomic(path, write)


def _write_json(path: Path, data: Dict[str, Any]) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    for attr in ("item", "tolist"):
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    return str(obj)


def write_oof_map(path: Path, state: CandidateState, info: RasterInfo, config: CVConfig) -> Path:
    """The out-of-fold map: float32 GeoTIFF, nodata where no fold predicted (unusable pixels)."""
    import rasterio

    from .raster import map_profile

    values = np.where(np.isfinite(state.oof), state.oof, np.float32(NODATA)).astype(np.float32)
    valid = values[values != np.float32(NODATA)]
    # The same area-percentile tags Predict writes: the map opens styled in top 1/5/10/20 % classes,
    # the classes of the pooled top-k scores.
    cutoffs = {f"top{k}_cutoff": repr(top_threshold(valid, k)) for k in TOP_PERCENTS} if valid.size else {}
    with gdal_errors() as messages, atomic_path(
            path, verify=lambda tmp: verify_raster(tmp, messages, (1, info.height, info.width))) as tmp:
        with rasterio.open(tmp, "w", **map_profile(info)) as dst:
            dst.write(values, 1)
            dst.set_band_description(1, f"out-of-fold score ({state.name})")
            dst.update_tags(candidate=state.name, kind=state.kind, folds=str(config.folds),
                            seed=str(config.train.seed), source_raster=Path(info.path).name,
                            value=f"{state.name} score 0..1; each pixel predicted by the model that did not "
                                  "train on its fold", **cutoffs)
    return path


def oof_file_name(candidate: str) -> str:
    """``oof_<candidate>.tif`` (candidate names are letters, digits and underscores)."""
    return f"oof_{candidate}.tif"


def _summary(config: CVConfig, data: CVData, states: Dict[str, CandidateState], complete: bool,
             wall: float) -> Dict[str, Any]:
    candidates: Dict[str, Any] = {}
    for name, st in states.items():
        if not st.rows:
            continue
        mean, std = fold_spread(st.rows)
        candidates[name] = {
            "kind": st.kind,
            "folds_done": len(st.rows),
            "pooled": pooled_scores(st, data, config.bootstrap, config.train.seed),
            "fold_mean": mean, "fold_std": std,
            "seconds": round(sum(r["fit_seconds"] + r["predict_seconds"] for r in st.rows), 2),
            "oof_map": oof_file_name(name),
            "notes": st.notes,
        }
    for name, st in states.items():
        if st.failed is not None:
            candidates.pop(name, None)
    best_baseline = paired_comparisons(data, states, candidates, config.bootstrap, config.train.seed)
    ranking = sorted(candidates, key=lambda n: -(candidates[n]["pooled"]["prediction_rate_auc"] or -1.0))
    return {
        "format": "stack_segmenter.cv/1",
        "complete": complete,
        "failed": {n: st.failed for n, st in states.items() if st.failed is not None},
        "ranking": [{"rank": i + 1, "candidate": n, "kind": candidates[n]["kind"],
                     "prediction_rate_auc": candidates[n]["pooled"]["prediction_rate_auc"],
                     "prediction_rate_auc_ci": candidates[n]["pooled"]["prediction_rate_auc_ci"],
                     "top10": candidates[n]["pooled"]["top10"],
                     "fold_mean_prediction_rate_auc": candidates[n]["fold_mean"]["prediction_rate_auc"],
                     "fold_std_prediction_rate_auc": candidates[n]["fold_std"]["prediction_rate_auc"],
                     "success_rate_auc": candidates[n]["fold_mean"]["success_rate_auc"],
                     "against_best_baseline": candidates[n].get("against_best_baseline")}
                    for i, n in enumerate(ranking)],
        "best_baseline": best_baseline,
        "candidates": candidates,
        "folds": data.folds.summary,
        "raster": {"path": data.info.path, "width": data.info.width, "height": data.info.height,
                   "bands": data.info.count, "usable_pixels": int(data.usable.sum()),
                   "deposits": int(len(data.deposits))},
        "config": json.loads(config.to_json()),
        "wall_seconds": round(wall, 1),
    }


def _all_rows(config: CVConfig, states: Dict[str, CandidateState]) -> List[Dict[str, Any]]:
    """Every fold row, by fold then candidate (as named)."""
    rows = [r for st in states.values() for r in st.rows]
    return sorted(rows, key=lambda r: (r["fold"], config.candidates.index(r["candidate"])))


def _write_outputs(out: Path, config: CVConfig, data: CVData, states: Dict[str, CandidateState], complete: bool,
                   wall: float, log: LogFn) -> Dict[str, Any]:
    from .cv_report import write_comparison_png, write_summary_html

    rows = _all_rows(config, states)
    files: Dict[str, Any] = {"results_csv": str(_write_csv(out / "cv_results.csv", rows))}
    summary = _summary(config, data, states, complete, wall)
    maps = {}
    for name, st in states.items():
        if st.rows and st.failed is None:
            maps[name] = str(write_oof_map(out / oof_file_name(name), st, data.info, config))
    files["oof_maps"] = maps
    summary["files"] = {"results_csv": "cv_results.csv", "summary_json": "cv_summary.json",
                        "comparison_png": "cv_comparison.png", "summary_html": "cv_summary.html",
                        "oof_maps": {k: Path(v).name for k, v in maps.items()}, "folds_gpkg": "cv_folds.gpkg"}
    files["comparison_png"] = str(write_comparison_png(out / "cv_comparison.png", summary, rows))
    files["summary_json"] = str(_write_json(out / "cv_summary.json", summary))
    files["summary_html"] = str(write_summary_html(out / "cv_summary.html", summary, rows, "cv_comparison.png"))
    _log_ranking(summary, log)
    return {"summary": summary, "files": files}


def _log_ranking(summary: Dict[str, Any], log: LogFn) -> None:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    log("cross-validation ranking (pooled prediction-rate AUC of held-out deposits, 95 % interval; "
        "fold mean +- sd; success-rate AUC = fit on training folds, not skill):")
    for name, why in (summary.get("failed") or {}).items():
        log(f"  left out: {name} ({why})")
    for r in summary["ranking"]:
        lo, hi = r["prediction_rate_auc_ci"]
        top = "n/a" if r["top10"] is None else f"{r['top10']:.0f}%"
        log(f"  {r['rank']}. {r['candidate']}: {f(r['prediction_rate_auc'])} [{f(lo)}, {f(hi)}]; folds "
            f"{f(r['fold_mean_prediction_rate_auc'])} +- {f(r['fold_std_prediction_rate_auc'])}; top 10 % of area "
            f"holds {top} of deposits; success rate {f(r['success_rate_auc'])}")
    from .cv_report import comparison_text

    for r in summary["ranking"]:
        if r["kind"] == "model" and r.get("against_best_baseline"):
            log(f"  {comparison_text(r['candidate'], r['against_best_baseline'])}")


# ----------------------------------------------------------------------------- cv()


def cv(
    config: CVConfig,
    *,
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[StopFn] = None,
    log: Optional[LogFn] = None,
    metric: Optional[MetricFn] = None,
) -> Dict[str, Any]:
    """Cross-validates ``config.candidates`` on balanced spatial folds; writes the outputs.

    Returns ``{"output_path", "results_csv", "summary_json", "summary_html", "comparison_png",
    "oof_maps": {candidate: path}, "best", "ranking", "complete"}``.

    Raises:
        ConfigError / DataError: bad options or inputs (before any model is fitted).
        Cancelled: ``should_stop`` said so; the folds finished so far are written first.
    """
    cb = Callbacks.of(progress, should_stop, log, metric)
    t_start = time.perf_counter()
    out = prepare_folder(Path(config.output_path).expanduser().resolve(), "--output_path")
    data = _prepare(config, cb.log)
    write_blocks_gpkg(data.folds.blocks, data.info, out / "cv_folds.gpkg", layer="cv_folds",
                      extra={"fold": [g + 1 for g in data.folds.fold]})
    cb.check_stop("cross-validation")
    samples = _draw_samples(config, data, bool(config.baselines), cb)
    shape = data.info.shape
    states = {n: CandidateState(n, "baseline", np.full(shape, np.nan, np.float32)) for n in config.baselines}
    states.update({n: CandidateState(n, "model", np.full(shape, np.nan, np.float32)) for n in config.models})
    per_fold = len(config.baselines) + DEEP_WEIGHT * len(config.models)
    total = max(per_fold * config.folds, 1.0)
    done = [0.0]

    def advance(units: float) -> None:
        done[0] += units
        cb.progress(min(1.0, done[0] / total))

    try:
        for fold in range(config.folds):
            if config.baselines:
                fits = _run_baselines(config, data, samples, fold, states, cb, advance)
                for name, fit in fits.items():
                    _finish_fold(states[name], fold, data, fit, cb)
            for name in config.models:
                base = done[0]

                def model_progress(v: float, base: float = base) -> None:
                    cb.progress(min(1.0, (base + DEEP_WEIGHT * max(0.0, min(1.0, v))) / total))

                if states[name].failed is None:
                    try:
                        fit = _run_model(config, data, samples, fold, name, states[name], out, cb, model_progress)
                        _finish_fold(states[name], fold, data, fit, cb)
                    except Cancelled:
                        raise
                    except CoreError as exc:  # one model that cannot train must not cost the others' table
                        _leave_out(states[name], fold, exc, cb)
                done[0] = base + DEEP_WEIGHT
            _write_csv(out / "cv_results.csv", _all_rows(config, states))
    except Cancelled:
        finished = min((len(st.rows) for st in states.values() if st.failed is None), default=0)
        cb.log(f"cross-validation cancelled; writing the {finished} fold(s) finished for every candidate")
        for st in states.values():
            del st.rows[finished:]
            st.oof[~np.isin(data.fold_map, list(range(finished)))] = np.nan
        if finished:
            _write_outputs(out, config, data, states, False, time.perf_counter() - t_start, cb.log)
        raise
    if all(st.error is not None for st in states.values()):
        raise next(iter(states.values())).error  # nothing to compare: the first failure is the answer
    written = _write_outputs(out, config, data, states, True, time.perf_counter() - t_start, cb.log)
    summary = written["summary"]
    cb.progress(1.0)
    return {
        "output_path": str(out),
        "results_csv": written["files"]["results_csv"],
        "summary_json": written["files"]["summary_json"],
        "summary_html": written["files"]["summary_html"],
        "comparison_png": written["files"]["comparison_png"],
        "oof_maps": written["files"]["oof_maps"],
        "best": summary["ranking"][0]["candidate"] if summary["ranking"] else None,
        "ranking": summary["ranking"],
        "complete": True,
    }


def _leave_out(state: CandidateState, fold: int, exc: CoreError, cb: Callbacks) -> None:
    """A candidate that cannot be fitted is dropped from the comparison, plainly said."""
    state.failed, state.error = f"{type(exc).__name__}: {exc}", exc
    cb.log(f"error: {state.name} failed on fold {fold + 1} and is left out of the comparison: {exc}")


def _finish_fold(state: CandidateState, fold: int, data: CVData, fit: FoldFit, cb: Callbacks) -> None:
    row = score_fold(state, fold, data, fit)
    state.rows.append(row)
    if fit.note:
        state.notes.append(f"fold {fold + 1}: {fit.note}")
    cb.metric({k: row[k] for k in ("fold", "candidate", "n_test_deposits", "prediction_rate_auc", "top10",
                                    "success_rate_auc")})

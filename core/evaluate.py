"""Scoring a probability map against known deposits / labels, with files a geologist reads.

Why deposit level: a map is useful when a small share of the area holds most deposits, so
each deposit (one positive feature) counts once, scored by the best probability over the
pixels its feature burned. Why a checkpoint split: deposits the model trained on measure
fit (success rate); only deposits in the held-out validation blocks measure skill
(prediction rate). Blocks are matched in map coordinates, so the map may be on another
grid than the training raster.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .config import EvaluateConfig
from .errors import DataError
from .events import Callbacks, LogFn, ProgressFn, StopFn
from .files import check_output_location, check_outputs_not_inputs, prepare_folder, write_atomic
from .metrics import (RateCurve, area_rank_fractions, bootstrap_mean_interval, finite_or_none, latitude_weights,
                      pixel_aucs, rate_curve)
from .raster import MapBox

OUTPUT_FILES = ("metrics.json", "success_rate.csv", "success_rate.png", "roc.csv", "precision_recall.csv",
                "roc_pr.png", "summary.html")
"""What evaluation writes into --output_dir (summary.html: the QGIS tool)."""


# ----------------------------------------------------------------------------- inputs


@dataclass
class ScoredMap:
    """The probability map with its validity (nodata, NaN and outside the study area excluded)."""

    prob: np.ndarray
    valid: np.ndarray
    transform: Tuple[float, ...]
    weights: Optional[np.ndarray]


def choose_band(info: Any, band: Optional[int]) -> int:
    """The band to score: the only one, or the one named; a multi-band raster without a band is refused.

    Scoring band 1 of, say, an evidence stack by mistake would hand back a meaningless score.
    """
    if band is not None:
        if not 1 <= band <= info.count:
            raise DataError(f"--band {band} does not exist: {info.path} has band(s) 1 to {info.count}")
        return int(band)
    if info.count != 1:
        names = ", ".join(f"{i} {n!r}" for i, n in enumerate(info.band_names, start=1))
        raise DataError(
            f"{info.path} has {info.count} bands ({names}); a probability map has one. If it is the right file, "
            "name the band to score with --band N (QGIS: 'Band to score'); else give the map written by predict"
        )
    return 1


def read_probability(path: str, info: Any, log: LogFn, band: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """One band of the map as float32 and where it holds a probability."""
    import rasterio

    with rasterio.open(path) as src:
        prob = src.read(band).astype(np.float32)
        nodata = src.nodatavals[band - 1]
    valid = np.isfinite(prob)
    if nodata is not None and np.isfinite(nodata):
        valid &= prob != np.float32(nodata)
    if valid.any():
        lo, hi = float(prob[valid].min()), float(prob[valid].max())
        if lo < 0.0 or hi > 1.0:
            log(f"note: {path} holds values {lo:g}..{hi:g}, not probabilities in 0..1; ranking them as they are")
    return prob, valid


def is_geographic(crs_wkt: Optional[str]) -> bool:
    """Whether pixels shrink with latitude (then metrics weight pixels by their area)."""
    if not crs_wkt:
        return False
    from rasterio.crs import CRS

    try:
        return bool(CRS.from_user_input(crs_wkt).is_geographic)
    except Exception:  # noqa: BLE001 - unknown CRS: treat pixels as equal
        return False


def deposit_pixels(points: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Integer (row, col) of each deposit and whether it lies on the grid."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    rc = np.floor(pts).astype(np.int64)
    inside = (rc[:, 0] >= 0) & (rc[:, 0] < height) & (rc[:, 1] >= 0) & (rc[:, 1] < width)
    return rc, inside


def deposit_scores(
    prob: np.ndarray, valid: np.ndarray, labels: np.ndarray, points: np.ndarray, patches: bool
) -> Tuple[np.ndarray, np.ndarray]:
    """One score per deposit: the probability at its pixel, or the best over its patch.

    Points score at their own pixel: the max over a buffer disk would rank a deposit above
    single area pixels even on a random map. Polygon deposits (``patches``) score the best
    valid probability over the labelled patch that holds their representative point.

    Returns (scores, usable) where ``usable`` is False for deposits off the grid or without
    a valid probability (nodata / outside the mask).
    """
    rc, inside = deposit_pixels(points, *prob.shape)
    scores = np.full(len(rc), np.nan)
    ok = inside.copy()
    ok[inside] = valid[rc[inside, 0], rc[inside, 1]]
    scores[ok] = prob[rc[ok, 0], rc[ok, 1]]
    if not patches:
        return scores, np.isfinite(scores)
    from scipy import ndimage

    labelled, n = ndimage.label((labels > 0) & valid)
    if n:
        best = np.asarray(ndimage.maximum(prob, labels=labelled, index=np.arange(1, n + 1)))
        patch = np.zeros(len(rc), dtype=np.int64)
        patch[inside] = labelled[rc[inside, 0], rc[inside, 1]]
        scores[patch > 0] = best[patch[patch > 0] - 1]
    return scores, np.isfinite(scores)


def only_points(summary: Dict[str, Any]) -> bool:
    """Whether the label layer holds only points (then deposits score at their pixel)."""
    types = summary.get("geometry_types") or []
    return bool(types) and all(t in ("Point", "MultiPoint") for t in types)


def to_map(points: np.ndarray, transform: Sequence[float]) -> np.ndarray:
    """Map (x, y) of fractional pixel coordinates (row, col) under (a, b, c, d, e, f)."""
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    rows = np.asarray(points, dtype=np.float64)[:, 0]
    cols = np.asarray(points, dtype=np.float64)[:, 1]
    return np.stack([c + a * cols + b * rows, f + d * cols + e * rows], axis=1)


def pixel_centres(rc: np.ndarray, transform: Sequence[float]) -> np.ndarray:
    """Map (x, y) of the centres of integer pixels (row, col)."""
    return to_map(np.asarray(rc, dtype=np.float64) + 0.5, transform)


def normalise_box(box: Any) -> MapBox:
    """A map box as (xmin, ymin, xmax, ymax) from a 4-sequence or a dict, in any corner order."""
    if isinstance(box, dict):
        vals = [box.get(k) for k in ("left", "bottom", "right", "top")]
        if None in vals:
            vals = [box.get(k) for k in ("xmin", "ymin", "xmax", "ymax")]
    else:
        vals = list(box)[:4]
    x0, y0, x1, y1 = (float(v) for v in vals)  # type: ignore[arg-type]
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def in_boxes(xy: np.ndarray, boxes: Sequence[MapBox]) -> np.ndarray:
    """Which map points fall inside any of the boxes (edges included)."""
    inside = np.zeros(len(xy), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside |= (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    return inside


def block_mask(shape: Tuple[int, int], transform: Sequence[float], boxes: Sequence[MapBox]) -> np.ndarray:
    """Pixels whose centre lies inside a validation block (row by row: no grid of coordinates)."""
    h, w = shape
    out = np.zeros(shape, dtype=bool)
    cols = np.arange(w)
    for r in range(h):
        rc = np.stack([np.full(w, r), cols], axis=1)
        out[r] = in_boxes(pixel_centres(rc, transform), boxes)
    return out


def validation_boxes(checkpoint_path: str, log: LogFn = lambda _m: None) -> Optional[List[MapBox]]:
    """The held-out blocks of a checkpoint, in map coordinates.

    None when the saved model's final fit (``--final_fit whole_area``) trained on them too:
    nothing is held out from its map, so scoring them as held out would credit it with
    deposits it learnt from (logged).
    """
    from .checkpoint import load_checkpoint, trained_on_validation_blocks

    ckpt = load_checkpoint(checkpoint_path)
    if trained_on_validation_blocks(ckpt):
        log(f"note: the model in {checkpoint_path} was trained again on its validation blocks after validation "
            "(final fit, --final_fit whole_area), so no deposit is held out from this map; its held-out skill is "
            "in its training log (the validated model's), and Cross-validate measures it on new ground")
        return None
    boxes = ckpt.get("validation_blocks_map")
    if boxes is None:
        raise DataError(
            f"the checkpoint {checkpoint_path} holds no validation blocks (validation_blocks_map); "
            "evaluate without --checkpoint, or use a checkpoint written by our training"
        )
    return [normalise_box(b) for b in boxes]


# ----------------------------------------------------------------------------- outputs


def _write_json(data: Dict[str, Any]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    return write


def _write_csv(header: Sequence[str], rows: Iterator[Sequence[Any]]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(header)
            out.writerows(rows)

    return write


def _curve_rows(curves: Dict[str, RateCurve]) -> Iterator[Sequence[Any]]:
    for name, curve in curves.items():
        for x, y, t in zip(curve.area, curve.captured, curve.thresholds):
            yield (name, f"{100 * x:.6g}", f"{100 * y:.6g}", "" if not np.isfinite(t) else f"{t:.6g}")


def _thin(n: int, most: int = 2000) -> np.ndarray:
    """Indices that keep at most ``most`` points of a long curve (ends included)."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, most).round().astype(int))


def pixel_curves(scores: np.ndarray, labels: np.ndarray, weights: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
    """ROC and precision-recall curves of the pixels (thinned for the CSV and the plot)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, sample_weight=weights)
    precision, recall, _ = precision_recall_curve(labels, scores, sample_weight=weights)
    i, j = _thin(len(fpr)), _thin(len(recall))
    return {"fpr": fpr[i], "tpr": tpr[i], "recall": recall[j], "precision": precision[j]}


LABELS = {
    "all": "all deposits (success rate)",
    "train": "training-area deposits (success rate)",
    "validation": "held-out validation deposits (prediction rate)",
    "test area": "held-out test-area deposits vs the test area (prediction rate)",
}


def plot_rate_curves(curves: Dict[str, RateCurve], title: str) -> Callable[[Path], None]:
    """Deposits captured vs. area ranked by probability, with the random-ranking diagonal."""

    def write(tmp: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
        for name, curve in curves.items():
            if curve.auc is None:
                continue
            label = f"{LABELS.get(name, name)}, AUC {curve.auc:.3f}, n = {curve.n_deposits}"
            ax.plot(100 * curve.area, 100 * curve.captured, label=label, lw=2)
        ax.plot([0, 100], [0, 100], ls="--", color="grey", label="random ranking (AUC 0.5)")
        ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="% of area (ranked by probability, highest first)",
               ylabel="% of deposits captured", title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        plt.close(fig)

    return write


def plot_pixel_curves(curves: Dict[str, np.ndarray], aucs: Dict[str, Any], prevalence: float,
                      title: str) -> Callable[[Path], None]:
    """ROC (with the diagonal) and precision-recall (with the prevalence baseline) side by side."""

    def write(tmp: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.5), dpi=120)
        roc.plot(curves["fpr"], curves["tpr"], lw=2, label=f"map, ROC AUC {aucs['roc_auc']:.3f}")
        roc.plot([0, 1], [0, 1], ls="--", color="grey", label="random (0.5)")
        roc.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate", ylabel="true positive rate",
                title="ROC, pixels")
        pr.plot(curves["recall"], curves["precision"], lw=2, label=f"map, PR AUC {aucs['pr_auc']:.3f}")
        pr.axhline(prevalence, ls="--", color="grey", label=f"random ({prevalence:.3g})")
        pr.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision", title="precision-recall, pixels")
        for ax in (roc, pr):
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right" if ax is roc else "upper right", fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        plt.close(fig)

    return write


# ----------------------------------------------------------------------------- evaluate()


def _curve_metrics(prefix: str, auc_name: str, curve: RateCurve) -> Dict[str, Any]:
    out: Dict[str, Any] = {auc_name: finite_or_none(curve.auc), f"{prefix}n_deposits": curve.n_deposits}
    out.update({f"{prefix}{k}": finite_or_none(v) for k, v in curve.top.items()})
    return out


def split_metrics(
    scored: ScoredMap, scores: np.ndarray, usable: np.ndarray, points: np.ndarray, boxes: Sequence[MapBox],
    area_scores: np.ndarray, area_weights: Optional[np.ndarray], labels: np.ndarray,
) -> Tuple[Dict[str, Any], Dict[str, RateCurve]]:
    """Success rate of training-area deposits, prediction rate of held-out ones.

    A deposit is held out when its own location (not its pixel's centre, so the map's grid
    does not matter) lies in a validation block.
    """
    held_out = in_boxes(to_map(points, scored.transform), boxes)
    train_curve = rate_curve(area_scores, scores[usable & ~held_out], area_weights)
    val_curve = rate_curve(area_scores, scores[usable & held_out], area_weights)
    metrics = _curve_metrics("train_", "train_success_rate_auc", train_curve)
    metrics.update(_curve_metrics("val_", "prediction_rate_auc", val_curve))
    blocks = block_mask(scored.prob.shape, scored.transform, boxes) & scored.valid
    w = scored.weights[blocks] if scored.weights is not None else None
    in_blocks = rate_curve(scored.prob[blocks], scores[usable & held_out], w)
    metrics["prediction_rate_auc_in_blocks"] = finite_or_none(in_blocks.auc)
    val_pix = pixel_aucs(scored.prob[blocks], labels[blocks], w)
    metrics["val_blocks_roc_auc"] = finite_or_none(val_pix["roc_auc"])
    metrics["val_blocks_pr_auc"] = finite_or_none(val_pix["pr_auc"])
    metrics["n_validation_blocks"] = len(boxes)
    return metrics, {"train": train_curve, "validation": val_curve}


def heldout_metrics(scored: ScoredMap, scores: np.ndarray, usable: np.ndarray, held_out: np.ndarray,
                    area: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Dict[str, Any]:
    """The headline: held-out deposits against the held-out area only, with a 95 % bootstrap
    interval over deposits (the area's weights, on geographic grids, shape the AUC; the
    interval resamples deposits around it)."""
    inside = area & scored.valid
    w = scored.weights[inside] if scored.weights is not None else None
    dep = scores[usable & held_out]
    curve = rate_curve(scored.prob[inside], dep, w)
    lo, hi = bootstrap_mean_interval(area_rank_fractions(scored.prob[inside], dep), n_boot, seed)
    out: Dict[str, Any] = {"heldout_prediction_rate_auc": finite_or_none(curve.auc),
                           "heldout_prediction_rate_auc_lo": lo, "heldout_prediction_rate_auc_hi": hi,
                           "heldout_n_deposits": curve.n_deposits}
    out.update({f"heldout_{k}": finite_or_none(v) for k, v in curve.top.items()})
    return out


def test_area_split(config: EvaluateConfig, info: Any, scored: ScoredMap, scores: np.ndarray, usable: np.ndarray,
                    points: np.ndarray, area_scores: np.ndarray, area_weights: Optional[np.ndarray],
                    log: LogFn) -> Tuple[Dict[str, Any], Dict[str, RateCurve]]:
    """Deposits inside the user's test-area polygons are held out; the others measure fit."""
    from .labels import rasterize_mask

    assert config.test_area is not None
    mask = rasterize_mask(config.test_area, info, log)
    rc, inside = deposit_pixels(points, *scored.prob.shape)
    held_out = np.zeros(len(rc), dtype=bool)
    held_out[inside] = mask[rc[inside, 0], rc[inside, 1]]
    train_curve = rate_curve(area_scores, scores[usable & ~held_out], area_weights)
    metrics = _curve_metrics("train_", "train_success_rate_auc", train_curve)
    metrics.update(heldout_metrics(scored, scores, usable, held_out, mask))
    metrics["heldout_area"] = "test area"
    test_curve = rate_curve(scored.prob[mask & scored.valid], scores[usable & held_out])
    return metrics, {"train": train_curve, "test area": test_curve}


def evaluate(
    config: EvaluateConfig,
    *,
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[StopFn] = None,
    log: Optional[LogFn] = None,
) -> Dict[str, Any]:
    """Scores ``config.probability_map`` against ``config.labels``; writes files into output_dir.

    Returns ``{"metrics": {...}, "files": {"metrics_json", "curves_csv", ...}}`` (see
    docs/ARCHITECTURE.md).
    """
    from .labels import rasterize_labels
    from .raster import read_info

    cb = Callbacks.of(progress, should_stop, log)
    out_dir = Path(config.output_dir).expanduser().resolve()
    check_outputs_not_inputs(
        [("--output_dir file", out_dir / name) for name in OUTPUT_FILES],
        [("probability map (--probability_map)", config.probability_map),
         ("labels (--labels)", config.labels.labels_path),
         ("study-area mask (--mask_path)", config.labels.mask_path or ""),
         ("model file (--checkpoint)", config.checkpoint or ""), ("test area (--test_area)", config.test_area or "")],
    )
    check_output_location(out_dir, "--output_dir", folder=True)
    info = read_info(config.probability_map)
    band = choose_band(info, config.band)
    boxes = validation_boxes(config.checkpoint, cb.log) if config.checkpoint else None
    out_dir = prepare_folder(out_dir, "--output_dir")
    label_raster = rasterize_labels(config.labels, info, cb.log)
    cb.progress(0.2)
    cb.check_stop("evaluation stopped")
    prob, valid = read_probability(config.probability_map, info, cb.log, band)
    if label_raster.study_mask is not None:
        valid &= label_raster.study_mask
    if not valid.any():
        raise DataError(f"{config.probability_map} has no valid pixel inside the study area; "
                        "check the map's nodata and the mask")
    weights = latitude_weights(info.transform, info.height, info.width) if is_geographic(info.crs_wkt) else None
    scored = ScoredMap(prob, valid, tuple(info.transform), weights)
    labels = np.asarray(label_raster.labels)
    area_scores = prob[valid]
    area_weights = weights[valid] if weights is not None else None
    pix = pixel_aucs(area_scores, labels[valid], area_weights)
    cb.progress(0.4)
    cb.check_stop("evaluation stopped")

    patches = not only_points(label_raster.summary)
    scores, usable = deposit_scores(prob, valid, labels, label_raster.positive_points, patches)
    skipped = int((~usable).sum())
    if skipped:
        cb.log(f"note: {skipped} deposit(s) lie off the map, on nodata or outside the mask and are not ranked")
    curves: Dict[str, RateCurve] = {"all": rate_curve(area_scores, scores[usable], area_weights)}
    metrics: Dict[str, Any] = {
        "roc_auc": finite_or_none(pix["roc_auc"]),
        "pr_auc": finite_or_none(pix["pr_auc"]),
        "n_positive_pixels": pix["n_positive_pixels"],
        "n_pixels": pix["n_pixels"],
        "n_deposits_skipped": skipped,
        "area_weighted": weights is not None,
    }
    if config.checkpoint and boxes is None:
        metrics["validation_blocks_trained_on"] = True  # the final fit learnt from them: no held-out split
    metrics.update(_curve_metrics("", "success_rate_auc", curves["all"]))
    if config.test_area:
        if boxes is not None:
            cb.log("note: --test_area given: its deposits are the held-out ones (not the checkpoint's validation "
                   "blocks)")
        more, split = test_area_split(config, info, scored, scores, usable, label_raster.positive_points,
                                      area_scores, area_weights, cb.log)
        metrics.update(more)
        curves.update(split)
    elif boxes is not None:
        more, split = split_metrics(scored, scores, usable, label_raster.positive_points, boxes, area_scores,
                                    area_weights, labels)
        held_out = in_boxes(to_map(label_raster.positive_points, scored.transform), boxes)
        metrics.update(more)
        metrics.update(heldout_metrics(scored, scores, usable, held_out,
                                       block_mask(prob.shape, scored.transform, boxes)))
        metrics["heldout_area"] = "validation blocks"
        curves.update(split)
    cb.progress(0.7)
    cb.check_stop("evaluation stopped")

    files = _write_outputs(out_dir, metrics, curves, area_scores, labels[valid], area_weights, config)
    cb.progress(1.0)
    _log_summary(metrics, cb.log)
    return {"metrics": metrics, "files": files}


def _write_outputs(
    out_dir: Path, metrics: Dict[str, Any], curves: Dict[str, RateCurve], area_scores: np.ndarray,
    pixel_labels: np.ndarray, area_weights: Optional[np.ndarray], config: EvaluateConfig,
) -> Dict[str, str]:
    name = Path(config.probability_map).name
    files: Dict[str, Path] = {}
    files["curves_csv"] = write_atomic(out_dir / "success_rate.csv", _write_csv(
        ("curve", "area_percent", "deposits_percent", "threshold"), _curve_rows(curves)))
    files["success_rate_png"] = write_atomic(
        out_dir / "success_rate.png", plot_rate_curves(curves, f"Success / prediction rate: {name}"))
    if metrics["roc_auc"] is not None:
        pc = pixel_curves(area_scores, pixel_labels, area_weights)
        files["roc_csv"] = write_atomic(out_dir / "roc.csv", _write_csv(
            ("false_positive_rate", "true_positive_rate"), zip(pc["fpr"], pc["tpr"])))
        files["pr_csv"] = write_atomic(out_dir / "precision_recall.csv", _write_csv(
            ("recall", "precision"), zip(pc["recall"], pc["precision"])))
        prevalence = float(pixel_labels.mean()) if pixel_labels.size else 0.0
        files["roc_pr_png"] = write_atomic(
            out_dir / "roc_pr.png", plot_pixel_curves(pc, metrics, prevalence, f"Pixel scores: {name}"))
    files["metrics_json"] = out_dir / "metrics.json"
    summary = {
        "probability_map": str(Path(config.probability_map).resolve()),
        "labels": config.labels.to_dict(),
        "checkpoint": config.checkpoint,
        "metrics": metrics,
        "files": {k: v.name for k, v in files.items()},
    }
    write_atomic(files["metrics_json"], _write_json(summary))
    return {k: str(v) for k, v in files.items()}


def _log_summary(metrics: Dict[str, Any], log: LogFn) -> None:
    """Held-out skill first (with its interval), then fit, then the pixel figures."""
    def f(v: Any, digits: int = 3) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    if "heldout_prediction_rate_auc" in metrics:
        n = metrics["heldout_n_deposits"]
        if n:
            log(f"held-out skill ({n} deposit(s) in the {metrics['heldout_area']}, ranked against that area): "
                f"prediction-rate AUC {f(metrics['heldout_prediction_rate_auc'])} [95 % "
                f"{f(metrics['heldout_prediction_rate_auc_lo'])}, {f(metrics['heldout_prediction_rate_auc_hi'])}]; "
                f"top 1/5/10/20 % of that area holds {f(metrics['heldout_top1'], 0)}/{f(metrics['heldout_top5'], 0)}/"
                f"{f(metrics['heldout_top10'], 0)}/{f(metrics['heldout_top20'], 0)} % of them")
        else:
            log(f"held-out skill: no deposit lies in the {metrics['heldout_area']}; skill is not measured")
        log(f"fit, not skill: the {metrics['train_n_deposits']} deposit(s) outside it: success-rate AUC "
            f"{f(metrics['train_success_rate_auc'])}")
    else:
        log("note: no held-out area (a --checkpoint of our training not refit on its validation blocks, or "
            "--test_area): the figures below include any deposit the map's model trained on, so they measure fit, "
            "not skill")
    log(f"all {metrics['n_deposits']} deposit(s): success-rate AUC {f(metrics['success_rate_auc'])}, "
        f"top 5 % of area {f(metrics.get('top5'), 0)} %, top 20 % {f(metrics.get('top20'), 0)} %; "
        f"pixels: ROC AUC {f(metrics['roc_auc'])}, PR AUC {f(metrics['pr_auc'])}")

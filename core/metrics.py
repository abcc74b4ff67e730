"""Scores of a probability map: pixel ROC / PR AUC and the deposit-level success-rate curve.

Geologists judge a prospectivity map by how few square kilometres must be explored to
find most known deposits, so besides the pixel AUCs (scikit-learn) this module ranks the
area by probability and reports the cumulative share of deposits captured (the
success-rate curve when the deposits were used in training, the prediction-rate curve
when they were held out), its AUC and the share of deposits in the top 1/5/10/20 % of
the area. Pure numpy / scikit-learn: no torch, no files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

#: The "% of area" cut-offs users quote ("40 % of deposits in the top 5 % of the area").
TOP_PERCENTS: Sequence[int] = (1, 5, 10, 20)


def pixel_aucs(
    scores: np.ndarray, labels: np.ndarray, weights: Optional[np.ndarray] = None
) -> Dict[str, Optional[float]]:
    """ROC AUC and PR AUC (average precision) of positive pixels against all other pixels.

    Args:
        scores: probabilities of the valid pixels (1-D; nodata already removed).
        labels: 0/1 of the same pixels.
        weights: optional per-pixel area weights (e.g. cos(latitude) on a global grid).

    Returns:
        ``{"roc_auc", "pr_auc", "n_positive_pixels", "n_pixels"}``; the AUCs are None when
        one class is missing (an AUC is undefined then, not 0.5).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    n_pos = int(labels.sum())
    out: Dict[str, Optional[float]] = {
        "roc_auc": None,
        "pr_auc": None,
        "n_positive_pixels": n_pos,
        "n_pixels": int(labels.size),
    }
    if 0 < n_pos < labels.size:
        out["roc_auc"] = float(roc_auc_score(labels, scores, sample_weight=weights))
        out["pr_auc"] = float(average_precision_score(labels, scores, sample_weight=weights))
    return out


@dataclass
class RateCurve:
    """A success-rate (or prediction-rate) curve: deposits captured vs. area ranked by score.

    Attributes:
        area: cumulative fraction of the area (0..1), increasing, from 0 to 1.
        captured: cumulative fraction of the deposits inside that area (0..1).
        thresholds: the probability at each point (inf at the start).
        auc: area under the curve; 0.5 = random ranking, 1 = every deposit in the top pixel.
        top: % of deposits within the top k % of the area, keyed ``top1``, ``top5``, ...
        n_deposits: how many deposits were ranked.
    """

    area: np.ndarray
    captured: np.ndarray
    thresholds: np.ndarray
    auc: Optional[float]
    top: Dict[str, Optional[float]] = field(default_factory=dict)
    n_deposits: int = 0

    def summary(self, prefix: str = "") -> Dict[str, Optional[float]]:
        """The numbers of the curve as a flat dict (``{prefix}auc`` is named by the caller)."""
        out: Dict[str, Optional[float]] = {f"{prefix}{k}": v for k, v in self.top.items()}
        out[f"{prefix}n_deposits"] = self.n_deposits
        return out


def rate_curve(
    area_scores: np.ndarray,
    deposit_scores: np.ndarray,
    area_weights: Optional[np.ndarray] = None,
    top_percents: Sequence[int] = TOP_PERCENTS,
) -> RateCurve:
    """Ranks the area by probability and counts the deposits captured at each cut-off.

    This is scikit-learn's ROC curve with the area's pixels as the "negatives" (x axis:
    share of the area whose probability is at least the threshold) and the deposits as
    the "positives" (y axis: share of the deposits whose probability is at least the
    threshold). Ties count half, so a constant map scores 0.5, like random ranking.

    Args:
        area_scores: probabilities of every valid pixel of the study area (1-D).
        deposit_scores: one probability per deposit (its pixel / best burned pixel).
        area_weights: optional per-pixel area (e.g. cos(latitude)); None = equal pixels.
        top_percents: the k of "% of deposits in the top k % of the area".
    """
    from sklearn.metrics import auc, roc_curve

    area_scores = np.asarray(area_scores, dtype=np.float64).ravel()
    deposit_scores = np.asarray(deposit_scores, dtype=np.float64).ravel()
    n_dep = int(deposit_scores.size)
    if n_dep == 0 or area_scores.size == 0:
        empty = np.array([0.0, 1.0])
        top = {f"top{k}": None for k in top_percents}
        return RateCurve(empty, np.full(2, np.nan), np.array([np.inf, -np.inf]), None, top, n_dep)
    y = np.concatenate([np.zeros(area_scores.size, dtype=np.int8), np.ones(n_dep, dtype=np.int8)])
    s = np.concatenate([area_scores, deposit_scores])
    w = None
    if area_weights is not None:
        # The x axis becomes the weighted share of the area; every deposit still counts once.
        w = np.concatenate([np.asarray(area_weights, dtype=np.float64).ravel(), np.ones(n_dep)])
    area, captured, thresholds = roc_curve(y, s, sample_weight=w)
    top = top_captures(area_scores, deposit_scores, area_weights, top_percents)
    return RateCurve(area, captured, thresholds, float(auc(area, captured)), top, n_dep)


def top_threshold(area_scores: np.ndarray, percent: float, area_weights: Optional[np.ndarray] = None) -> float:
    """The probability that cuts off the top ``percent`` % of the area.

    The threshold is the score of the pixel at which the area ranked from the highest
    probability down first reaches ``percent`` % (ties at the threshold are inside).
    """
    scores = np.asarray(area_scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    if area_weights is None:
        cum = np.arange(1, ranked.size + 1, dtype=np.float64) / ranked.size
    else:
        w = np.asarray(area_weights, dtype=np.float64).ravel()[order]
        cum = np.cumsum(w) / w.sum()
    idx = int(np.searchsorted(cum, percent / 100.0 - 1e-12, side="left"))
    return float(ranked[min(idx, ranked.size - 1)])


def top_captures(
    area_scores: np.ndarray,
    deposit_scores: np.ndarray,
    area_weights: Optional[np.ndarray] = None,
    top_percents: Sequence[int] = TOP_PERCENTS,
) -> Dict[str, Optional[float]]:
    """% of deposits whose probability lies within the top k % of the area, for each k."""
    deposit_scores = np.asarray(deposit_scores, dtype=np.float64).ravel()
    if deposit_scores.size == 0 or np.asarray(area_scores).size == 0:
        return {f"top{k}": None for k in top_percents}
    out: Dict[str, Optional[float]] = {}
    for k in top_percents:
        t = top_threshold(area_scores, k, area_weights)
        out[f"top{k}"] = float(100.0 * np.mean(deposit_scores >= t))
    return out


def area_rank_fractions(area_scores: np.ndarray, deposit_scores: np.ndarray) -> np.ndarray:
    """Per deposit: the share of the area scoring below it (ties count half).

    Their mean is the rate curve's AUC (``rate_curve`` gives the same number), so
    resampling deposits resamples the AUC without re-ranking the area: that is what makes
    a bootstrap over deposits cheap on millions of pixels.
    """
    area = np.sort(np.asarray(area_scores, dtype=np.float64).ravel())
    dep = np.asarray(deposit_scores, dtype=np.float64).ravel()
    if area.size == 0:
        return np.full(dep.shape, np.nan)
    lo = np.searchsorted(area, dep, side="left")
    hi = np.searchsorted(area, dep, side="right")
    return (lo + 0.5 * (hi - lo)) / area.size


def bootstrap_mean_interval(values: np.ndarray, n_boot: int = 1000, seed: int = 0,
                            level: float = 0.95) -> Tuple[Optional[float], Optional[float]]:
    """Percentile interval of the mean of ``values`` (one per deposit), resampling deposits.

    Returns (None, None) for fewer than two values (no spread to resample).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2 or n_boot < 1:
        return None, None
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # bounded memory: 256 resamples at a time
        n = min(256, n_boot - start)
        means[start:start + n] = v[rng.integers(0, v.size, size=(n, v.size))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(lo), float(hi)


def latitude_weights(transform: Sequence[float], height: int, width: int) -> np.ndarray:
    """cos(latitude) area weight of every pixel of a geographic grid (rows x cols), for global maps."""
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    rows = np.arange(height, dtype=np.float64) + 0.5
    lat = f + e * rows
    w = np.clip(np.cos(np.deg2rad(lat)), 0.0, None)
    return np.repeat(w[:, None], width, axis=1)


def finite_or_none(value: Optional[float]) -> Optional[float]:
    """JSON has no NaN: undefined numbers become None (null)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None

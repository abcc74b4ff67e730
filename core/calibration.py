"""Calibration: turning a trained model's scores into probabilities at the training base rate.

Why: class weighting (positive weight up to 100), positive-aware window sampling and
set-based losses (dice, positive-unlabelled) all push the model's output far above the
real frequency of positives (the demo map's mean was 0.022 where deposits occupy 0.0003
of the pixels). The output then ranks the area correctly but is a score, not a
probability. The correction is the intercept of logistic "prior correction": one offset
``b`` added to every logit, chosen so that the mean predicted probability over the
training area equals the training area's base rate. An offset is monotone, so ranking
(every AUC, every "top k % of area" figure) is unchanged; only the values become
probabilities. It is fitted on the training windows after each member is trained and
stored with the member (``calibration`` in the checkpoint).

Base rate: for point labels (deposits), deposits per pixel of the training area (the
probability that a pixel holds a deposit, what the demo's truth.tif holds); for polygon
labels, the share of training pixels inside a positive polygon.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np

#: Logit pixels kept (a seeded subsample beyond that) to fit the offset: ample for a mean.
MAX_LOGITS = 2_000_000
#: The offset is searched in [-OFFSET_RANGE, OFFSET_RANGE] (e^30: any weighting we apply).
OFFSET_RANGE = 30.0
#: The logit scale is kept in [SCALE_RANGE[0], SCALE_RANGE[1]]: never inverted, never blown up.
SCALE_RANGE = (0.05, 20.0)
#: Background pixels kept (a seeded subsample beyond that) to fit the scale; every positive is kept.
MAX_SCALE_BACKGROUND = 200_000


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def fit_logit_offset(logits: np.ndarray, base_rate: float, iterations: int = 100) -> float:
    """The offset ``b`` with mean(sigmoid(logits + b)) == ``base_rate`` (bisection).

    The mean is strictly increasing in ``b``, so bisection on [-30, 30] converges to it
    (to ~1e-15 in 100 steps); a base rate outside what the range reaches gives the bound.

    Raises:
        ValueError: no logits, or a base rate outside (0, 1).
    """
    z = np.asarray(logits, dtype=np.float64).ravel()
    z = z[np.isfinite(z)]
    if z.size == 0:
        raise ValueError("no finite logits to calibrate on")
    if not 0.0 < base_rate < 1.0:
        raise ValueError(f"base rate must be in (0, 1), got {base_rate}")
    lo, hi = -OFFSET_RANGE, OFFSET_RANGE
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if _sigmoid(z + mid).mean() < base_rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def fit_logit_scale(logits: np.ndarray, labels: np.ndarray, seed: int = 0) -> Optional[float]:
    """The slope ``a`` of a logistic regression of held-out labels on the logits (Platt's scaling).

    Why: the offset alone matches the mean, not the spread. A member stopped early is
    flat (its logits span little), one trained longer is sharp; with the offset only,
    their probabilities are not on one scale, so an ensemble's mean is led by its sharpest
    member and maps of two models do not compare. ``a`` stretches or shrinks the logits to
    what the held-out pixels support. Subsampling the background shifts only the
    intercept (case-control sampling), so the slope is kept and the intercept dropped;
    the offset is then fitted to the base rate. None when the pixels hold one class only.
    """
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    ok = np.isfinite(z)
    z, y = z[ok], y[ok]
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if pos.size == 0 or neg.size == 0:
        return None
    if neg.size > MAX_SCALE_BACKGROUND:
        neg = np.random.default_rng(seed).choice(neg, MAX_SCALE_BACKGROUND, replace=False)
    keep = np.concatenate([pos, neg])
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(z[keep, None], y[keep])
    return float(np.clip(fit.coef_[0, 0], *SCALE_RANGE))


def base_rate(positive_pixels: int, usable_pixels: int, positive_points: Optional[int] = None) -> float:
    """Positives per usable training pixel: deposits (point labels) or positive pixels.

    ``positive_points`` is the number of point features (deposits) in the training area
    when the labels are points only, else None (polygons: the positive pixel fraction).
    """
    if usable_pixels <= 0:
        return 0.0
    count = positive_points if positive_points is not None else positive_pixels
    return float(count) / float(usable_pixels)


def calibration_record(logits: np.ndarray, rate: float, what: str, scale: float = 1.0) -> Dict[str, Any]:
    """The checkpoint's ``calibration`` entry (JSON-able): scale, offset, base rate, means before/after."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    z = scale * z[np.isfinite(z)]
    offset = fit_logit_offset(z, rate)
    return {
        "method": "logit offset to the training base rate" if scale == 1.0 else
                  "logit scale from the validation pixels, offset to the training base rate",
        "logit_scale": float(scale),
        "logit_offset": float(offset),
        "base_rate": float(rate),
        "base_rate_of": what,
        "mean_before": float(_sigmoid(z).mean()),
        "mean_after": float(_sigmoid(z + offset).mean()),
        "pixels": int(z.size),
    }


def logit_offset(calibration: Optional[Dict[str, Any]]) -> float:
    """The offset to add to a member's scaled logits (0 when it was not calibrated)."""
    if not calibration:
        return 0.0
    value = float(calibration.get("logit_offset", 0.0))
    return value if math.isfinite(value) else 0.0


def logit_scale(calibration: Optional[Dict[str, Any]]) -> float:
    """The factor on a member's logits (1 when it was not calibrated, or only offset)."""
    if not calibration:
        return 1.0
    value = float(calibration.get("logit_scale", 1.0))
    return value if math.isfinite(value) and value > 0 else 1.0


def class1_probability(logits: Any, offset: float = 0.0, scale: float = 1.0) -> Any:
    """Positive-class probability from logits (B, K, H, W): sigmoid(``scale`` * logit + ``offset``).

    K >= 2: the class-1 logit against the others (softmax's class 1 when uncalibrated);
    K == 1: a sigmoid. Scale and offset are the member's calibration (core/calibration.py).
    """
    import torch

    logits = logits.float()
    if logits.shape[1] == 1:
        z = logits[:, 0]
    elif logits.shape[1] == 2:
        z = logits[:, 1] - logits[:, 0]
    else:
        others = torch.cat([logits[:, :1], logits[:, 2:]], dim=1)
        z = logits[:, 1] - torch.logsumexp(others, dim=1)
    if scale != 1.0:
        z = z * scale
    return torch.sigmoid(z + offset) if offset else torch.sigmoid(z)

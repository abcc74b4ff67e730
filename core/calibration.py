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


def base_rate(positive_pixels: int, usable_pixels: int, positive_points: Optional[int] = None) -> float:
    """Positives per usable training pixel: deposits (point labels) or positive pixels.

    ``positive_points`` is the number of point features (deposits) in the training area
    when the labels are points only, else None (polygons: the positive pixel fraction).
    """
    if usable_pixels <= 0:
        return 0.0
    count = positive_points if positive_points is not None else positive_pixels
    return float(count) / float(usable_pixels)


def calibration_record(logits: np.ndarray, rate: float, what: str) -> Dict[str, Any]:
    """The checkpoint's ``calibration`` entry (JSON-able): offset, base rate, means before/after."""
    offset = fit_logit_offset(logits, rate)
    z = np.asarray(logits, dtype=np.float64).ravel()
    z = z[np.isfinite(z)]
    return {
        "method": "logit offset to the training base rate",
        "logit_offset": float(offset),
        "base_rate": float(rate),
        "base_rate_of": what,
        "mean_before": float(_sigmoid(z).mean()),
        "mean_after": float(_sigmoid(z + offset).mean()),
        "pixels": int(z.size),
    }


def logit_offset(calibration: Optional[Dict[str, Any]]) -> float:
    """The offset to add to a member's logits (0 when it was not calibrated)."""
    if not calibration:
        return 0.0
    value = float(calibration.get("logit_offset", 0.0))
    return value if math.isfinite(value) else 0.0


def class1_probability(logits: Any, offset: float = 0.0) -> Any:
    """Positive-class probability from logits (B, K, H, W), with ``offset`` added to its logit.

    K >= 2: the class-1 logit against the others (softmax's class 1 when the offset is 0);
    K == 1: a sigmoid. The offset is the member's calibration (core/calibration.py).
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
    return torch.sigmoid(z + offset) if offset else torch.sigmoid(z)

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

Before the offset, a member's logit is replaced by its **rank score**: the normal score of
its rank among the training area's logits (``rank_table``, piecewise linear between 1024
quantiles, continued linearly beyond them), times a fixed contrast (``CONTRAST``). Why: the
raw spread of a network's logits says more about when it stopped (a member stopped at
epoch 2 is flat, one stopped at epoch 50 sharp) than about its skill. A slope fitted on
the validation pixels (Platt's scaling, the previous calibration) was meant to mend that,
but with a few dozen validation deposits it ranged from 0.2 to 20 between the folds of one
dataset; maps of different folds, seeds or ensemble members then did not share a scale
(the out-of-fold map of Cloncurry ranked its deposits 0.04 to 0.05 AUC worse than its
folds did one by one). On ranks, every member's map has the same distribution over its
training area, so members average on one scale, maps of different runs compare, and the
mean still meets the base rate. The transform is strictly increasing: a single map ranks
its pixels exactly as the model does. The price: the contrast is fixed, not fitted, so the
top of the map is as far above the base rate as a model of held-out AUC 0.76 would put it
(binormal: AUC = Phi(contrast / sqrt 2)), whatever the model's real skill.

Base rate: for point labels (deposits), deposits per pixel of the training area (the
probability that a pixel holds a deposit, what the demo's truth.tif holds); for polygon
labels, the share of training pixels inside a positive polygon.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

#: Logit pixels kept (a seeded subsample beyond that) to fit the rank table and the offset.
MAX_LOGITS = 2_000_000
#: Quantile levels of a member's rank table (``rank_table``).
RANK_LEVELS = 1024
#: The factor on a member's rank score: the slope of a binormal model of AUC 0.76.
CONTRAST = 1.0
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


def rank_table(logits: np.ndarray, levels: int = RANK_LEVELS) -> List[List[float]]:
    """[values, scores]: a member's logit quantiles over the training area and their normal scores."""
    from .encoding import rank_table as quantile_scores

    values, scores = quantile_scores(np.asarray(logits, dtype=np.float64), levels)
    # Prediction runs in float32: quantiles that float32 cannot tell apart keep one entry.
    uniq, inverse = np.unique(np.asarray(values, dtype=np.float32), return_inverse=True)
    merged = np.bincount(inverse, weights=np.asarray(scores)) / np.bincount(inverse)
    return [uniq.astype(np.float64).tolist(), merged.tolist()]


def rank_scores(z: Any, table: Tuple[Any, Any]) -> Any:
    """Rank scores of logits ``z`` (a torch tensor, any shape) by a member's ``rank_table``.

    Piecewise linear between the table's quantiles and continued linearly beyond its ends
    with the end segments' slopes: strictly increasing, so the order of pixels is kept
    everywhere, also above the training area's highest logit. A table of one value (a
    constant model over the training area) shifts the logits to it.
    """
    import torch

    values = torch.as_tensor(table[0]).to(device=z.device, dtype=z.dtype)
    scores = torch.as_tensor(table[1]).to(device=z.device, dtype=z.dtype)
    n = values.numel()
    if n < 2:
        return z - values[0] if n else z
    i = torch.searchsorted(values, z.contiguous()).clamp(1, n - 1)
    x0, x1, y0, y1 = values[i - 1], values[i], scores[i - 1], scores[i]
    return y0 + (z - x0) * (y1 - y0) / (x1 - x0)


def calibration_record(logits: np.ndarray, rate: float, what: str, contrast: float = CONTRAST) -> Dict[str, Any]:
    """The checkpoint's ``calibration`` entry (JSON-able) from a member's logits over its training area:
    rank table, contrast, offset, base rate, means before/after."""
    import torch

    z = np.asarray(logits, dtype=np.float64).ravel()
    z = z[np.isfinite(z)]
    table = rank_table(z)
    ranked = contrast * rank_scores(torch.from_numpy(z), (np.asarray(table[0]), np.asarray(table[1]))).numpy()
    offset = fit_logit_offset(ranked, rate)
    return {
        "method": "normal score of the logit's rank in the training area x contrast, offset to the training base rate",
        "rank_values": table[0],
        "rank_scores": table[1],
        "logit_scale": float(contrast),
        "logit_offset": float(offset),
        "base_rate": float(rate),
        "base_rate_of": what,
        "mean_before": float(_sigmoid(z).mean()),
        "mean_after": float(_sigmoid(ranked + offset).mean()),
        "pixels": int(z.size),
    }


def logit_ranks(calibration: Optional[Dict[str, Any]]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """A member's rank table as arrays (values, scores); None for a model calibrated on raw logits
    (written before rank calibration) or not at all."""
    if not calibration or not calibration.get("rank_values"):
        return None
    return (np.asarray(calibration["rank_values"], dtype=np.float64),
            np.asarray(calibration["rank_scores"], dtype=np.float64))


def member_calibration(calibration: Optional[Dict[str, Any]], device: Any = None
                       ) -> Tuple[float, float, Optional[Tuple[Any, Any]]]:
    """(offset, scale, ranks) of a member's calibration, as ``class1_probability`` takes them: the rank
    table as float32 tensors on ``device``, made once (not on every batch)."""
    import torch

    table = logit_ranks(calibration)
    ranks = None if table is None else (torch.as_tensor(table[0], dtype=torch.float32, device=device),
                                        torch.as_tensor(table[1], dtype=torch.float32, device=device))
    return logit_offset(calibration), logit_scale(calibration), ranks


def logit_offset(calibration: Optional[Dict[str, Any]]) -> float:
    """The offset to add to a member's scaled logits (0 when it was not calibrated)."""
    if not calibration:
        return 0.0
    value = float(calibration.get("logit_offset", 0.0))
    return value if math.isfinite(value) else 0.0


def logit_scale(calibration: Optional[Dict[str, Any]]) -> float:
    """The factor on a member's rank scores (older checkpoints: on its logits; 1 when not calibrated)."""
    if not calibration:
        return 1.0
    value = float(calibration.get("logit_scale", 1.0))
    return value if math.isfinite(value) and value > 0 else 1.0


def class1_probability(logits: Any, offset: float = 0.0, scale: float = 1.0,
                       ranks: Optional[Tuple[Any, Any]] = None) -> Any:
    """Positive-class probability from logits (B, K, H, W): sigmoid(``scale`` * r(logit) + ``offset``).

    K >= 2: the class-1 logit against the others (softmax's class 1 when uncalibrated);
    K == 1: a sigmoid. ``ranks`` (the member's rank table, ``logit_ranks``), scale and offset
    are the member's calibration; r is its rank score (``rank_scores``), the logit itself
    without a table (older checkpoints, uncalibrated models).
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
    if ranks is not None:
        z = rank_scores(z, ranks)
    if scale != 1.0:
        z = z * scale
    return torch.sigmoid(z + offset) if offset else torch.sigmoid(z)

"""Deposit-level figures of a trained model for the training log: held-out skill first, fit second.

Why: pixel loss, IoU and accuracy say little when the labels are a few deposits (points),
and figures that include the training deposits measure fit, not skill. So after training
the model scores (1) the held-out deposits of the validation blocks against the
validation area - the prediction rate, with a 95 % bootstrap interval over deposits - and
(2) the training deposits against a seeded sample of training windows - the success rate,
labelled as fit. Deposits are the positive features (one point each), scored at their pixel.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .metrics import TOP_PERCENTS, area_rank_fractions, bootstrap_mean_interval, finite_or_none, rate_curve
from .raster import PixelBox

FIT_WINDOWS = 64
"""Training windows sampled (seeded) as the area the success rate ranks training deposits against."""
BOOTSTRAP = 1000



def window_probabilities(model: Any, dataset: Any, indices: Sequence[int], device: Any, autocast: Callable[[], Any],
                         batch_size: int, check_stop: Callable[[], None]) -> List[Tuple[int, np.ndarray, np.ndarray]]:
    """(index, class-1 probability (h, w), valid (h, w)) of the dataset's windows, in batches."""
    import torch

    from .calibration import class1_probability

    out: List[Tuple[int, np.ndarray, np.ndarray]] = []
    model.eval()
    for start in range(0, len(indices), max(1, batch_size)):
        check_stop()
        chunk = list(indices[start:start + batch_size])
        items = [dataset[i] for i in chunk]
        x = torch.stack([it["x"] for it in items]).to(device)
        with torch.no_grad(), autocast():
            prob = class1_probability(model(x)).float().cpu().numpy()
        for i, p, it in zip(chunk, prob, items):
            out.append((i, p, it["valid"].numpy().astype(bool)))
    return out


def _paint(shape: Tuple[int, int], windows: Sequence[PixelBox], results: List[Tuple[int, np.ndarray, np.ndarray]]
           ) -> np.ndarray:
    """float32 (H, W): each window's probabilities where it is valid (NaN elsewhere)."""
    h, w = shape
    out = np.full(shape, np.nan, dtype=np.float32)
    for i, prob, valid in results:
        r0, c0, r1, c1 = windows[i]
        rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
        p = prob[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0]
        v = valid[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0]
        out[rr0:rr1, cc0:cc1][v] = p[v]
    return out


def _deposit_scores(scores: np.ndarray, deposits: np.ndarray) -> np.ndarray:
    if not len(deposits):
        return np.zeros(0, dtype=np.float64)
    s = scores[deposits[:, 0], deposits[:, 1]].astype(np.float64)
    return s[np.isfinite(s)]


def curve_figures(area: np.ndarray, deposits: np.ndarray, n_boot: int, seed: int) -> Dict[str, Any]:
    """AUC (with a 95 % bootstrap interval over deposits) and top-k captures of one rate curve."""
    curve = rate_curve(area, deposits)
    lo, hi = bootstrap_mean_interval(area_rank_fractions(area, deposits), n_boot, seed)
    out: Dict[str, Any] = {"auc": finite_or_none(curve.auc), "auc_lo": lo, "auc_hi": hi, "n_deposits": int(deposits.size)}
    out.update({k: finite_or_none(v) for k, v in curve.top.items()})
    return out


def deposit_figures(model: Any, val_set: Any, train_set: Any, shape: Tuple[int, int], points: Optional[np.ndarray],
                    device: Any, autocast: Callable[[], Any], batch_size: int, seed: int,
                    check_stop: Callable[[], None] = lambda: None, n_boot: int = BOOTSTRAP) -> Dict[str, Any]:
    """Held-out figures of the validation windows and fit figures of a sample of training windows.

    Returns flat JSON-able numbers: ``val_prediction_rate_auc`` (+ ``_lo``/``_hi``),
    ``val_top1``..``val_top20``, ``val_n_deposits``, ``train_success_rate_auc``, ``train_top10``,
    ``train_n_deposits`` (None where undefined, e.g. no deposit held out).
    """
    from .sampling import point_pixels

    usable = np.ones(shape, dtype=bool)
    rc = point_pixels(points, usable) if points is not None else np.zeros((0, 2), dtype=np.int64)
    val_scores = _paint(shape, val_set.windows,
                        window_probabilities(model, val_set, range(len(val_set)), device, autocast, batch_size,
                                             check_stop))
    val_area = val_scores[np.isfinite(val_scores)]
    val = curve_figures(val_area, _deposit_scores(val_scores, rc), n_boot, seed)
    del val_scores
    rng = np.random.default_rng([seed, 7])
    n = len(train_set)
    sample = sorted(rng.choice(n, size=min(FIT_WINDOWS, n), replace=False).tolist()) if n else []
    with_deposits = [i for i, (r0, c0, r1, c1) in enumerate(train_set.windows)
                     if len(rc) and ((rc[:, 0] >= r0) & (rc[:, 0] < r1) & (rc[:, 1] >= c0) & (rc[:, 1] < c1)).any()]
    results = window_probabilities(model, train_set, sorted(set(sample) | set(with_deposits)), device, autocast,
                                   batch_size, check_stop)
    area = _paint(shape, train_set.windows, [r for r in results if r[0] in set(sample)])
    everything = _paint(shape, train_set.windows, results)
    fit = curve_figures(area[np.isfinite(area)], _deposit_scores(everything, rc), 0, seed)
    out = {f"val_prediction_rate_auc{s}": val[f"auc{s}"] for s in ("", "_lo", "_hi")}
    out.update({f"val_top{k}": val[f"top{k}"] for k in TOP_PERCENTS})
    out["val_n_deposits"] = val["n_deposits"]
    out.update({"train_success_rate_auc": fit["auc"], "train_top10": fit["top10"], "train_n_deposits": fit["n_deposits"]})
    return out


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def skill_lines(name: str, fig: Dict[str, Any]) -> List[str]:
    """The log lines: held-out skill first, then training-area fit, plainly labelled."""
    if fig.get("val_n_deposits"):
        ci = "" if fig.get("val_prediction_rate_auc_lo") is None else (
            f" [95 % {_f(fig['val_prediction_rate_auc_lo'])}, {_f(fig['val_prediction_rate_auc_hi'])}]")
        first = (f"{name} held-out skill ({fig['val_n_deposits']} deposit(s) in the validation blocks): "
                 f"prediction-rate AUC {_f(fig['val_prediction_rate_auc'])}{ci}; top 5 % of the validation area "
                 f"holds {_f(fig['val_top5'], 0)} % of them, top 10 % {_f(fig['val_top10'], 0)} %, top 20 % "
                 f"{_f(fig['val_top20'], 0)} %")
    else:
        first = (f"{name} held-out skill: no deposit lies in the validation blocks, so skill is not measured here; "
                 "use `python -m core cv` (spatial cross-validation) to measure it")
    second = (f"{name} fit, not skill ({fig.get('train_n_deposits', 0)} training deposit(s)): success-rate AUC "
              f"{_f(fig.get('train_success_rate_auc'))}, top 10 % of the training area holds "
              f"{_f(fig.get('train_top10'), 0)} %")
    return [first, second]

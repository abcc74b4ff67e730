"""Metrics against values computed by hand on tiny arrays."""
from __future__ import annotations

import numpy as np
import pytest

from core.metrics import latitude_weights, pixel_aucs, rate_curve, top_captures, top_threshold

# Ten pixels ranked 0.9 .. 0.0; two deposits, on the pixels scored 0.9 and 0.6.
AREA = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
DEPOSITS = np.array([0.9, 0.6])


def test_pixel_aucs_hand_computed() -> None:
    # Pairs (pos, neg): 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4.
    # Average precision: ranks 0.8(pos) P=1, 0.4(neg), 0.35(pos) P=2/3 -> (1 + 2/3)/2.
    out = pixel_aucs(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert out["roc_auc"] == pytest.approx(0.75)
    assert out["pr_auc"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["n_positive_pixels"] == 2 and out["n_pixels"] == 4


def test_pixel_aucs_undefined_with_one_class() -> None:
    out = pixel_aucs(np.array([0.1, 0.2]), np.array([0, 0]))
    assert out["roc_auc"] is None and out["pr_auc"] is None


def test_success_rate_curve_hand_computed() -> None:
    curve = rate_curve(AREA, DEPOSITS)
    # Deposit at 0.9: 0 pixels above, 1 tie -> captured at 5 % of the area (ties count half);
    # deposit at 0.6: 3 above, 1 tie -> 35 %. AUC = mean(1 - 0.05, 1 - 0.35) = 0.8.
    assert curve.auc == pytest.approx(0.8)
    assert curve.n_deposits == 2
    assert curve.area[0] == 0.0 and curve.area[-1] == pytest.approx(1.0)
    assert curve.captured[-1] == pytest.approx(1.0)
    # Half the deposits are found within the top 10 % of the area, all within the top 40 %.
    assert np.interp(0.1, curve.area, curve.captured) == pytest.approx(0.5)
    assert np.interp(0.4, curve.area, curve.captured) == pytest.approx(1.0)


def test_constant_map_scores_like_random() -> None:
    curve = rate_curve(np.full(50, 0.3), np.full(5, 0.3))
    assert curve.auc == pytest.approx(0.5)


def test_perfect_and_worst_ranking() -> None:
    area = np.linspace(0, 1, 101)
    assert rate_curve(area, np.array([1.0])).auc == pytest.approx(1 - 0.5 / 101)
    assert rate_curve(area, np.array([0.0])).auc == pytest.approx(0.5 / 101)


def test_top_captures_hand_computed() -> None:
    # top 1 % and 5 % of 10 pixels: the top pixel (0.9); top 10 %: 0.9; top 20 %: 0.8.
    assert top_threshold(AREA, 10) == 0.9
    assert top_threshold(AREA, 20) == 0.8
    assert top_threshold(AREA, 40) == 0.6
    tops = top_captures(AREA, DEPOSITS, top_percents=(1, 5, 10, 20, 40))
    assert tops == {"top1": 50.0, "top5": 50.0, "top10": 50.0, "top20": 50.0, "top40": 100.0}
    assert rate_curve(AREA, DEPOSITS).top["top20"] == 50.0


def test_area_weights_change_the_area_axis() -> None:
    # The top pixel holds 70 % of the area: it is no longer in the top 10 %.
    w = np.array([7.0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert top_threshold(AREA, 50, w) == 0.9
    assert top_threshold(AREA, 80, w) == 0.8
    curve = rate_curve(AREA, DEPOSITS, area_weights=w)
    # Deposit 0.9: half its own 0.7 -> 0.35; deposit 0.6: 0.9 above + half of 0.1 -> 0.95.
    assert curve.auc == pytest.approx(1 - (0.35 + 0.95) / 2)


def test_no_deposits_gives_undefined_scores() -> None:
    curve = rate_curve(AREA, np.array([]))
    assert curve.auc is None and curve.top["top10"] is None and curve.n_deposits == 0


def test_latitude_weights_peak_at_equator() -> None:
    # A 4 x 8 global grid: rows centred at 67.5, 22.5, -22.5, -67.5 degrees.
    w = latitude_weights((45.0, 0.0, -180.0, 0.0, -45.0, 90.0), 4, 8)
    assert w.shape == (4, 8)
    assert w[0, 0] == pytest.approx(np.cos(np.deg2rad(67.5)))
    assert w[1, 3] == pytest.approx(np.cos(np.deg2rad(22.5)))
    assert np.allclose(w[0], w[3])

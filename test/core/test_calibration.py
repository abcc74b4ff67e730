"""calibration.py: the rank table, the fixed contrast and the offset to the base rate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import ndtri

from core.calibration import (CONTRAST, calibration_record, class1_probability, logit_offset, logit_ranks,
                              logit_scale, rank_scores)


def _logits(n: int = 200_000, seed: int = 0) -> np.ndarray:
    """Skewed logits, as a network's are (a long upper tail)."""
    return np.random.default_rng(seed).gamma(2.0, 1.5, n) - 8.0


def _apply(rec, z: np.ndarray) -> np.ndarray:
    """The calibrated probability of class-1 logits ``z`` as prediction computes it."""
    logits = torch.from_numpy(np.stack([np.zeros_like(z), z])[None, :, :, None].astype(np.float32))
    return class1_probability(logits, logit_offset(rec), logit_scale(rec), logit_ranks(rec))[0, :, 0].numpy()


def test_rank_scores_are_normal_scores_of_the_training_ranks_and_keep_the_order() -> None:
    z = _logits()
    rec = calibration_record(z, 0.001, "deposits per pixel")
    table = logit_ranks(rec)
    ranked = rank_scores(torch.from_numpy(z), table).numpy()
    order = np.argsort(z)
    expected = ndtri((np.argsort(order) + 0.5) / z.size)  # each logit's normal score of rank
    inside = (z >= table[0][0]) & (z <= table[0][-1])  # the table's quantiles span all but the extreme tails
    assert inside.mean() > 0.998 and np.abs(ranked - expected)[inside].max() < 0.05
    assert np.all(np.diff(ranked[order]) >= 0)
    assert abs(ranked.mean()) < 0.01 and abs(ranked.std() - 1.0) < 0.02
    # Beyond the training area's range the scores go on rising: the order of pixels is never lost.
    outside = torch.tensor([z.min() - 10.0, z.min() - 1.0, z.max() + 1.0, z.max() + 10.0], dtype=torch.float64)
    beyond = rank_scores(outside, table).numpy()
    assert np.all(np.diff(beyond) > 0) and beyond[0] < ranked.min() and beyond[-1] > ranked.max()


def test_record_meets_the_base_rate_and_flat_and_sharp_members_share_one_scale() -> None:
    """A member stopped early (flat logits) and one trained longer (sharp) that rank alike must give
    the same map: the point of calibrating on ranks."""
    z = _logits()
    flat = calibration_record(0.1 * z, 0.001, "deposits per pixel")
    sharp = calibration_record(5.0 * z - 3.0, 0.001, "deposits per pixel")
    assert flat["logit_scale"] == sharp["logit_scale"] == CONTRAST
    for rec in (flat, sharp):
        assert rec["mean_after"] == pytest.approx(0.001, rel=1e-6) and rec["mean_before"] > 0.001
    test = _logits(20_000, seed=1)
    p_flat, p_sharp = _apply(flat, 0.1 * test), _apply(sharp, 5.0 * test - 3.0)
    assert np.allclose(p_flat, p_sharp, rtol=1e-3, atol=1e-9)
    assert float(p_flat.mean()) == pytest.approx(0.001, rel=0.05)


def test_older_calibrations_apply_scale_and_offset_to_the_logit() -> None:
    logits = torch.tensor([[[[0.0, 2.0]], [[1.0, -1.0]]]])  # (1, 2, 1, 2): class-1 logit 1 and -3
    p = class1_probability(logits, offset=-1.0, scale=2.0)
    assert torch.allclose(p, torch.sigmoid(torch.tensor([[[1.0, -7.0]]])))
    old = {"logit_scale": 0.5, "logit_offset": -3.0}  # written before rank calibration
    assert logit_ranks(old) is None and logit_scale(old) == 0.5 and logit_offset(old) == -3.0
    assert logit_scale(None) == 1.0 and logit_offset(None) == 0.0 and logit_ranks(None) is None

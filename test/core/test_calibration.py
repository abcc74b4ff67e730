"""calibration.py: the logit scale from held-out pixels and the offset to the base rate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.calibration import (SCALE_RANGE, calibration_record, class1_probability, fit_logit_scale, logit_offset,
                              logit_scale)


def _pixels(slope: float, n: int = 400_000, seed: int = 0):
    """Logits of a model that is ``1 / slope`` times too sharp, and labels drawn from the truth."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-(slope * z - 5.0)))
    return z, y


@pytest.mark.parametrize("slope", [0.4, 1.0, 2.5])
def test_scale_recovers_the_slope_that_generated_the_labels(slope: float) -> None:
    z, y = _pixels(slope)
    assert fit_logit_scale(z, y) == pytest.approx(slope, rel=0.1)


def test_scale_survives_background_subsampling_and_stays_in_range() -> None:
    z, y = _pixels(0.7, n=2_000_000)  # more background than MAX_SCALE_BACKGROUND: subsampled
    assert fit_logit_scale(z, y, seed=3) == pytest.approx(0.7, rel=0.1)
    assert fit_logit_scale(z, ~y) == SCALE_RANGE[0]  # anti-correlated: never an inverted map
    assert fit_logit_scale(z, np.zeros_like(y)) is None and fit_logit_scale(z, np.ones_like(y)) is None


def test_record_applies_the_scale_before_matching_the_base_rate() -> None:
    z, _ = _pixels(1.0)
    rec = calibration_record(z, 0.001, "deposits per pixel", scale=0.5)
    assert rec["logit_scale"] == 0.5 and rec["mean_after"] == pytest.approx(0.001, rel=1e-6)
    mean = float(torch.sigmoid(torch.from_numpy(0.5 * z + rec["logit_offset"])).mean())
    assert mean == pytest.approx(0.001, rel=1e-6)
    assert logit_scale(rec) == 0.5 and logit_offset(rec) == rec["logit_offset"]
    assert logit_scale(None) == 1.0 and logit_scale({"logit_offset": -3.0}) == 1.0  # older checkpoints


def test_class1_probability_uses_scale_and_offset() -> None:
    logits = torch.tensor([[[[0.0, 2.0]], [[1.0, -1.0]]]])  # (1, 2, 1, 2): class-1 logit 1 and -3
    p = class1_probability(logits, offset=-1.0, scale=2.0)
    assert torch.allclose(p, torch.sigmoid(torch.tensor([[[1.0, -7.0]]])))

"""Losses: masking by validity, imbalance handling, label smoothing, area weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.config import LOSSES
from core.errors import ConfigError
from core.losses import MAX_POS_WEIGHT, band_group_penalty, dice, focal, make_loss, positive_weight, pu_risk, weighted_ce


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    y = (torch.rand(2, 8, 8, generator=g) < 0.1).long()
    valid = torch.rand(2, 8, 8, generator=g) > 0.2
    return logits, y, valid


def test_weighted_ce_without_weighting_equals_torch_cross_entropy_on_valid_pixels() -> None:
    logits, y, valid = _batch()
    ours = weighted_ce(logits, y, valid, pos_weight=1.0)
    ref = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], y[valid])
    assert torch.allclose(ours, ref, atol=1e-6)


def test_weighted_ce_matches_torch_class_weights_and_smoothing() -> None:
    logits, y, valid = _batch(1)
    ours = weighted_ce(logits, y, valid, pos_weight=7.0, label_smoothing=0.1)
    ref = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], y[valid], weight=torch.tensor([1.0, 7.0]),
                          label_smoothing=0.1)
    # torch spreads smoothing over weighted classes slightly differently: ls=0 exact, ls>0 close
    exact = weighted_ce(logits, y, valid, pos_weight=7.0)
    ref0 = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], y[valid], weight=torch.tensor([1.0, 7.0]))
    assert torch.allclose(exact, ref0, atol=1e-6)
    assert abs(ours.item() - ref.item()) < 0.2 * ref.item()


@pytest.mark.parametrize("name", LOSSES)
def test_invalid_pixels_do_not_count(name: str) -> None:
    logits, y, valid = _batch(2)
    fn = make_loss(name, pos_weight=5.0)
    base = fn(logits, y, valid)
    changed = logits.clone()
    changed.permute(0, 2, 3, 1)[~valid] = torch.tensor([50.0, -50.0])
    flipped_y = y.clone()
    flipped_y[~valid] = 1 - flipped_y[~valid]
    assert torch.allclose(fn(changed, flipped_y, valid), base, atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_pushes_positives_up_even_when_rare(name: str) -> None:
    """With one positive among 256 pixels and all-background logits, the positive's logit must rise."""
    logits = torch.zeros(1, 2, 16, 16)
    logits[:, 0] = 3.0  # confident background everywhere
    logits.requires_grad_(True)
    y = torch.zeros(1, 16, 16, dtype=torch.long)
    y[0, 5, 5] = 1
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    loss = make_loss(name, pos_weight=positive_weight(1 / 256))(logits, y, valid)
    loss.backward()
    assert logits.grad[0, 1, 5, 5] < 0  # gradient descent increases the positive logit there
    assert math.isfinite(loss.item())


def test_positive_weight_is_capped_and_at_least_one() -> None:
    assert positive_weight(0.5) == 1.0
    assert positive_weight(0.2) == pytest.approx(4.0)
    assert positive_weight(1e-6) == MAX_POS_WEIGHT
    assert positive_weight(0.0) == MAX_POS_WEIGHT
    assert positive_weight(0.9) == 1.0


def test_focal_downweights_easy_pixels_relative_to_ce() -> None:
    y = torch.zeros(1, 1, 1, dtype=torch.long)
    valid = torch.ones(1, 1, 1, dtype=torch.bool)
    easy = torch.tensor([4.0, -4.0]).view(1, 2, 1, 1)
    hard = torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
    ratio_easy = focal(easy, y, valid) / weighted_ce(easy, y, valid)
    ratio_hard = focal(hard, y, valid) / weighted_ce(hard, y, valid)
    assert ratio_easy < 0.01 < ratio_hard


def test_dice_is_zero_for_a_perfect_confident_prediction_and_high_for_all_background() -> None:
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[0, 2:4, 2:4] = 1
    valid = torch.ones_like(y, dtype=torch.bool)
    perfect = torch.stack([(1 - y).float(), y.float()], dim=1) * 40 - 20
    background = torch.stack([torch.ones(1, 8, 8), torch.zeros(1, 8, 8)], dim=1) * 40 - 20
    assert dice(perfect, y, valid).item() < 0.05
    assert dice(background, y, valid).item() > 0.7


def test_area_weights_change_the_loss_like_pixel_weights() -> None:
    logits, y, valid = _batch(3)
    area = torch.zeros(8, 8)
    area[:4] = 1.0  # only the top half counts
    top_only = valid.clone()
    top_only[:, 4:] = False
    for name in LOSSES:
        fn = make_loss(name, pos_weight=3.0)
        assert torch.allclose(fn(logits, y, valid, area), fn(logits, y, top_only), atol=1e-6), name


def test_label_smoothing_keeps_loss_above_zero_for_perfect_predictions() -> None:
    y = torch.zeros(1, 4, 4, dtype=torch.long)
    valid = torch.ones_like(y, dtype=torch.bool)
    logits = torch.stack([torch.full((1, 4, 4), 20.0), torch.full((1, 4, 4), -20.0)], dim=1)
    assert weighted_ce(logits, y, valid).item() < 1e-6
    assert weighted_ce(logits, y, valid, label_smoothing=0.1).item() > 0.5


def test_unknown_loss_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="weighted_ce_dice"):
        make_loss("mse")


def test_all_invalid_batch_gives_finite_zero_loss() -> None:
    logits, y, _ = _batch(4)
    valid = torch.zeros(2, 8, 8, dtype=torch.bool)
    for name in ("weighted_ce", "focal"):
        assert make_loss(name)(logits, y, valid).item() == 0.0


def test_pu_with_the_labelled_share_is_balanced_presence_background_logistic_regression() -> None:
    """prior 0 = the labelled share: presences and the rest of the background weigh half each, i.e.
    cross-entropy with the positive class weighted by negatives/positives."""
    logits, y, valid = _batch(5)
    n_pos, n_neg = int((y[valid] == 1).sum()), int((y[valid] == 0).sum())
    balanced = weighted_ce(logits, y, valid, pos_weight=n_neg / n_pos)
    assert torch.allclose(pu_risk(logits, y, valid, prior=0.0), balanced, atol=1e-5)


def test_pu_prior_forgives_unlabelled_pixels_that_look_positive() -> None:
    """The documented PU behaviour: with a prior above the labelled share, a map that also scores some
    unlabelled pixels high costs less than under the presence-background reading (prior 0), because
    part of the unlabelled area is assumed to hold undiscovered positives."""
    y = torch.zeros(1, 10, 10, dtype=torch.long)
    y[0, 0, :2] = 1  # 2 labelled positives among 100 pixels
    valid = torch.ones_like(y, dtype=torch.bool)
    z = torch.full((1, 10, 10), -4.0)
    z[0, 0, :2] = 4.0
    z[0, 5, :8] = 4.0  # 8 unlabelled pixels that look like the positives
    logits = torch.stack([torch.zeros_like(z), z], dim=1)
    assert pu_risk(logits, y, valid, prior=0.1) < 0.7 * pu_risk(logits, y, valid, prior=0.0)


def test_pu_non_negative_correction_pushes_back_when_the_negative_risk_goes_below_zero() -> None:
    """A model that calls every positive 'certain' and the unlabelled area 'negative' drives the
    corrected negative risk below zero when the prior is large; the loss stays >= 0 and its gradient
    then lowers the positives' scores instead of raising them further (Kiryo et al.'s correction)."""
    y = torch.zeros(1, 4, 4, dtype=torch.long)
    y[0, 0, :2] = 1
    valid = torch.ones_like(y, dtype=torch.bool)
    z = torch.full((1, 4, 4), -8.0)
    z[0, 0, :2] = 0.0  # positives undecided: their background loss is large
    logits = torch.stack([torch.zeros_like(z), z], dim=1).requires_grad_(True)
    loss = pu_risk(logits, y, valid, prior=0.4)
    assert loss.item() >= 0
    loss.backward()
    assert logits.grad[0, 1, 0, 0] > 0  # descent lowers the positive's score: the estimate was negative


def test_pu_with_no_positive_in_the_batch_only_pushes_the_background_down() -> None:
    logits, _, valid = _batch(6)
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    loss = pu_risk(logits.requires_grad_(True), y, valid)
    loss.backward()
    assert math.isfinite(loss.item()) and (logits.grad[:, 1][valid] >= 0).all()


def test_band_group_penalty_is_the_sum_of_band_norms_with_one_hot_bands_as_one_group() -> None:
    w = torch.zeros(4, 5, 1, 1)
    w[:, 0] = 1.0  # band 1: norm 2
    w[0, 3], w[1, 4] = 3.0, 4.0  # band 3 = channels 3, 4 (one-hot): norm 5, sqrt(2) for its size
    groups = [[0], [1, 2], [3, 4]]
    assert band_group_penalty(w, groups).item() == pytest.approx(2.0 + 0.0 + math.sqrt(2) * 5.0, rel=1e-5)
    w.requires_grad_(True)
    band_group_penalty(w, groups).backward()
    assert torch.count_nonzero(w.grad[:, 1:3]) == 0  # a band already at zero is left there


def test_band_group_penalty_weights_scale_each_band() -> None:
    """Per-band weights (band screening) multiply each band's term; 0 frees a band entirely."""
    w = torch.zeros(4, 5, 1, 1)
    w[:, 0] = 1.0
    w[0, 3], w[1, 4] = 3.0, 4.0
    groups = [[0], [1, 2], [3, 4]]
    assert band_group_penalty(w, groups, [0.5, 1.0, 0.0]).item() == pytest.approx(1.0, rel=1e-5)
    assert band_group_penalty(w, groups, [1.0, 1.0, 1.0]).item() == pytest.approx(band_group_penalty(w, groups).item())

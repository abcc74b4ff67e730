"""Imbalance-aware segmentation losses, masked by the validity of each pixel.

Positives are rare (tens of deposits in millions of pixels), so a plain cross-entropy is
minimised by "everything is background". The losses here:

- ``weighted_ce``: cross-entropy with the positive class weighted by the training set's
  negative/positive ratio, capped at ``MAX_POS_WEIGHT`` so a handful of points cannot
  make the gradient explode;
- ``focal``: focal loss (gamma 2), which down-weights the many easy background pixels;
- ``dice``: soft Dice on the positive class (insensitive to the class ratio);
- ``weighted_ce_dice``: the sum of the first and the third (polygon labels, many pixels);
- ``pu``: positive-unlabelled risk for point labels (``pu_risk``): labelled pixels are
  positives, every other pixel is UNLABELLED (a mixture that may hold undiscovered
  deposits), not negative. The two sides are balanced, as presence-background methods
  (MaxEnt, balanced logistic regression) balance presences against the background.

``band_group_penalty`` is the group-lasso term training adds for band selection.

Every loss averages over VALID pixels only (nodata and outside the study area never count)
and accepts per-pixel area weights (cos latitude for spherical models on a global grid).
Label smoothing moves ``label_smoothing`` of the target mass onto the other classes.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .config import LOSSES
from .errors import ConfigError

MAX_POS_WEIGHT = 100.0
"""Upper bound of the positive-class weight of the weighted cross-entropy."""
FOCAL_GAMMA = 2.0
DICE_EPS = 1.0
DEFAULT_PU_PRIOR = 0.0
"""Share of the unlabelled area assumed to be positive (``pu``); 0 = the labelled share."""

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def positive_weight(positive_fraction: float, cap: float = MAX_POS_WEIGHT) -> float:
    """Weight of the positive class: negatives per positive, clipped to [1, cap]."""
    if not positive_fraction > 0:
        return float(cap)
    return float(min(cap, max(1.0, (1.0 - positive_fraction) / positive_fraction)))


def smoothed_targets(y: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """One-hot targets (B, K, H, W) with ``label_smoothing`` spread over all classes."""
    one_hot = F.one_hot(y.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
    return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def pixel_weights(valid: torch.Tensor, area: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-pixel weight (B, H, W): 0 where invalid, the area weight (or 1) elsewhere."""
    w = valid.float()
    if area is not None:
        w = w * area.to(w.dtype).expand_as(w)
    return w


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` under ``weights``; 0 (with a gradient path) when no pixel counts."""
    return (values * weights).sum() / weights.sum().clamp_min(1e-8)


def weighted_ce(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, area: Optional[torch.Tensor] = None, *,
                pos_weight: float = 1.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """Class-weighted cross-entropy over valid pixels (positive class weighted by ``pos_weight``)."""
    logp = F.log_softmax(logits.float(), dim=1)
    target = smoothed_targets(y, logits.shape[1], label_smoothing)
    class_w = torch.ones(logits.shape[1], device=logits.device)
    class_w[1:] = pos_weight
    ce = -(target * logp * class_w[None, :, None, None]).sum(dim=1)
    w = pixel_weights(valid, area) * class_w[y.clamp(0, logits.shape[1] - 1)]
    return (ce * pixel_weights(valid, area)).sum() / w.sum().clamp_min(1e-8)


def focal(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, area: Optional[torch.Tensor] = None, *,
          gamma: float = FOCAL_GAMMA, label_smoothing: float = 0.0) -> torch.Tensor:
    """Focal loss: cross-entropy scaled by (1 - p_true)**gamma, so easy background fades out."""
    logp = F.log_softmax(logits.float(), dim=1)
    target = smoothed_targets(y, logits.shape[1], label_smoothing)
    p_true = logp.exp().gather(1, y.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
    ce = -(target * logp).sum(dim=1)
    return _weighted_mean((1.0 - p_true).pow(gamma) * ce, pixel_weights(valid, area))


def dice(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, area: Optional[torch.Tensor] = None, *,
         label_smoothing: float = 0.0) -> torch.Tensor:
    """Soft Dice loss of the positive class (classes >= 1 pooled) over valid pixels."""
    prob = 1.0 - F.softmax(logits.float(), dim=1)[:, 0]
    target = 1.0 - smoothed_targets(y, logits.shape[1], label_smoothing)[:, 0]
    w = pixel_weights(valid, area)
    inter = (prob * target * w).sum()
    denom = (prob * w).sum() + (target * w).sum()
    return 1.0 - (2.0 * inter + DICE_EPS) / (denom + DICE_EPS)


def _logit_margin(logits: torch.Tensor) -> torch.Tensor:
    """z = logit(positive) - logit(background): softmax over 2 classes is sigmoid(z)."""
    logits = logits.float()
    return torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]


def pu_risk(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, area: Optional[torch.Tensor] = None, *,
            prior: float = DEFAULT_PU_PRIOR) -> torch.Tensor:
    """Balanced non-negative positive-unlabelled risk with the logistic loss.

    ``R = 0.5 * E_P[l(z, 1)] + 0.5 * max(0, E_U[l(z, 0)] - pi * E_P[l(z, 0)]) / (1 - pi)``
    (nnPU, Kiryo et al. 2017, balanced for rare positives as in Su et al. 2021), where P =
    the labelled pixels, U = every valid pixel (the background sample, which holds the
    positives too), ``pi = prior`` the share of U assumed positive and l the logistic loss.
    The second term estimates the risk of the true negatives by removing the positives'
    share from the unlabelled; when that estimate goes below zero (a flexible model
    over-fitting the few positives) the step follows minus its gradient alone (Kiryo et
    al.'s non-negative correction, beta 0, gamma 1); the value is then 0.5 * E_P[l(z, 1)]
    + 0.5 * |estimate| / (1 - pi), never negative. ``prior=0`` means the labelled share of the
    batch's pixels: then the risk is plain presence-background logistic regression with
    presences and background weighing the same. Label smoothing does not apply.
    """
    z = _logit_margin(logits)
    w = pixel_weights(valid, area)
    pos = w * (y > 0).float()
    n_pos, n_all = pos.sum(), w.sum().clamp_min(1e-8)
    pi = float(prior) if prior > 0 else float((n_pos / n_all).detach())
    pi = min(max(pi, 0.0), 0.5)
    loss_pos = F.softplus(-z)  # -log p(positive)
    loss_neg = F.softplus(z)  # -log p(background)
    unlabelled = (loss_neg * w).sum() / n_all
    if float(n_pos) <= 0:
        return 0.5 * unlabelled / (1.0 - pi)
    risk_pos = (loss_pos * pos).sum() / n_pos
    negative = unlabelled - pi * (loss_neg * pos).sum() / n_pos
    if float(negative.detach()) < 0:  # non-negative correction: step back on the negative risk only
        return 0.5 * risk_pos.detach() - 0.5 * negative / (1.0 - pi)
    return 0.5 * risk_pos + 0.5 * negative / (1.0 - pi)


def band_group_penalty(weight: torch.Tensor, groups: Sequence[Sequence[int]],
                       group_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Group lasso over the input channels of a first layer: sum_g sqrt(|g|) * ||W[:, g]||.

    ``weight`` is the (out, in, ...) weight of the layer that reads the encoded bands;
    ``groups`` lists the input channels of each raw band (a categorical band's one-hot
    channels form one group). The penalty drives whole bands towards zero, as an L1
    penalty selects bands in a sparse logistic regression. ``group_weights`` (band
    screening, ``core/screening.py``) scales each band's term: an adaptive group lasso.
    """
    w = weight.float().transpose(0, 1).reshape(weight.shape[1], -1)
    per_channel = w.pow(2).sum(dim=1)
    index = torch.tensor([g for g, chans in enumerate(groups) for _ in chans], device=weight.device)
    channels = torch.tensor([c for chans in groups for c in chans], device=weight.device)
    sizes = torch.tensor([float(len(chans)) for chans in groups], device=weight.device)
    per_group = torch.zeros(len(groups), device=weight.device).index_add(0, index, per_channel[channels])
    scale = sizes.sqrt() * (sizes > 0)
    if group_weights is not None:
        scale = scale * torch.tensor([float(v) for v in group_weights], device=weight.device)
    return (scale * per_group.clamp_min(1e-12).sqrt()).sum()


def make_loss(name: str, *, pos_weight: float = 1.0, label_smoothing: float = 0.0,
              pu_prior: float = DEFAULT_PU_PRIOR) -> LossFn:
    """The loss called ``name`` as ``fn(logits, y, valid, area=None) -> scalar``.

    Args:
        name: one of config.LOSSES.
        pos_weight: positive-class weight for the cross-entropy (see ``positive_weight``).
        label_smoothing: fraction of the target mass spread over the classes.
        pu_prior: the ``pu`` loss's share of the unlabelled area assumed positive.
    """
    if name not in LOSSES:
        raise ConfigError(f"loss {name!r} is not valid; use one of {', '.join(LOSSES)}")

    def loss(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor,
             area: Optional[torch.Tensor] = None) -> torch.Tensor:
        if name == "weighted_ce":
            return weighted_ce(logits, y, valid, area, pos_weight=pos_weight, label_smoothing=label_smoothing)
        if name == "focal":
            return focal(logits, y, valid, area, label_smoothing=label_smoothing)
        if name == "dice":
            return dice(logits, y, valid, area, label_smoothing=label_smoothing)
        if name == "pu":
            return pu_risk(logits, y, valid, area, prior=pu_prior)
        return (weighted_ce(logits, y, valid, area, pos_weight=pos_weight, label_smoothing=label_smoothing)
                + dice(logits, y, valid, area, label_smoothing=label_smoothing))

    return loss

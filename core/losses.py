"""Imbalance-aware segmentation losses, masked by the validity of each pixel.

Positives are rare (tens of deposits in millions of pixels), so a plain cross-entropy is
minimised by "everything is background". The losses here:

- ``weighted_ce``: cross-entropy with the positive class weighted by the training set's
  negative/positive ratio, capped at ``MAX_POS_WEIGHT`` so a handful of points cannot
  make the gradient explode;
- ``focal``: focal loss (gamma 2), which down-weights the many easy background pixels;
- ``dice``: soft Dice on the positive class (insensitive to the class ratio);
- ``weighted_ce_dice`` (the default): the sum of the first and the third.

Every loss averages over VALID pixels only (nodata and outside the study area never count)
and accepts per-pixel area weights (cos latitude for spherical models on a global grid).
Label smoothing moves ``label_smoothing`` of the target mass onto the other classes.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .config import LOSSES
from .errors import ConfigError

MAX_POS_WEIGHT = 100.0
"""Upper bound of the positive-class weight of the weighted cross-entropy."""
FOCAL_GAMMA = 2.0
DICE_EPS = 1.0

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


def make_loss(name: str, *, pos_weight: float = 1.0, label_smoothing: float = 0.0) -> LossFn:
    """The loss called ``name`` as ``fn(logits, y, valid, area=None) -> scalar``.

    Args:
        name: one of config.LOSSES.
        pos_weight: positive-class weight for the cross-entropy (see ``positive_weight``).
        label_smoothing: fraction of the target mass spread over the classes.
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
        return (weighted_ce(logits, y, valid, area, pos_weight=pos_weight, label_smoothing=label_smoothing)
                + dice(logits, y, valid, area, label_smoothing=label_smoothing))

    return loss

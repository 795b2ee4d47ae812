"""Overlap metrics for binary masks, per image and pooled over a set.

Convention for empty masks: when the prediction and the truth are both empty the two agree
perfectly, so Dice = IoU = 1; when exactly one is empty, Dice = IoU = 0.
Works on numpy arrays and torch tensors alike (anything with .sum and elementwise &, |).
"""

from __future__ import annotations

import numpy as np
import torch


def _flat_bool(masks, batched: bool):
    """View masks as booleans, flattened per image: (N, pixels) if batched, else (pixels,)."""
    masks = masks.bool() if isinstance(masks, torch.Tensor) else np.asarray(masks).astype(bool)
    return masks.reshape(masks.shape[0], -1) if batched else masks.reshape(-1)


def _ratio(numerator, denominator):
    """numerator / denominator, with 0/0 defined as 1 (both masks empty: perfect agreement)."""
    if isinstance(denominator, torch.Tensor):
        return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.ones_like(numerator, dtype=torch.float32))
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.where(denominator > 0, np.asarray(numerator) / np.maximum(denominator, 1), 1.0)


def dice_per_image(pred, truth):
    """Dice of each image in a batch of binary masks shaped (N, ...)."""
    pred, truth = _flat_bool(pred, True), _flat_bool(truth, True)
    intersection = (pred & truth).sum(1)
    return _ratio(2.0 * intersection, pred.sum(1) + truth.sum(1))


def iou_per_image(pred, truth):
    """Intersection over union of each image in a batch of binary masks shaped (N, ...)."""
    pred, truth = _flat_bool(pred, True), _flat_bool(truth, True)
    intersection = (pred & truth).sum(1)
    return _ratio(1.0 * intersection, (pred | truth).sum(1))


def dice_pooled(pred, truth) -> float:
    """Dice over all pixels of all images together (large lungs weigh more than small ones)."""
    pred, truth = _flat_bool(pred, False), _flat_bool(truth, False)
    return float(_ratio(2.0 * (pred & truth).sum(), pred.sum() + truth.sum()))


def iou_pooled(pred, truth) -> float:
    """IoU over all pixels of all images together."""
    pred, truth = _flat_bool(pred, False), _flat_bool(truth, False)
    return float(_ratio(1.0 * (pred & truth).sum(), (pred | truth).sum()))

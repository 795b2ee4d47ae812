"""Overlap and boundary metrics for binary masks, per image and pooled over a set.

Convention for empty masks: when the prediction and the truth are both empty the two agree
perfectly, so Dice = IoU = 1; when exactly one is empty, Dice = IoU = 0.
The same holds for HD95, in pixels: both empty -> 0.0; exactly one empty -> the image
diagonal sqrt(H^2 + W^2), the worst distance possible, so a missed lung is penalised rather
than dropped from the mean (MONAI returns NaN or inf there instead).
Dice and IoU work on numpy arrays and torch tensors alike (anything with .sum and
elementwise &, |); HD95 converts tensors to numpy.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree


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
    """Dice of each image in a batch of binary masks (nonzero is lung).

    Args:
        pred: predicted masks shaped (N, ...), numpy array or torch tensor.
        truth: true masks, shaped as `pred`.

    Returns:
        the N Dice scores (a numpy array, or a tensor for tensors); 1 where both masks are empty.
    """
    pred, truth = _flat_bool(pred, True), _flat_bool(truth, True)
    intersection = (pred & truth).sum(1)
    return _ratio(2.0 * intersection, pred.sum(1) + truth.sum(1))


def iou_per_image(pred, truth):
    """Intersection over union of each image in a batch of binary masks (nonzero is lung).

    Args:
        pred: predicted masks shaped (N, ...), numpy array or torch tensor.
        truth: true masks, shaped as `pred`.

    Returns:
        the N IoU scores (a numpy array, or a tensor for tensors); 1 where both masks are empty.
    """
    pred, truth = _flat_bool(pred, True), _flat_bool(truth, True)
    intersection = (pred & truth).sum(1)
    return _ratio(1.0 * intersection, (pred | truth).sum(1))


def dice_pooled(pred, truth) -> float:
    """Dice over all pixels of all images together (large lungs weigh more than small ones).

    Args:
        pred: predicted masks of any shape, numpy array or torch tensor.
        truth: true masks, shaped as `pred`.

    Returns:
        the pooled Dice; 1.0 when both are empty.
    """
    pred, truth = _flat_bool(pred, False), _flat_bool(truth, False)
    return float(_ratio(2.0 * (pred & truth).sum(), pred.sum() + truth.sum()))


def iou_pooled(pred, truth) -> float:
    """IoU over all pixels of all images together.

    Args:
        pred: predicted masks of any shape, numpy array or torch tensor.
        truth: true masks, shaped as `pred`.

    Returns:
        the pooled IoU; 1.0 when both are empty.
    """
    pred, truth = _flat_bool(pred, False), _flat_bool(truth, False)
    return float(_ratio(1.0 * (pred & truth).sum(), (pred | truth).sum()))


def _boundary_points(mask: np.ndarray) -> np.ndarray:
    """(row, col) of the boundary pixels of one boolean mask, as a (K, 2) float array.

    Boundary = mask pixels with a 4-neighbour outside the mask (pixels beyond the image count
    as outside): mask & ~binary_erosion(mask) with the 3x3 cross, scipy's default structure
    and so what MONAI's get_mask_edges uses. The cross gives a thin, 8-connected contour; the
    full 3x3 square would add pixels that touch the outside only diagonally, a thicker contour
    with no more information and more points to search.
    The erosion is done by hand with four shifted views of the mask's bounding box, padded by
    one background pixel: the same pixels as scipy.ndimage.binary_erosion on the whole image,
    about three times faster (36 ms against 116 ms for a 2400 x 1800 lung box).
    """
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top, left = rows[0], cols[0]
    box = np.pad(mask[top:rows[-1] + 1, left:cols[-1] + 1], 1)
    inside = box[1:-1, 1:-1]
    interior = inside & box[:-2, 1:-1] & box[2:, 1:-1] & box[1:-1, :-2] & box[1:-1, 2:]
    return np.argwhere(inside & ~interior).astype(np.float64) + (top, left)


def _directed_hd95(from_points: np.ndarray, to_tree: cKDTree) -> float:
    """95th percentile of the distances from each point to its nearest point in the tree."""
    distances, _ = to_tree.query(from_points, k=1)
    return float(np.percentile(distances, 95))


def _as_numpy_bool(masks) -> np.ndarray:
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    return np.asarray(masks).astype(bool, copy=False)


def hd95(pred, truth, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance between two binary H x W masks (as MONAI's
    compute_hausdorff_distance(percentile=95)).

    For each boundary pixel of one mask, the distance to the nearest boundary pixel of the
    other; the 95th percentile of each direction; the larger of the two.

    Args:
        pred: the predicted H x W mask, numpy array or torch tensor.
        truth: the true mask, shaped as `pred`.
        spacing: the (row, column) size of one pixel in the unit wanted (default: pixels of the arrays given): a 128 px
            mask of a 3000 x 2400 image with spacing (3000/128, 2400/128) gives distances in original pixels.

    Returns:
        the distance; 0.0 when both masks are empty, the image diagonal when exactly one is.

    Raises:
        ValueError: when the masks are not two-dimensional or differ in shape.
    """
    pred, truth = _as_numpy_bool(pred), _as_numpy_bool(truth)
    if pred.ndim != 2 or pred.shape != truth.shape:
        raise ValueError(f"hd95 expects two H x W masks of the same shape, got {pred.shape} and {truth.shape}")
    pred_empty, truth_empty = not pred.any(), not truth.any()
    if pred_empty and truth_empty:
        return 0.0
    scale = np.asarray(spacing, dtype=np.float64)
    if pred_empty or truth_empty:
        return float(np.hypot(*(np.asarray(pred.shape) * scale)))
    pred_points, truth_points = _boundary_points(pred) * scale, _boundary_points(truth) * scale
    return max(_directed_hd95(pred_points, cKDTree(truth_points)),
               _directed_hd95(truth_points, cKDTree(pred_points)))


def hd95_per_image(pred, truth) -> np.ndarray:
    """HD95 (see hd95), in pixels, of each image in a batch of binary masks.

    Args:
        pred: predicted masks, N x H x W (or N x 1 x H x W), numpy array or torch tensor.
        truth: true masks, shaped as `pred`.

    Returns:
        the N distances, float64.

    Raises:
        ValueError: when the masks differ in shape or are not N x H x W (or N x 1 x H x W).
    """
    pred, truth = _as_numpy_bool(pred), _as_numpy_bool(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"hd95_per_image expects masks of the same shape, got {pred.shape} and {truth.shape}")
    if pred.ndim == 4 and pred.shape[1] == 1:  # the model's channel axis
        pred, truth = pred[:, 0], truth[:, 0]
    if pred.ndim != 3:
        raise ValueError(f"hd95_per_image expects N x H x W masks, got shape {pred.shape}")
    return np.array([hd95(p, t) for p, t in zip(pred, truth)], dtype=np.float64)

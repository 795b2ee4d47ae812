"""Tests for lungseg.model.metrics: Dice and IoU, per image and pooled, and HD95, on numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from lungseg.model.metrics import (
    dice_per_image,
    dice_pooled,
    hd95,
    hd95_per_image,
    iou_per_image,
    iou_pooled,
)

# Two 2x4 images.
# Image 0: pred has 3 pixels, truth 2 pixels, 2 shared.
#   Dice = 2*2 / (3+2) = 0.8;  IoU = 2 / |union 3| = 2/3
# Image 1: pred has 1 pixel, truth 3 pixels, 1 shared.
#   Dice = 2*1 / (1+3) = 0.5;  IoU = 1 / |union 3| = 1/3
PRED = np.array([
    [[1, 1, 1, 0], [0, 0, 0, 0]],
    [[0, 0, 0, 0], [0, 0, 0, 1]],
], dtype=np.uint8)
TRUTH = np.array([
    [[1, 1, 0, 0], [0, 0, 0, 0]],
    [[0, 0, 0, 0], [0, 1, 1, 1]],
], dtype=np.uint8)
# Pooled over both images: intersection 2+1=3, |pred| 3+1=4, |truth| 2+3=5, union 3+3=6
#   Dice = 2*3 / (4+5) = 6/9 = 2/3;  IoU = 3/6 = 0.5
DICE = [0.8, 0.5]
IOU = [2 / 3, 1 / 3]
DICE_POOLED = 2 / 3
IOU_POOLED = 0.5


def test_per_image_dice_and_iou_by_hand():
    np.testing.assert_allclose(dice_per_image(PRED, TRUTH), DICE)
    np.testing.assert_allclose(iou_per_image(PRED, TRUTH), IOU)


def test_pooled_dice_and_iou_by_hand():
    assert dice_pooled(PRED, TRUTH) == pytest.approx(DICE_POOLED)
    assert iou_pooled(PRED, TRUTH) == pytest.approx(IOU_POOLED)
    assert isinstance(dice_pooled(PRED, TRUTH), float) and isinstance(iou_pooled(PRED, TRUTH), float)


def test_perfect_and_disjoint_masks():
    np.testing.assert_allclose(dice_per_image(TRUTH, TRUTH), [1.0, 1.0])
    np.testing.assert_allclose(iou_per_image(TRUTH, TRUTH), [1.0, 1.0])
    disjoint = np.zeros_like(TRUTH)
    disjoint[0, 1, 0] = disjoint[1, 0, 0] = 1  # non-empty, overlaps nothing
    np.testing.assert_allclose(dice_per_image(disjoint, TRUTH), [0.0, 0.0])
    assert dice_pooled(disjoint, TRUTH) == 0.0


def test_both_empty_is_perfect_and_one_empty_is_zero():
    empty = np.zeros((2, 3, 3), dtype=np.uint8)
    full = np.ones((2, 3, 3), dtype=np.uint8)
    for metric in (dice_per_image, iou_per_image):
        np.testing.assert_array_equal(metric(empty, empty), [1.0, 1.0])
        np.testing.assert_array_equal(metric(empty, full), [0.0, 0.0])
        np.testing.assert_array_equal(metric(full, empty), [0.0, 0.0])
    for metric in (dice_pooled, iou_pooled):
        assert metric(empty, empty) == 1.0
        assert metric(empty, full) == 0.0 and metric(full, empty) == 0.0


def test_empty_case_is_per_image_within_a_batch():
    # image 0: both empty -> 1; image 1: pred 4 px, truth 2 px inside it -> Dice 2*2/6 = 2/3, IoU 2/4 = 0.5
    pred = np.zeros((2, 2, 2), dtype=np.uint8)
    truth = np.zeros((2, 2, 2), dtype=np.uint8)
    pred[1] = 1
    truth[1, 0] = 1
    np.testing.assert_allclose(dice_per_image(pred, truth), [1.0, 2 / 3])
    np.testing.assert_allclose(iou_per_image(pred, truth), [1.0, 0.5])


def test_pooled_differs_from_the_mean_of_per_image_scores():
    # a large lung predicted perfectly and a small one missed entirely:
    # image 0: 100 px, perfect -> Dice 1;  image 1: truth 4 px, pred 4 other px -> Dice 0
    # per-image mean = 0.5, pooled = 2*100 / (104 + 104) = 200/208 ~ 0.96
    truth = np.zeros((2, 12, 12), dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[0, :10, :10] = pred[0, :10, :10] = 1
    truth[1, 0, :4] = 1
    pred[1, 11, :4] = 1
    assert dice_per_image(pred, truth).mean() == pytest.approx(0.5)
    assert dice_pooled(pred, truth) == pytest.approx(200 / 208)
    # IoU: per image [1, 0] -> 0.5; pooled 100 / (100 + 8) ~ 0.926
    assert iou_per_image(pred, truth).mean() == pytest.approx(0.5)
    assert iou_pooled(pred, truth) == pytest.approx(100 / 108)


def test_non_binary_values_count_as_foreground():
    # a probability-free mask saved as 0/255 must score like 0/1
    np.testing.assert_allclose(dice_per_image(PRED * 255, TRUTH), DICE)
    assert iou_pooled(PRED, TRUTH.astype(bool)) == pytest.approx(IOU_POOLED)


def test_numpy_and_torch_give_the_same_numbers():
    rng = np.random.default_rng(0)
    pred = rng.random((5, 8, 8)) > 0.5
    truth = rng.random((5, 8, 8)) > 0.4
    pred[2] = truth[2] = False  # both empty
    pred[3] = False  # one empty
    cases = [(PRED, TRUTH), (pred, truth)]
    for p, t in cases:
        tp, tt = torch.from_numpy(np.asarray(p, dtype=np.uint8)), torch.from_numpy(np.asarray(t, dtype=np.uint8))
        for metric in (dice_per_image, iou_per_image):
            from_numpy = np.asarray(metric(p, t), dtype=np.float64)
            from_torch = metric(tp, tt)
            assert isinstance(from_torch, torch.Tensor)
            np.testing.assert_allclose(from_torch.numpy(), from_numpy, rtol=1e-6)
        for metric in (dice_pooled, iou_pooled):
            assert metric(tp, tt) == pytest.approx(metric(p, t), rel=1e-6)
    np.testing.assert_allclose(dice_per_image(torch.from_numpy(pred), torch.from_numpy(truth))[2:4].numpy(), [1.0, 0.0])


def test_torch_accepts_float_and_bool_tensors_with_a_channel_axis():
    # N x 1 x H x W, as the model's outputs come
    p = torch.from_numpy(PRED).float().unsqueeze(1)
    t = torch.from_numpy(TRUTH).bool().unsqueeze(1)
    np.testing.assert_allclose(dice_per_image(p, t).numpy(), DICE, rtol=1e-6)
    np.testing.assert_allclose(iou_per_image(p, t).numpy(), IOU, rtol=1e-6)


# --------------------------------------------------------------------------- HD95

def _square(size=(40, 40), top=10, left=10, side=20) -> np.ndarray:
    mask = np.zeros(size, dtype=np.uint8)
    mask[top:top + side, left:left + side] = 1
    return mask


def _hd95_by_distance_transform(a: np.ndarray, b: np.ndarray) -> float:
    """MONAI's way, independent of ours: scipy erosion for the edges, a full-image distance transform."""
    edge_a, edge_b = (m & ~ndimage.binary_erosion(m) for m in (a.astype(bool), b.astype(bool)))
    a_to_b = ndimage.distance_transform_edt(~edge_b)[edge_a]
    b_to_a = ndimage.distance_transform_edt(~edge_a)[edge_b]
    return max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))


def _random_blobs(rng: np.random.Generator, size=(48, 40)) -> np.ndarray:
    # smoothed noise thresholded: several blobs of odd shapes, some touching the image border
    return ndimage.gaussian_filter(rng.random(size), 3) > 0.5


@pytest.mark.parametrize("k", [1, 3, 7])
def test_hd95_of_a_square_and_the_same_square_shifted_by_k_is_k(k):
    # every point of the left edge of A is exactly k from B's left edge, and no boundary
    # point is farther than k from the other boundary, so the 95th percentile is k
    assert hd95(_square(), _square(left=10 + k)) == pytest.approx(k)
    assert hd95(_square(), _square(top=10 + k)) == pytest.approx(k)


def test_hd95_ignores_a_few_far_outliers_where_the_hausdorff_distance_would_not():
    truth = _square()
    pred = truth.copy()
    pred[38, 38] = 1  # one speck ~12 px away from the square: 1 boundary point of 77
    assert hd95(pred, truth) == 0.0


def test_hd95_identical_masks_and_empty_masks():
    assert hd95(_square(), _square()) == 0.0
    empty = np.zeros((30, 40), dtype=np.uint8)
    assert hd95(empty, empty) == 0.0
    one = _square(size=(30, 40), side=5)
    assert hd95(empty, one) == pytest.approx(50.0)  # the diagonal: sqrt(30^2 + 40^2)
    assert hd95(one, empty) == pytest.approx(50.0)


def test_hd95_matches_a_full_distance_transform_on_random_shapes():
    rng = np.random.default_rng(0)
    for _ in range(10):
        a, b = _random_blobs(rng), _random_blobs(rng)
        assert a.any() and b.any()
        assert hd95(a, b) == pytest.approx(_hd95_by_distance_transform(a, b))
    full = np.ones((12, 9), dtype=bool)  # every boundary pixel lies on the image border
    assert hd95(full, _square(size=(12, 9), top=2, left=2, side=5)) == pytest.approx(
        _hd95_by_distance_transform(full, _square(size=(12, 9), top=2, left=2, side=5)))


def test_hd95_is_symmetric():
    rng = np.random.default_rng(1)
    for _ in range(10):
        a, b = _random_blobs(rng), _random_blobs(rng)
        assert hd95(a, b) == hd95(b, a)


def test_hd95_per_image_on_a_batch_and_on_tensors():
    empty = np.zeros((40, 40), dtype=np.uint8)
    pred = np.stack([_square(), _square(), empty, empty, _square()])
    truth = np.stack([_square(), _square(left=14), empty, _square(), _square(top=12)])
    expected = [0.0, 4.0, 0.0, np.hypot(40, 40), 2.0]
    scores = hd95_per_image(pred, truth)
    assert scores.dtype == np.float64 and scores.shape == (5,)
    np.testing.assert_allclose(scores, expected)
    np.testing.assert_allclose(hd95_per_image(torch.from_numpy(pred), torch.from_numpy(truth).bool()), expected)
    # N x 1 x H x W, as the model's outputs come
    np.testing.assert_allclose(hd95_per_image(torch.from_numpy(pred).unsqueeze(1), torch.from_numpy(truth).unsqueeze(1)),
                               expected)
    assert hd95(torch.from_numpy(_square()), torch.from_numpy(_square(left=13))) == pytest.approx(3.0)


def test_hd95_refuses_masks_of_different_shapes():
    with pytest.raises(ValueError, match="same shape"):
        hd95(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="same shape"):
        hd95_per_image(np.ones((2, 4, 4)), np.ones((3, 4, 4)))
    with pytest.raises(ValueError, match="N x H x W"):
        hd95_per_image(np.ones((4, 4)), np.ones((4, 4)))


def test_hd95_spacing_scales_distances_per_axis():
    truth = np.zeros((40, 40), dtype=bool)
    truth[10:20, 10:20] = True
    down = np.roll(truth, 4, axis=0)  # 4 rows off
    right = np.roll(truth, 4, axis=1)  # 4 columns off
    assert hd95(down, truth, spacing=(3.0, 0.5)) == pytest.approx(12.0)
    assert hd95(right, truth, spacing=(3.0, 0.5)) == pytest.approx(2.0)
    assert hd95(np.zeros_like(truth), truth, spacing=(3.0, 4.0)) == pytest.approx(np.hypot(120, 160))

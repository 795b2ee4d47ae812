"""Tests for lungseg.model.losses: soft Dice and the BCE + Dice training loss."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from lungseg.model.losses import BceDiceLoss, soft_dice


def _target() -> torch.Tensor:
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:6, 2:6] = 1
    target[1, 0, :, :3] = 1
    return target


def _by_hand(logits, target, bce_weight, dice_weight, smooth=1.0):
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    dice = ((2 * (probs * flat).sum(1) + smooth) / (probs.sum(1) + flat.sum(1) + smooth)).mean()
    return bce_weight * bce + dice_weight * (1 - dice)


def test_soft_dice_of_confident_correct_logits_is_one():
    target = _target()
    logits = (target * 2 - 1) * 50  # +50 on lung, -50 elsewhere
    assert soft_dice(logits, target).item() == pytest.approx(1.0, abs=1e-4)


def test_soft_dice_of_confident_inverted_logits_is_zero():
    target = _target()
    logits = (1 - 2 * target) * 50
    # smooth=1 leaves 1 / (|target| + 1) per image: 1/17 and 1/25, mean ~0.049
    assert soft_dice(logits, target).item() < 0.06
    assert soft_dice(logits, target, smooth=1e-6).item() == pytest.approx(0.0, abs=1e-4)


def test_soft_dice_of_empty_prediction_and_target_is_one():
    target = torch.zeros(1, 1, 4, 4)
    assert soft_dice(torch.full((1, 1, 4, 4), -50.0), target).item() == pytest.approx(1.0, abs=1e-4)


def test_soft_dice_is_the_mean_over_images():
    target = _target()
    logits = (target * 2 - 1) * 50
    logits[1] = -50  # image 1 predicts nothing: Dice (0 + 1) / (24 + 1) = 0.04
    assert soft_dice(logits, target).item() == pytest.approx((1.0 + 1 / 25) / 2, abs=1e-4)


def test_bce_dice_loss_equals_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = _target()
    expected = _by_hand(logits, target, 0.5, 0.5)
    assert BceDiceLoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # the hand formula with the real numbers: 0.5 * BCE + 0.5 * (1 - dice)
    bce = F.binary_cross_entropy_with_logits(logits, target).item()
    dice = soft_dice(logits, target).item()
    assert BceDiceLoss()(logits, target).item() == pytest.approx(0.5 * bce + 0.5 * (1 - dice), rel=1e-6)


@pytest.mark.parametrize("bce_weight, dice_weight", [(1.0, 0.0), (0.0, 1.0), (0.3, 2.0)])
def test_bce_dice_loss_weights_are_respected(bce_weight, dice_weight):
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 8, 8)
    target = _target()
    loss = BceDiceLoss(bce_weight, dice_weight)(logits, target).item()
    assert loss == pytest.approx(_by_hand(logits, target, bce_weight, dice_weight).item(), rel=1e-6)
    if dice_weight == 0:
        assert loss == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item(), rel=1e-6)


def test_loss_is_small_for_a_good_prediction_and_large_for_a_bad_one():
    target = _target()
    good = BceDiceLoss()((target * 2 - 1) * 10, target).item()
    bad = BceDiceLoss()((1 - 2 * target) * 10, target).item()
    assert good < 0.01 < 1.0 < bad


def test_gradient_flows_to_the_logits_and_points_the_right_way():
    target = _target()
    logits = torch.zeros(2, 1, 8, 8, requires_grad=True)
    loss = BceDiceLoss()(logits, target)
    loss.backward()
    grad = logits.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # descending the gradient raises lung logits and lowers background logits
    assert (grad[target == 1] < 0).all()
    assert (grad[target == 0] > 0).all()


def test_loss_accepts_half_precision_logits_and_integer_targets():
    target = _target()
    logits = ((target * 2 - 1) * 3).to(torch.bfloat16)
    loss = BceDiceLoss()(logits, target.to(torch.uint8))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_by_hand(logits.float(), target, 0.5, 0.5).item(), rel=1e-5)

"""Training loss: a weighted sum of pixel-wise BCE and soft Dice.

BCE gives every pixel a gradient from the first step; the Dice term counters the
class imbalance (lungs cover a fraction of the image) by scoring overlap directly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over the batch of each image's soft Dice between sigmoid(logits) and target.

    `smooth` keeps the ratio defined (and equal to 1) when both prediction and target are empty.
    """
    probs = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    intersection = (probs * target).sum(1)
    total = probs.sum(1) + target.sum(1)
    return ((2 * intersection + smooth) / (total + smooth)).mean()


class BceDiceLoss(nn.Module):
    """bce_weight * BCEWithLogits + dice_weight * (1 - soft Dice)."""

    def __init__(self, bce_weight: float = 0.5, dice_weight: float = 0.5, smooth: float = 1.0):
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        dice = soft_dice(logits, target, self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1 - dice)

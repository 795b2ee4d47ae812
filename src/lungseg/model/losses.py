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

    Args:
        logits: the model's output, N x ... (computed in float32).
        target: the binary masks, shaped as `logits`.
        smooth: added to numerator and denominator; keeps the ratio defined (and equal to 1) when both prediction and
            target are empty.

    Returns:
        the mean soft Dice, a scalar tensor.
    """
    probs = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    intersection = (probs * target).sum(1)
    total = probs.sum(1) + target.sum(1)
    return ((2 * intersection + smooth) / (total + smooth)).mean()


class BceDiceLoss(nn.Module):
    """bce_weight * BCEWithLogits + dice_weight * (1 - soft Dice).

    Args:
        bce_weight: weight of the pixel-wise binary cross-entropy on logits.
        dice_weight: weight of the Dice term, 1 - soft_dice.
        smooth: soft_dice's smoothing term.
    """

    def __init__(self, bce_weight: float = 0.5, dice_weight: float = 0.5, smooth: float = 1.0):
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of one batch.

        Args:
            logits: the model's output, N x ... .
            target: the binary masks, shaped as `logits`.

        Returns:
            the weighted loss, a scalar tensor.
        """
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        dice = soft_dice(logits, target, self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1 - dice)

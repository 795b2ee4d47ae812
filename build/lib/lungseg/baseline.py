"""The simplest segmenter worth beating: call a pixel lung when it is darker than a threshold.

Air-filled lungs are the darkest part of the chest on an X-ray, so a global intensity
threshold is a fair floor. The threshold is tuned on training data (the best it can do), then
scored on the test set; a learned model that does not beat it clearly has learned nothing.
"""

from __future__ import annotations

import numpy as np

from lungseg.metrics import dice_per_image


def threshold_masks(images: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 images -> 0/1 masks of the pixels darker than `threshold` (0..255 scale)."""
    return (images < threshold).astype(np.uint8)


def fit_threshold(images: np.ndarray, masks: np.ndarray, steps: int = 64) -> float:
    """The threshold (among `steps` evenly spaced in 0..255) with the best mean Dice on these images."""
    candidates = np.linspace(0, 255, steps)
    scores = [dice_per_image(threshold_masks(images, t), masks).mean() for t in candidates]
    return float(candidates[int(np.argmax(scores))])

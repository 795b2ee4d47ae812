"""The floor every model must clear: an intensity threshold tuned on the training images.

The baseline every model is held against is the simplest segmenter worth beating: call a pixel
lung when it is darker than a threshold. Air-filled lungs are the darkest part of the chest on
an X-ray, so a global intensity threshold is a fair floor. The threshold is tuned on training
data (the best it can do), then scored on the test set; a learned model that does not beat it
clearly has learned nothing.
"""

from __future__ import annotations

import numpy as np

from lungseg.core.config import EvaluateConfig
from lungseg.data.processed import ProcessedSet, ids_in
from lungseg.evaluation.scores import per_image_scores, summary
from lungseg.model.metrics import dice_per_image


def threshold_masks(images: np.ndarray, threshold: float) -> np.ndarray:
    """Masks of the pixels darker than `threshold`.

    Args:
        images: uint8 images, any shape.
        threshold: on the 0..255 scale.

    Returns:
        uint8 0/1 masks, the shape of `images`.
    """
    return (images < threshold).astype(np.uint8)


def fit_threshold(images: np.ndarray, masks: np.ndarray, steps: int = 64) -> float:
    """The threshold with the best mean Dice on these images.

    Args:
        images: uint8 N x S x S.
        masks: their truth masks, 0/1 N x S x S.
        steps: how many thresholds, evenly spaced in 0..255, are tried.

    Returns:
        The best of them.
    """
    candidates = np.linspace(0, 255, steps)
    scores = [dice_per_image(threshold_masks(images, t), masks).mean() for t in candidates]
    return float(candidates[int(np.argmax(scores))])


def baseline_scores(processed: ProcessedSet, split, test: ProcessedSet, config: EvaluateConfig) -> tuple[dict, np.ndarray]:
    """The threshold baseline on the test images: tuned on train + val, scored like the model.

    Args:
        processed: the whole processed set.
        split: its split table (lungseg.data.processed.read_split).
        test: the test rows of `processed`.
        config: the params section evaluate (baseline_steps: thresholds tried; the intervals).

    Returns:
        The threshold and its summary (the report's "baseline"), and each test image's Dice.
    """
    seen = processed.subset(ids_in(split, "train") + ids_in(split, "val"))
    threshold = fit_threshold(seen.images, seen.masks, config.baseline_steps)
    masks = threshold_masks(test.images, threshold)
    scores = per_image_scores(test.index["id"], masks, test.masks)
    return {"threshold": threshold, **summary(scores, masks, test.masks, config)}, scores["dice"].to_numpy()

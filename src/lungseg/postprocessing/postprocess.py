"""Mask clean-up after thresholding, chosen on validation data as nnU-Net does.

A chest X-ray shows two lungs, so stray blobs outside them and holes inside them are errors
the network can make but anatomy cannot. Each option below is tried on the validation set
after training and kept only if it raises the mean validation Dice; the choice travels with
the model in its checkpoint, so evaluate, predict and export all apply the same one.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lungseg.model.metrics import dice_per_image

# In order of preference: on a tie the simpler (earlier) option wins.
OPTIONS = ("none", "fill_holes", "largest_two", "largest_two+fill_holes")
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # diagonal neighbours touch: a lung's thin tip stays one piece
# Rows of a label image handled at a time: whole-image bincount and isin make int64 copies
# (640 MB for a 10000 x 8000 mask, as `lungseg predict` sees); a block of 512 rows is ~30 MB.
ROWS_PER_BLOCK = 512


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8-connected components of one binary mask.

    Args:
        mask: one H x W mask (nonzero is lung).

    Returns:
        the int32 label image (0: background, 1..count: the components) and the number of components.
    """
    return ndimage.label(mask, structure=EIGHT_CONNECTED)


def component_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Pixels of components 1..count of a label image, counted in row blocks (ROWS_PER_BLOCK).

    Args:
        labels: label_components' image.
        count: the number of components.

    Returns:
        the `count` sizes in pixels (int64), of label 1 first.
    """
    sizes = np.zeros(count + 1, dtype=np.int64)
    for start in range(0, len(labels), ROWS_PER_BLOCK):
        sizes += np.bincount(labels[start:start + ROWS_PER_BLOCK].ravel(), minlength=count + 1)
    return sizes[1:]


def largest_labels(labels: np.ndarray, count: int, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The labels of the `keep` largest components, largest first, and their sizes in pixels.

    Of two components of equal size the later label comes first (a reversed stable sort).

    Args:
        labels: label_components' image.
        count: the number of components.
        keep: how many to rank.

    Returns:
        the labels and their sizes (at most `keep` of each).
    """
    return rank_components(component_sizes(labels, count), keep)


def rank_components(sizes: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """largest_labels from component_sizes' counts.

    Args:
        sizes: component_sizes' counts (of label 1 first).
        keep: how many to rank.

    Returns:
        the labels of the `keep` largest components, largest first (ties: the later label first), and their sizes.
    """
    ranked = np.argsort(sizes, kind="stable")[::-1][:keep]
    return ranked + 1, sizes[ranked]


def largest_components(mask: np.ndarray, keep: int = 2) -> np.ndarray:
    """The `keep` largest 8-connected components of one binary mask.

    Args:
        mask: one H x W mask (nonzero is lung).
        keep: how many components to keep (default 2: two lungs).

    Returns:
        the mask of the kept components, uint8 0/1.
    """
    labels, count = label_components(mask)
    if count <= keep:
        return (labels > 0).astype(np.uint8)
    kept, _ = largest_labels(labels, count, keep)
    selected = np.empty(labels.shape, dtype=np.uint8)
    for start in range(0, len(labels), ROWS_PER_BLOCK):
        selected[start:start + ROWS_PER_BLOCK] = np.isin(labels[start:start + ROWS_PER_BLOCK], kept)
    return selected


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not touch the image border.

    Args:
        mask: one H x W mask (nonzero is lung).

    Returns:
        the filled mask, uint8 0/1.
    """
    return ndimage.binary_fill_holes(mask.astype(bool)).astype(np.uint8)


def apply(masks: np.ndarray, option: str) -> np.ndarray:
    """Apply one post-processing option to one mask or a stack of them.

    Args:
        masks: a mask (H x W) or a stack of masks (N x H x W); nonzero is lung.
        option: one of OPTIONS.

    Returns:
        the masks, shaped as given, uint8 0/1.

    Raises:
        ValueError: for an option not in OPTIONS.
    """
    if option not in OPTIONS:
        raise ValueError(f"unknown post-processing {option!r}; expected one of {', '.join(OPTIONS)}")
    # nonzero is lung, as in lungseg.model.metrics: a straight uint8 cast would keep 0/255 masks as
    # 0/255 under 'none' and wrap a 256 to 0
    masks = np.asarray(masks).astype(bool).astype(np.uint8)
    if option == "none":
        return masks
    if masks.ndim == 3:
        return np.stack([apply(mask, option) for mask in masks]) if len(masks) else masks
    if option.startswith("largest_two"):
        masks = largest_components(masks, 2)
    if option.endswith("fill_holes"):
        masks = fill_holes(masks)
    return masks


def choose(masks: np.ndarray, truths: np.ndarray, max_image_loss: float = 0.01) -> tuple[str, dict[str, float]]:
    """The post-processing option with the highest mean Dice against `truths` (validation data only).

    An option must beat 'none' strictly, and must not cost any single image more than
    `max_image_loss` Dice: keeping the two largest blobs helps when the extra blobs are specks,
    but wipes out half a lung when the network split one lung in two, and a mean gain on the
    easy images must not buy that (seen on a real split: one test image fell from 0.76 to 0.55).

    Args:
        masks: the thresholded predictions, N x H x W.
        truths: the true masks, shaped as `masks`.
        max_image_loss: the most Dice an option may cost any single image.

    Returns:
        the chosen option, and the mean Dice of every option in OPTIONS.
    """
    plain = dice_per_image(apply(masks, "none"), truths)
    scores, safe = {}, {}
    for option in OPTIONS:
        dice = dice_per_image(apply(masks, option), truths)
        scores[option] = float(np.mean(dice))
        safe[option] = bool(np.all(plain - dice <= max_image_loss))
    eligible = [option for option in OPTIONS if safe[option]]
    best = max(eligible, key=lambda option: (scores[option], -OPTIONS.index(option)))
    return best, scores

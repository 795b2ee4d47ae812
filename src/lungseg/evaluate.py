"""Scores over a set of predictions: per image, their means, pooled, and per subgroup."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungseg.metrics import dice_per_image, dice_pooled, iou_per_image, iou_pooled


def per_image_scores(ids, predictions: np.ndarray, truths: np.ndarray) -> pd.DataFrame:
    """Table id, dice, iou, truth and predicted lung fractions, one row per image."""
    return pd.DataFrame({
        "id": list(ids),
        "dice": dice_per_image(predictions, truths),
        "iou": iou_per_image(predictions, truths),
        "truth_fraction": truths.reshape(len(truths), -1).mean(1),
        "pred_fraction": predictions.reshape(len(predictions), -1).mean(1),
    })


def summary(scores: pd.DataFrame, predictions: np.ndarray, truths: np.ndarray) -> dict:
    """Means over images (each image counts once), pooled values (each pixel counts once), and the spread."""
    return {
        "dice": float(scores["dice"].mean()),
        "iou": float(scores["iou"].mean()),
        "dice_pooled": dice_pooled(predictions, truths),
        "iou_pooled": iou_pooled(predictions, truths),
        "dice_min": float(scores["dice"].min()),
        "dice_std": float(scores["dice"].std(ddof=0)),
        "n_images": int(len(scores)),
    }


def subgroup_means(scores: pd.DataFrame, metadata: pd.DataFrame, columns) -> dict:
    """{column: {value: {"dice", "iou", "n_images"}}} for each metadata column that is filled in."""
    table = scores.merge(metadata, on="id", how="left")
    result = {}
    for column in columns:
        if column not in table.columns or not (table[column].astype(str).str.len() > 0).any():
            continue
        groups = table.groupby(table[column].astype(str))
        result[column] = {value: {"dice": float(g["dice"].mean()), "iou": float(g["iou"].mean()), "n_images": int(len(g))}
                          for value, g in groups}
    return result


def pick_examples(scores: pd.DataFrame, n: int) -> list[tuple[str, pd.Series]]:
    """Up to n (label, row) pairs: the best, median and worst image by Dice, then others evenly
    spaced along the ranking, so a montage shows the whole range of quality."""
    ranked = scores.sort_values("dice", ascending=False, kind="stable").reset_index(drop=True)
    last = len(ranked) - 1
    candidates = [(0, "best"), (last, "worst"), (last // 2, "median")]
    candidates += [(int(p), "sample") for p in np.linspace(0, last, max(n, 1)).round()]
    chosen: dict[int, str] = {}
    for position, label in candidates:
        if len(chosen) >= n:
            break
        chosen.setdefault(position, label)
    return [(label, ranked.iloc[position]) for position, label in sorted(chosen.items())]

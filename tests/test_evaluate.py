import numpy as np
import pandas as pd
import pytest

from lungseg.baseline import fit_threshold, threshold_masks
from lungseg.evaluate import per_image_scores, pick_examples, subgroup_means, summary


def masks_with_overlaps():
    """Image a: truth 4 px, prediction 2 of them -> Dice 2*2/(2+4)=0.667, IoU 2/4=0.5.
    Image b: both empty -> 1 and 1 by convention."""
    truth = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros((2, 4, 4), np.uint8)
    truth[0, 0, :] = 1
    pred[0, 0, :2] = 1
    return pred, truth


def test_per_image_scores_and_summary():
    pred, truth = masks_with_overlaps()
    scores = per_image_scores(["a", "b"], pred, truth)
    assert scores["dice"].tolist() == pytest.approx([2 / 3, 1.0])
    assert scores["iou"].tolist() == pytest.approx([0.5, 1.0])
    assert scores["truth_fraction"].tolist() == pytest.approx([4 / 16, 0.0])
    result = summary(scores, pred, truth)
    assert result["dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["dice_pooled"] == pytest.approx(2 / 3)  # pooled: the empty image adds no pixels
    assert result["dice_min"] == pytest.approx(2 / 3)
    assert result["n_images"] == 2


def test_subgroup_means_per_value_and_unfilled_columns_skipped():
    scores = pd.DataFrame({"id": ["1", "2", "3"], "dice": [0.9, 0.7, 0.5], "iou": [0.8, 0.6, 0.4]})
    metadata = pd.DataFrame({"id": ["1", "2", "3"], "county": ["A", "A", "B"], "ptb": ["", "", ""]})
    groups = subgroup_means(scores, metadata, ["county", "ptb", "absent"])
    assert set(groups) == {"county"}
    assert groups["county"]["A"] == {"dice": pytest.approx(0.8), "iou": pytest.approx(0.7), "n_images": 2}
    assert groups["county"]["B"]["n_images"] == 1


@pytest.mark.parametrize("n, expected_labels", [(1, ["best"]), (2, ["best", "worst"]), (3, ["best", "median", "worst"])])
def test_pick_examples_always_starts_with_best_median_worst(n, expected_labels):
    scores = pd.DataFrame({"id": [str(i) for i in range(9)], "dice": np.linspace(0.1, 0.9, 9)})
    picked = pick_examples(scores, n)
    assert [label for label, _ in picked] == expected_labels
    assert picked[0][1]["id"] == "8" and picked[-1][1]["id"] == ("0" if n > 1 else "8")


def test_pick_examples_caps_at_the_number_of_images_without_repeats():
    scores = pd.DataFrame({"id": ["x", "y"], "dice": [0.3, 0.6]})
    picked = pick_examples(scores, 6)
    assert [row["id"] for _, row in picked] == ["y", "x"]


def test_threshold_baseline_finds_the_separating_intensity():
    images = np.full((3, 8, 8), 200, np.uint8)
    masks = np.zeros((3, 8, 8), np.uint8)
    images[:, :4] = 40  # dark "lungs" on the top half
    masks[:, :4] = 1
    threshold = fit_threshold(images, masks, steps=16)
    assert 40 < threshold <= 200
    np.testing.assert_array_equal(threshold_masks(images, threshold), masks)

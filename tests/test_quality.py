"""Tests for lungseg.postprocessing.quality: the per-image quality columns, the Dice estimate and the flag."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lungseg.postprocessing import quality
from lungseg.postprocessing.quality import (
    FEATURES,
    DiceEstimator,
    Limits,
    ShapeModel,
    aligned_shape,
    assess,
    boundary_uncertainty,
    measures,
)


def blob(mask: np.ndarray, top: int, left: int, height: int, width: int) -> int:
    mask[top:top + height, left:left + width] = 1
    return height * width


def two_lungs() -> np.ndarray:
    """A 40 x 60 mask with two equal lungs covering 0.30 of it: nothing to flag."""
    mask = np.zeros((40, 60), np.uint8)
    blob(mask, 5, 8, 30, 12)
    blob(mask, 5, 40, 30, 12)
    return mask


def confident(mask: np.ndarray) -> np.ndarray:
    return np.where(mask > 0, 0.98, 0.02).astype(np.float32)


def test_an_empty_mask_is_flagged_no_lung_found_and_nothing_else():
    report = assess(np.zeros((30, 40), np.uint8), dice_estimate=0.1)
    assert report.flag == "no lung found"  # the low estimate adds nothing to what is plain
    assert (report.n_components, report.lung_fraction, report.balance) == (0, 0.0, 0.0)


def test_one_blob_is_flagged_one_lung_only_whatever_the_estimate():
    mask = np.zeros((40, 60), np.uint8)
    size = blob(mask, 2, 2, 36, 25)  # 0.375 of the image: a plausible lung fraction
    report = assess(mask, dice_estimate=0.99)
    assert report.flag == "one lung only"
    assert (report.right_px, report.left_px, report.balance) == (size, 0, 0.0)
    assert report.right_share == pytest.approx(size / mask.size) and report.left_share == 0.0


def test_two_lungs_with_a_good_estimate_are_not_flagged():
    mask = two_lungs()
    report = assess(mask, dice_estimate=0.95)
    assert report.flag == ""
    assert report.n_components == 2
    assert report.lung_fraction == pytest.approx(0.30)
    assert report.right_share == pytest.approx(0.15) and report.left_share == pytest.approx(0.15)
    assert report.balance == 1.0


def test_a_low_estimate_flags_with_its_value_and_the_limit_decides():
    mask = two_lungs()
    assert assess(mask, dice_estimate=0.874).flag == "estimated Dice 0.874"
    assert assess(mask, dice_estimate=quality.MIN_DICE).flag == ""  # at the limit: not below it
    assert assess(mask, dice_estimate=0.874, limits=Limits(min_dice=0.85)).flag == ""
    assert assess(mask, dice_estimate=0.9, limits=Limits(min_dice=0.95)).flag == "estimated Dice 0.900"


def test_a_third_piece_is_flagged_but_a_speck_is_not():
    mask = two_lungs()  # 720 lung pixels
    blob(mask, 37, 28, 2, 3)  # 6 px: below MIN_PIECE of the lung
    speck = assess(mask)
    assert speck.flag == "" and speck.n_components == 3  # counted in the column, not flagged
    blob(mask, 0, 26, 2, 5)  # 10 px: a piece
    assert 10 >= quality.MIN_PIECE * mask.sum() > 6
    report = assess(mask)
    assert report.flag == "3+ components"
    assert report.n_components == 4
    assert assess(mask, limits=Limits(min_piece=0.02)).flag == ""  # 10 px is below 2 % of the lung


def test_unequal_lungs_or_an_odd_lung_fraction_alone_do_not_flag():
    # the estimate weighs them (lungseg.postprocessing.quality.DiceEstimator); on their own they flagged good masks
    mask = np.zeros((40, 60), np.uint8)
    right = blob(mask, 5, 4, 30, 20)  # 600 px on the image's left: the patient's right lung
    left = blob(mask, 5, 44, 12, 10)  # 120 px
    report = assess(mask, dice_estimate=0.95)
    assert (report.right_px, report.left_px) == (right, left)
    assert report.balance == pytest.approx(0.2)
    assert report.flag == ""


def test_uncertainty_looks_only_near_the_edge():
    far = confident(two_lungs())
    far[38:, :] = 0.45  # unsure in the two bottom rows, 3+ pixels below the lungs: outside the band
    assert boundary_uncertainty(far) == pytest.approx(0.04)
    near = confident(two_lungs())
    near[35, :] = 0.45  # unsure in the row just below the lungs: inside the band
    assert boundary_uncertainty(near) > boundary_uncertainty(far)


def test_the_image_border_is_no_edge():
    assert boundary_uncertainty(np.full((8, 8), 0.9, np.float32)) is None
    probability = np.full((8, 8), 0.9, np.float32)
    probability[:, :2] = 0.1
    assert boundary_uncertainty(probability) == pytest.approx(0.2)  # only the drawn edge counts


def test_without_an_estimate_the_column_is_empty_and_the_hard_rules_still_flag():
    report = assess(np.zeros((10, 10), np.uint8))
    assert report.dice_estimate is None and report.flag == "no lung found"
    assert report.columns()["dice_estimate"] is None
    assert assess(two_lungs()).flag == ""


def test_reasons_are_joined_in_one_flag():
    mask = np.zeros((40, 60), np.uint8)
    blob(mask, 0, 0, 2, 2)
    assert assess(mask, dice_estimate=0.3).flag == "one lung only; estimated Dice 0.300"


def test_columns_are_the_table_columns_rounded():
    report = assess(two_lungs(), dice_estimate=0.954321)
    assert tuple(report.columns()) == quality.COLUMNS
    assert report.columns() == {"right_share": 0.15, "left_share": 0.15, "balance": 1.0,
                                "dice_estimate": 0.9543, "flag": ""}


def test_a_bool_mask_reads_as_a_uint8_one():
    mask = two_lungs()
    assert assess(mask.astype(bool)) == assess(mask)


# --------------------------------------------------------------------------- the Dice estimate

SIZE = 48


def lungs(shift: int = 0, grow: int = 0) -> np.ndarray:
    """Two lung-like ellipses in a SIZE x SIZE mask; shift moves them, grow makes them taller."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for centre in (14, 34):
        inside = ((rows - 24 - shift) / (14 + grow)) ** 2 + ((cols - centre - shift) / 7) ** 2 <= 1
        mask[inside] = 1
    return mask


def training_masks() -> np.ndarray:
    return np.stack([lungs(shift, grow) for shift in (-2, 0, 2) for grow in (-2, 0, 2)])


def test_aligned_shape_forgets_position_and_scale():
    assert np.allclose(aligned_shape(lungs(0)), aligned_shape(lungs(3)))
    assert aligned_shape(np.zeros((SIZE, SIZE), np.uint8)).sum() == 0


def test_shape_error_is_small_for_lungs_like_the_training_masks_and_large_for_one_blob():
    shapes = ShapeModel.fit(training_masks(), components=3)
    blob = np.zeros((SIZE, SIZE), np.uint8)
    blob[10:40, 10:40] = 1
    assert shapes.error(lungs(1, 1)) < 0.05
    assert shapes.error(blob) > 0.2
    assert shapes.error(np.zeros((SIZE, SIZE), np.uint8)) == 1.0


def test_measures_tell_a_sure_prediction_from_an_unsure_one():
    shapes = ShapeModel.fit(training_masks(), components=3)
    mask = lungs()
    sure = np.where(mask > 0, 0.99, 0.01).astype(np.float32)
    unsure = ndimage.gaussian_filter(mask.astype(np.float32), 2.5)
    sure_values = dict(zip(FEATURES, measures(sure, mask, 0.5, shapes)))
    unsure_values = dict(zip(FEATURES, measures(unsure, unsure > 0.5, 0.5, shapes)))
    assert sure_values["soft_dice"] > 0.98 and sure_values["ambiguous"] == 0
    assert unsure_values["soft_dice"] < sure_values["soft_dice"]
    assert unsure_values["ambiguous"] > 0.2 and unsure_values["edge_uncertainty"] > sure_values["edge_uncertainty"]
    assert sure_values["lung_fraction"] == pytest.approx(mask.mean())
    assert sure_values["balance"] == pytest.approx(1.0, abs=0.05)


def fitted(seed: int = 0) -> tuple[DiceEstimator, np.ndarray, np.ndarray]:
    """An estimator fitted where the Dice truly follows the soft Dice and the shape error."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.05, 0.6, (300, len(FEATURES)))
    values[:, 0] = rng.uniform(0.6, 0.995, 300)
    dice = 1 - (1 - values[:, 0]) * 1.5 - 0.1 * values[:, 5]
    return DiceEstimator.fit(values, dice, ShapeModel.fit(training_masks(), components=3)), values, dice


def test_the_fit_recovers_a_dice_that_follows_the_measures():
    estimator, values, dice = fitted()
    estimate = estimator.from_measures(values)
    assert np.mean(np.abs(estimate - dice)) < 0.02
    assert np.corrcoef(estimate, dice)[0, 1] > 0.97
    assert estimator.calibration["n_masks"] == 300 and estimator.calibration["fit_mae"] < 0.02


def test_estimates_stay_between_0_and_1_whatever_the_measures():
    estimator, _, _ = fitted()
    extreme = np.array([[0.0, 50.0, 1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]])
    estimate = estimator.from_measures(extreme)
    assert ((estimate >= 0) & (estimate <= 1)).all()
    assert estimate[0] < estimate[1]


def test_the_estimator_survives_the_round_trip_through_plain_data():
    import json

    estimator, values, _ = fitted()
    stored = json.loads(json.dumps(estimator.to_dict()))  # what ONNX and TorchScript metadata carry
    again = DiceEstimator.from_dict(stored)
    assert np.allclose(again.from_measures(values), estimator.from_measures(values), atol=1e-5)
    assert again.calibration == estimator.calibration


def test_a_model_without_a_calibration_or_with_other_measures_has_no_estimator():
    estimator, _, _ = fitted()
    assert DiceEstimator.from_dict(None) is None
    assert DiceEstimator.from_dict({}) is None
    assert DiceEstimator.from_dict({**estimator.to_dict(), "features": ["soft_dice"]}) is None


def test_one_prediction_is_estimated_from_its_probabilities():
    estimator, _, _ = fitted()
    mask = lungs()
    sure = np.where(mask > 0, 0.99, 0.01).astype(np.float32)
    unsure = ndimage.gaussian_filter(mask.astype(np.float32), 2.5)
    assert estimator(sure, mask, 0.5) > estimator(unsure, unsure > 0.5, 0.5)

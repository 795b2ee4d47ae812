"""Tests for lungseg.quality: the per-image quality columns and flag of `lungseg predict`."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lungseg import quality
from lungseg.quality import BALANCE_MIN, LUNG_FRACTION_RANGE, UNCERTAINTY_MAX, assess, boundary_uncertainty


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
    report = assess(np.zeros((30, 40), np.uint8), np.full((16, 16), 0.01, np.float32))
    assert report.flag == "no lung found"
    assert (report.n_components, report.lung_fraction, report.balance) == (0, 0.0, 0.0)
    assert report.uncertainty is None  # no edge drawn, nothing to be unsure about


def test_one_blob_is_flagged_one_lung_only_whatever_else_looks_fine():
    mask = np.zeros((40, 60), np.uint8)
    size = blob(mask, 2, 2, 36, 25)  # 0.375 of the image: a plausible lung fraction
    report = assess(mask, confident(mask))
    assert report.flag == "one lung only"
    assert (report.right_px, report.left_px, report.balance) == (size, 0, 0.0)
    assert report.right_share == pytest.approx(size / mask.size) and report.left_share == 0.0


def test_two_balanced_lungs_with_a_confident_map_are_not_flagged():
    mask = two_lungs()
    report = assess(mask, confident(mask))
    assert report.flag == ""
    assert report.n_components == 2
    assert report.lung_fraction == pytest.approx(0.30)
    assert report.right_share == pytest.approx(0.15) and report.left_share == pytest.approx(0.15)
    assert report.balance == 1.0
    assert report.uncertainty == pytest.approx(0.04)


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


def test_very_unequal_lungs_are_flagged_with_their_balance():
    mask = np.zeros((40, 60), np.uint8)
    right = blob(mask, 5, 4, 30, 20)  # 600 px on the image's left: the patient's right lung
    left = blob(mask, 5, 44, 12, 10)  # 120 px
    report = assess(mask)
    assert (report.right_px, report.left_px) == (right, left)
    assert report.balance == pytest.approx(0.2)
    assert report.balance < BALANCE_MIN
    assert report.flag == "left/right balance 0.20"


def test_a_lung_fraction_outside_the_range_is_flagged_with_the_range():
    mask = np.zeros((40, 60), np.uint8)
    blob(mask, 0, 0, 40, 29)
    blob(mask, 0, 31, 40, 29)
    low, high = LUNG_FRACTION_RANGE
    assert assess(mask).flag == f"lung fraction 0.97 outside {low:.2f}-{high:.2f}"


def test_an_uncertain_edge_is_flagged_and_a_confident_one_is_not():
    mask = two_lungs()
    unsure = ndimage.gaussian_filter(mask.astype(np.float32), 3)  # the edge fades through 0.5
    uncertainty = boundary_uncertainty(unsure)
    assert uncertainty > UNCERTAINTY_MAX
    report = assess(mask, unsure)
    assert report.flag == f"uncertain boundary {uncertainty:.2f}"
    assert assess(mask, confident(mask)).flag == ""


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


def test_no_probability_map_leaves_uncertainty_empty_but_still_checks_the_mask():
    report = assess(np.zeros((10, 10), np.uint8))
    assert report.uncertainty is None and report.flag == "no lung found"
    assert report.columns()["uncertainty"] is None


def test_reasons_are_joined_in_one_flag():
    mask = np.zeros((40, 60), np.uint8)
    blob(mask, 0, 0, 2, 2)
    report = assess(mask)
    low, high = LUNG_FRACTION_RANGE
    assert report.flag == f"one lung only; lung fraction 0.00 outside {low:.2f}-{high:.2f}"


def test_columns_are_the_table_columns_rounded():
    report = assess(two_lungs(), confident(two_lungs()))
    assert tuple(report.columns()) == quality.COLUMNS
    assert report.columns() == {"right_share": 0.15, "left_share": 0.15, "balance": 1.0,
                                "uncertainty": pytest.approx(0.04), "flag": ""}


def test_a_bool_mask_reads_as_a_uint8_one():
    mask = two_lungs()
    assert assess(mask.astype(bool)) == assess(mask)

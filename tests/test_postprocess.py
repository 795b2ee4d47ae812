"""Tests for lungseg.postprocessing.postprocess: keeping the two lungs, filling holes, choosing on validation data."""

from __future__ import annotations

import numpy as np
import pytest

from lungseg.model.metrics import dice_per_image
from lungseg.postprocessing.postprocess import (
    OPTIONS,
    apply,
    choose,
    component_sizes,
    fill_holes,
    label_components,
    largest_components,
    largest_labels,
)

SIZE = 48


def _lungs(shift: int = 0) -> np.ndarray:
    """Two rectangular 'lungs' (uint8 0/1), moved down by shift pixels."""
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[8 + shift:40 + shift, 6:20] = 1
    mask[8 + shift:40 + shift, 28:42] = 1
    return mask


def _with_specks(mask: np.ndarray) -> np.ndarray:
    """Spurious blobs outside the lungs, as a network makes them."""
    mask = mask.copy()
    mask[1:4, 1:4] = 1
    mask[44:47, 23:26] = 1
    return mask


def _with_hole(mask: np.ndarray) -> np.ndarray:
    """A hole inside the left lung."""
    mask = mask.copy()
    mask[20:26, 10:15] = 0
    return mask


def test_largest_components_keeps_the_two_largest_blobs():
    mask = _with_specks(_lungs())
    kept = largest_components(mask)
    np.testing.assert_array_equal(kept, _lungs())
    assert kept.dtype == np.uint8
    only_one = largest_components(mask, keep=1)
    assert only_one.sum() == _lungs().sum() // 2  # the two lungs are the same size: one of them
    np.testing.assert_array_equal(largest_components(_lungs()), _lungs())  # two blobs: nothing to drop


def test_largest_components_counts_diagonal_neighbours_as_connected():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[0:3, 0:3] = 1
    mask[3:6, 3:6] = 1  # touches the first square at one corner only: one 8-connected blob
    mask[8, 8] = 1
    mask[0, 9] = 1
    expected = np.zeros_like(mask)
    expected[0:3, 0:3] = expected[3:6, 3:6] = 1
    np.testing.assert_array_equal(largest_components(mask, keep=1), expected)


def test_fill_holes_fills_an_interior_hole_but_not_a_notch_open_to_the_border():
    np.testing.assert_array_equal(fill_holes(_with_hole(_lungs())), _lungs())
    notched = _lungs()
    notched[20:24, 28:42] = 0  # a gap cutting the right lung, open to the background around it
    np.testing.assert_array_equal(fill_holes(notched), notched)
    edge = np.ones((10, 10), dtype=np.uint8)
    edge[4:6, 0:5] = 0  # a notch reaching the image border
    np.testing.assert_array_equal(fill_holes(edge), edge)


def test_apply_on_a_stack_matches_apply_on_each_mask():
    stack = np.stack([_with_specks(_with_hole(_lungs())), _with_specks(_lungs()), _lungs()])
    for option in OPTIONS:
        together = apply(stack, option)
        assert together.dtype == np.uint8 and together.shape == stack.shape
        np.testing.assert_array_equal(together, np.stack([apply(mask, option) for mask in stack]))
    np.testing.assert_array_equal(apply(stack[0], "largest_two+fill_holes"), _lungs())
    np.testing.assert_array_equal(apply(stack[0], "largest_two"), _with_hole(_lungs()))
    np.testing.assert_array_equal(apply(stack[0], "fill_holes"), _with_specks(_lungs()))
    assert apply(np.zeros((0, SIZE, SIZE)), "largest_two").shape == (0, SIZE, SIZE)


def test_apply_returns_0_1_for_boolean_and_0_255_masks():
    for option in OPTIONS:
        np.testing.assert_array_equal(apply(_lungs() * 255, option), _lungs())
        np.testing.assert_array_equal(apply(_lungs().astype(bool), option), _lungs())


def test_unknown_option_names_the_options():
    with pytest.raises(ValueError, match="largest_three") as error:
        apply(_lungs(), "largest_three")
    for option in OPTIONS:
        assert option in str(error.value)


def _scores_by_hand(masks, truths):
    return {option: float(np.mean(dice_per_image(apply(masks, option), truths))) for option in OPTIONS}


def test_choose_keeps_none_when_nothing_helps():
    truths = np.stack([_lungs(), _lungs(2)])
    masks = np.stack([_lungs(1), _lungs(1)])  # imperfect but clean: every option scores the same
    chosen, scores = choose(masks, truths)
    assert chosen == "none"
    assert scores == _scores_by_hand(masks, truths)
    assert len(set(scores.values())) == 1 and scores["none"] < 1


def test_choose_drops_spurious_blobs_and_a_tie_goes_to_the_simpler_option():
    truths = np.stack([_lungs(), _lungs()])
    masks = np.stack([_with_specks(_lungs()), _lungs(1)])
    chosen, scores = choose(masks, truths)
    # no holes, so largest_two+fill_holes ties with largest_two: the simpler one wins
    assert scores["largest_two"] == scores["largest_two+fill_holes"] > scores["none"]
    assert chosen == "largest_two"


def test_choose_fills_holes_when_only_that_helps_and_both_when_both_do():
    truths = np.stack([_lungs(), _lungs()])
    assert choose(np.stack([_with_hole(_lungs()), _lungs()]), truths)[0] == "fill_holes"
    assert choose(np.stack([_with_hole(_with_specks(_lungs())), _lungs()]), truths)[0] == "largest_two+fill_holes"


def test_choose_refuses_an_option_that_wrecks_one_image_for_a_mean_gain():
    truths, masks = [], []
    for _ in range(10):  # easy images: a lung pair plus a speck that largest_two removes
        truth = np.zeros((40, 40), np.uint8)
        truth[5:35, 4:16] = 1
        truth[5:35, 24:36] = 1
        pred = truth.copy()
        pred[0:5, 18:23] = 1
        truths.append(truth)
        masks.append(pred)
    hard_truth = np.zeros((40, 40), np.uint8)
    hard_truth[5:35, 4:16] = 1
    hard_truth[5:35, 24:36] = 1
    split = hard_truth.copy()
    split[29:31, 4:16] = 0  # the network cut the bottom off one lung: largest_two drops that piece
    truths.append(hard_truth)
    masks.append(split)
    chosen, scores = choose(np.stack(masks), np.stack(truths))
    assert scores["largest_two"] > scores["none"]  # it would win on the mean...
    assert chosen not in ("largest_two", "largest_two+fill_holes")  # ...but is not allowed to


# --------------------------------------------------------------------------- the ranking, shared with predict


def test_component_sizes_in_row_blocks_match_a_whole_image_count():
    mask = (np.random.default_rng(0).uniform(size=(1100, 37)) > 0.6).astype(np.uint8)  # more rows than one block
    labels, count = label_components(mask)
    np.testing.assert_array_equal(component_sizes(labels, count), np.bincount(labels.ravel())[1:])


def test_largest_labels_rank_by_size_and_put_the_later_of_equal_sizes_first():
    mask = np.zeros((10, 20), dtype=np.uint8)
    mask[1, 1:3] = 1  # label 1: 2 px
    mask[1, 5:9] = 1  # label 2: 4 px
    mask[5, 1:3] = 1  # label 3: 2 px
    labels, count = label_components(mask)
    kept, sizes = largest_labels(labels, count, keep=2)
    assert kept.tolist() == [2, 3] and sizes.tolist() == [4, 2]
    np.testing.assert_array_equal(largest_components(mask), np.isin(labels, [2, 3]).astype(np.uint8))


def test_largest_components_makes_no_full_size_int64_copy():
    """A 10000 x 8000 mask from `lungseg predict` must not cost 8 bytes a pixel (640 MB) more:
    labels are int32, counting and selecting go in row blocks."""
    import tracemalloc

    mask = np.zeros((6000, 300), dtype=np.uint8)  # narrow, so a block of rows is small beside the whole
    mask[100:5900, 20:140] = mask[100:5900, 160:280] = mask[5:8, 5:8] = 1
    tracemalloc.start()
    try:
        kept = largest_components(mask)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert kept[6, 6] == 0 and kept[700, 200] == 1
    # measured 6.1 bytes a pixel (int32 labels, uint8 result, blocks); whole-image bincount and isin gave 16
    assert peak < 7 * mask.size

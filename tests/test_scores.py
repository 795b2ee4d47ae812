import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats as scipy_stats

from lungseg.core.config import EvaluateConfig
from lungseg.core.errors import DataError
from lungseg.evaluation import intervals
from lungseg.evaluation.baseline import fit_threshold, threshold_masks
from lungseg.evaluation.intervals import bootstrap_ci, mean_with_ci
from lungseg.evaluation.pictures import pick_examples
from lungseg.evaluation.report import headline
from lungseg.evaluation.scores import (
    NOT_GIVEN,
    dice_histogram,
    evaluate_folder,
    per_image_scores,
    subgroup_means,
    summary,
)
from lungseg.inference.predictor import Predictor

FAST = EvaluateConfig(bootstrap_samples=200)


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
    result = summary(scores, pred, truth, FAST)
    assert result["dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["dice_ci_low"] <= result["dice"] <= result["dice_ci_high"]
    assert result["hd95"] >= 0 and "hd95_ci_high" in result
    assert result["dice_pooled"] == pytest.approx(2 / 3)  # pooled: the empty image adds no pixels
    assert result["dice_min"] == pytest.approx(2 / 3)
    assert result["n_images"] == 2


def test_subgroup_means_per_value_and_unfilled_columns_skipped():
    scores = pd.DataFrame({"id": ["1", "2", "3"], "dice": [0.9, 0.7, 0.5], "iou": [0.8, 0.6, 0.4]})
    metadata = pd.DataFrame({"id": ["1", "2", "3"], "county": ["A", "A", "B"], "ptb": ["", "", ""]})
    groups = subgroup_means(scores, metadata, ["county", "ptb", "absent"])
    assert set(groups) == {"county"}
    assert groups["county"]["A"] == {"dice": pytest.approx(0.8), "iou": pytest.approx(0.7), "n_images": 2}
    assert "dice_native" not in groups["county"]["A"]  # only model-size scores were given
    assert groups["county"]["B"]["n_images"] == 1


def test_images_without_a_value_form_a_named_subgroup():
    """A second data folder without MetaData.csv: its images are a group of their own, named."""
    scores = pd.DataFrame({"id": ["1", "2", "3"], "dice": [0.9, 0.7, 0.5], "iou": [0.8, 0.6, 0.4]})
    metadata = pd.DataFrame({"id": ["1", "2", "3"], "county": ["A", None, ""]})
    groups = subgroup_means(scores, metadata, ["county"])["county"]
    assert set(groups) == {"A", NOT_GIVEN}
    assert groups[NOT_GIVEN]["n_images"] == 2 and groups[NOT_GIVEN]["dice"] == pytest.approx(0.6)


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


class FixedRectangle(torch.nn.Module):
    """A 'model' that always predicts the centred rectangle conftest.make_mask draws, whatever the
    image: a perfect predictor for write_pair_folder's data, to check the scoring around it."""

    def __init__(self, size: int):
        super().__init__()
        logits = torch.full((1, 1, size, size), -10.0)
        logits[..., size // 4 : size // 4 + size // 2, size // 4 : size // 4 + size // 2] = 10.0
        self.register_buffer("logits", logits)

    def forward(self, images):
        return self.logits.expand(len(images), -1, -1, -1)


def rectangle_predictor(size: int = 16) -> Predictor:
    settings = {"image_size": size, "normalize": "minmax", "mask_threshold": 127}
    return Predictor(FixedRectangle(size), torch.device("cpu"), 0.5, size, preprocess=settings)


def test_evaluate_folder_scores_at_native_resolution(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="kaggle", n=4, size=(64, 48))
    result = evaluate_folder(rectangle_predictor(), folder.root, FAST, subgroups=["county"], show_progress=False)
    native = result.metrics["test_native"]
    assert native["n_images"] == 4 and result.masks.shape == (4, 16, 16)
    # the rectangle's edges fall between model pixels only up to one model pixel = 4 original pixels
    assert native["dice"] > 0.95 and native["hd95"] <= 4.0
    assert result.metrics["test"]["dice"] == pytest.approx(1.0)
    assert {"dice_native", "iou_native", "hd95_native"} <= set(result.scores.columns)
    assert set(result.metrics["subgroups"]["county"]) == {"Shenxhen", "Montgomery"}
    json.dumps(result.metrics)  # what metrics.json will hold must be plain JSON


def test_native_scores_read_the_original_masks(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2, size=(64, 48), metadata=False)
    wrong = np.zeros((64, 48), np.uint8)
    wrong[:16, :12] = 255  # a corner, nowhere near the predicted rectangle
    Image.fromarray(wrong).save(folder.mask_paths["1"])
    result = evaluate_folder(rectangle_predictor(), folder.root, FAST, show_progress=False)
    by_id = result.scores.set_index("id")
    assert by_id.loc["1", "dice_native"] == 0.0 and by_id.loc["2", "dice_native"] > 0.95
    assert by_id.loc["1", "hd95_native"] > by_id.loc["2", "hd95_native"]


def test_evaluate_folder_refuses_broken_data(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2, metadata=False)
    folder.mask_paths["2"].unlink()
    with pytest.raises(DataError, match="image without a mask"):
        evaluate_folder(rectangle_predictor(), folder.root, FAST, show_progress=False)


def test_dice_histogram_bins_every_image_once_and_follows_the_spread():
    dice = np.array([0.912, 0.955, 0.958, 0.99, 1.0])
    table = dice_histogram(dice)
    assert table["images"].sum() == len(dice)
    edges = [tuple(float(edge) for edge in label.split("-")) for label in table["dice_bin"]]
    assert edges[0][0] <= 0.912 < edges[0][1] and edges[-1][1] == 1.0
    assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))  # contiguous
    assert table["images"].iloc[-1] == 2  # 0.99, and a perfect score lands in the last bin
    assert list(table["dice_bin"]) == sorted(table["dice_bin"])  # DVC sorts the labels as text


def test_dice_histogram_is_readable_at_a_glance_whatever_the_spread():
    """A few bins however many images and however wide the scores: close scores get fine bins
    (their labels still distinct), one outlier does not make dozens of empty bars."""
    rng = np.random.default_rng(0)
    close = 0.975 + 0.015 * rng.random(200)
    with_outlier = np.append(0.96 + 0.03 * rng.random(70), 0.05)
    for dice in (close, with_outlier):
        table = dice_histogram(dice)
        assert 2 <= len(table) <= 10 and table["images"].sum() == len(dice)
        assert table["dice_bin"].is_unique
    assert dice_histogram(with_outlier)["images"].iloc[0] == 1  # the outlier has its own bar


def test_dice_histogram_of_identical_scores_is_one_bin_inside_0_1():
    for value in (0.0, 0.5, 1.0):
        table = dice_histogram(np.full(5, value))
        assert list(table["images"]) == [5]
        low, high = (float(edge) for edge in table["dice_bin"].iloc[0].split("-"))
        assert 0 <= low <= value <= high <= 1


def test_headline_holds_the_few_numbers_users_compare(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=4, metadata=False)
    result = evaluate_folder(rectangle_predictor(), folder.root, FAST, show_progress=False)
    result.metrics["baseline"] = {"dice": 0.4}
    top = headline(result.metrics)
    assert set(top) == {"test", "baseline"}
    assert top["test"]["dice"] == result.metrics["test_native"]["dice"]  # native resolution first
    assert top["test"]["dice_128px"] == result.metrics["test"]["dice"]
    assert top["test"]["n_images"] == 4 and top["baseline"] == {"dice_128px": 0.4}
    assert sum(1 for section in top.values() for _ in section) <= 10


def test_headline_falls_back_to_model_size_without_native_scores():
    model_size = {"dice": 0.9, "dice_ci_low": 0.8, "dice_ci_high": 0.95, "iou": 0.8, "hd95": 3.0, "dice_min": 0.7, "n_images": 5}
    top = headline({"test": model_size, "postprocess": "none"})
    assert top == {"test": {**{k: v for k, v in model_size.items() if k != "n_images"}, "dice_128px": 0.9, "n_images": 5}}

def test_hd95_is_also_given_in_mm_for_images_that_carry_a_pixel_spacing(tmp_path, write_pair_folder):
    """DICOM X-rays carry PixelSpacing: HD95 in mm beside pixels, over the images that have it."""
    from PIL import Image
    from test_dicom import write_dicom

    folder = write_pair_folder(tmp_path / "data", layout="plain", n=3, size=(64, 48), metadata=False)
    for image_id, spacing in (("1", [0.5, 0.5]), ("2", [0.5, 0.5]), ("3", None)):
        png = folder.image_paths[image_id]
        pixels = np.asarray(Image.open(png).convert("L"))
        write_dicom(png.with_suffix(".dcm"), pixels, **({"PixelSpacing": spacing} if spacing else {}))
        png.unlink()
    result = evaluate_folder(rectangle_predictor(), folder.root, FAST, show_progress=False)
    native, scores = result.metrics["test_native"], result.scores
    assert native["n_images_with_spacing"] == 2
    assert scores["hd95_native_mm"].iloc[:2].tolist() == pytest.approx((scores["hd95_native"].iloc[:2] * 0.5).tolist())
    assert np.isnan(scores["hd95_native_mm"].iloc[2])
    assert native["hd95_mm"] == pytest.approx(scores["hd95_native_mm"].iloc[:2].mean())
    assert headline(result.metrics)["test"]["hd95_mm"] == native["hd95_mm"]


def test_quality_columns_flag_an_empty_and_a_one_lung_prediction_like_predict():
    from lungseg.evaluation.scores import quality_columns
    from lungseg.postprocessing import quality

    size = 32
    two_lungs = np.zeros((size, size), np.uint8)
    two_lungs[6:26, 3:13] = 1
    two_lungs[6:26, 19:29] = 1
    one_lung = two_lungs.copy()
    one_lung[:, 16:] = 0
    predictions = np.stack([two_lungs, np.zeros_like(two_lungs), one_lung])
    probabilities = predictions.astype(np.float32) * 0.98 + 0.01
    predictor = rectangle_predictor()
    table = quality_columns(predictor, predictions, probabilities)
    assert list(table.columns) == list(quality.COLUMNS)
    assert table["flag"].tolist() == [quality.assess(mask).flag for mask in predictions]  # no estimator: hard rules
    assert table["flag"][0] == "" and "no lung" in table["flag"][1] and "one lung" in table["flag"][2]
    assert table["dice_estimate"].isna().all()


def test_montage_titles_give_the_estimate_beside_the_true_dice_on_a_second_line():
    from lungseg.evaluation.pictures import montage_rows

    scores = pd.DataFrame({"id": ["a", "b", "c"], "dice": [0.9, 0.8, 0.7], "dice_estimate": [0.91, None, 0.65]})
    images = np.zeros((3, 8, 8), np.uint8)
    rows = montage_rows(scores, images, images, images, 3)
    titles = {row["name"]: row["title"] for row in rows}
    assert titles["best_a"] == "best · id a\nDice 0.900 · est. 0.910"
    assert titles["median_b"] == "median · id b\nDice 0.800"  # no estimate: nothing made up
    assert titles["worst_c"].endswith("Dice 0.700 · est. 0.650")


def test_estimate_agreement_scores_the_estimate_against_the_native_dice():
    from lungseg.evaluation.scores import estimate_agreement, estimate_table

    scores = pd.DataFrame({"id": list("abcd"), "dice": [0.5] * 4, "dice_native": [0.9, 0.8, 0.7, 0.95],
                           "dice_estimate": [0.92, 0.78, 0.75, 0.93]})
    agreement = estimate_agreement(scores)
    assert agreement["against"] == "dice_native" and agreement["n_images"] == 4
    assert agreement["spearman_rho"] == pytest.approx(1.0)
    assert agreement["mae"] == pytest.approx((0.02 + 0.02 + 0.05 + 0.02) / 4)
    assert agreement["bias"] == pytest.approx((0.02 - 0.02 + 0.05 - 0.02) / 4)
    assert estimate_table(scores)["dice"].tolist() == [0.9, 0.8, 0.7, 0.95]
    assert estimate_agreement(scores.assign(dice_estimate=None)) is None  # a model without a calibration
    constant = estimate_agreement(scores.assign(dice_estimate=0.9))
    assert constant["spearman_rho"] is None and constant["mae"] == pytest.approx((0 + 0.1 + 0.2 + 0.05) / 4)


# --------------------------------------------------------------------------- bootstrap intervals of a mean




def _dice_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Skewed values bounded by 1, as per-image Dice is: 1 - Beta(2, 40), mean 1 - 2/42."""
    return 1 - rng.beta(2, 40, size=n)


TRUE_MEAN = 1 - 2 / 42


def test_interval_contains_the_mean_of_skewed_values():
    values = _dice_like(np.random.default_rng(0), 50)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high
    assert values.min() <= low and high <= values.max()
    assert isinstance(low, float) and isinstance(high, float)


def test_interval_narrows_as_the_set_grows():
    rng = np.random.default_rng(1)
    low_20, high_20 = bootstrap_ci(_dice_like(rng, 20))
    low_2000, high_2000 = bootstrap_ci(_dice_like(rng, 2000))
    # the width shrinks as 1/sqrt(n): about ten times narrower for 100 times the values
    assert (high_2000 - low_2000) < (high_20 - low_20) / 4


def test_wider_confidence_gives_a_wider_interval():
    values = _dice_like(np.random.default_rng(2), 40)
    low_80, high_80 = bootstrap_ci(values, confidence=0.8)
    low_99, high_99 = bootstrap_ci(values, confidence=0.99)
    assert low_99 < low_80 < high_80 < high_99


def test_same_seed_same_interval_other_seed_other_interval():
    values = _dice_like(np.random.default_rng(3), 30)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)


def test_95_percent_interval_covers_the_true_mean_in_most_draws():
    rng = np.random.default_rng(4)
    covered = 0
    for draw in range(100):
        low, high = bootstrap_ci(_dice_like(rng, 30), n_resamples=1000, seed=draw)
        covered += low <= TRUE_MEAN <= high
    assert covered >= 85


def test_resampling_in_chunks_gives_every_resample(monkeypatch):
    # 7 resamples' worth of cells per chunk: 20 resamples come in chunks of 7, 7 and 6
    values = np.arange(10, dtype=np.float64)
    monkeypatch.setattr(intervals, "_CELLS_PER_CHUNK", 7 * values.size)
    means = intervals._resample_means(values, 20, np.random.default_rng(0))
    assert means.shape == (20,)
    assert np.all((means >= values.min()) & (means <= values.max()))
    assert len(np.unique(means)) > 1
    low, high = bootstrap_ci(values, n_resamples=20)
    assert low <= values.mean() <= high


def test_one_value_or_equal_values_give_a_zero_width_interval():
    assert bootstrap_ci([0.93]) == (0.93, 0.93)
    assert bootstrap_ci(np.full(5, 0.5)) == (0.5, 0.5)


def test_empty_nan_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="2 NaN"):
        bootstrap_ci([0.9, np.nan, 0.8, np.nan])
    with pytest.raises(ValueError, match="1 infinite"):
        bootstrap_ci([0.9, np.inf])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([0.9, 0.8], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([0.9, 0.8], n_resamples=0)
    with pytest.raises(ValueError, match="at least one value"):
        mean_with_ci([])


def test_mean_with_ci_is_ready_for_metrics_json():
    values = _dice_like(np.random.default_rng(5), 24)
    summary = mean_with_ci(values, n_resamples=500, confidence=0.9, seed=3)
    assert set(summary) == {"mean", "ci_low", "ci_high", "n"}
    assert summary["mean"] == pytest.approx(values.mean())
    assert summary["n"] == 24 and isinstance(summary["n"], int)
    assert (summary["ci_low"], summary["ci_high"]) == bootstrap_ci(values, 500, 0.9, 3)
    assert json.loads(json.dumps(summary)) == summary


def test_the_interval_is_scipys_bca_interval():
    values = _dice_like(np.random.default_rng(7), 24)
    expected = scipy_stats.bootstrap((values,), np.mean, n_resamples=2000, confidence_level=0.95, method="BCa",
                                     rng=np.random.default_rng(3)).confidence_interval
    assert bootstrap_ci(values, 2000, 0.95, seed=3) == pytest.approx((expected.low, expected.high), rel=1e-12)


def test_bca_reaches_lower_than_the_percentile_interval_with_one_failed_image():
    """23 good images and one failure: the percentile interval sits too high; BCa corrects it."""
    values = np.append(0.96 + 0.02 * np.random.default_rng(4).random(23), 0.30)
    bca_low, _ = bootstrap_ci(values, 4000)
    percentile_low, _ = intervals.percentile_ci(values, 4000)
    assert bca_low < percentile_low - 0.005


def test_where_bca_is_undefined_the_percentile_interval_is_used():
    values = np.array([0.9, 0.8, 0.7, 0.95])  # one resample: BCa's bias correction is undefined
    low, high = bootstrap_ci(values, n_resamples=1, seed=1)
    assert np.isfinite([low, high]).all() and (low, high) == intervals.percentile_ci(values, 1, seed=1)

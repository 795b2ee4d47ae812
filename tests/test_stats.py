"""Tests for lungseg.stats: the percentile-bootstrap interval of a mean."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lungseg import stats
from lungseg.stats import bootstrap_ci, mean_with_ci


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
    monkeypatch.setattr(stats, "_CELLS_PER_CHUNK", 7 * values.size)
    means = stats._resample_means(values, 20, np.random.default_rng(0))
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
    percentile_low, _ = stats.percentile_ci(values, 4000)
    assert bca_low < percentile_low - 0.005


def test_where_bca_is_undefined_the_percentile_interval_is_used():
    values = np.array([0.9, 0.8, 0.7, 0.95])  # one resample: BCa's bias correction is undefined
    low, high = bootstrap_ci(values, n_resamples=1, seed=1)
    assert np.isfinite([low, high]).all() and (low, high) == stats.percentile_ci(values, 1, seed=1)

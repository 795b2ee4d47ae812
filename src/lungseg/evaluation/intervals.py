"""Confidence intervals of a mean over images.

Intervals of a mean over test images (Dice, IoU, HD95 per image) come from the bootstrap:
resample the per-image values with replacement and take the mean of each resample. The
interval is the BCa one (bias-corrected and accelerated, scipy.stats.bootstrap): per-image
Dice is skewed and bounded by 1 (most images near 0.97, a few failures far below), and on small
skewed test sets the plain percentile interval sits too high; BCa corrects for the bias and the
skew of the resampled means. Where BCa is undefined (every value equal, or too few distinct
values for its jackknife), the percentile interval is used instead. Neither assumes a normal
distribution, which could put mean + 1.96 * std / sqrt(n) past 1.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

# Resample means are computed this many index-matrix cells at a time, so 2000 resamples of a
# 100,000-value set do not need a 200-million-cell matrix at once.
_CELLS_PER_CHUNK = 1 << 22


def _checked_values(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value, got none")
    bad = ~np.isfinite(values)
    if bad.any():
        nans = int(np.isnan(values).sum())
        raise ValueError(f"bootstrap_ci got {nans} NaN and {int(bad.sum()) - nans} infinite value(s) "
                         f"among {values.size}; every value must be a finite number")
    return values


def _resample_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of n_resamples resamples of values (with replacement), drawn in chunks."""
    chunk = max(1, _CELLS_PER_CHUNK // values.size)
    means = []
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        means.append(values[rng.integers(0, values.size, size=(rows, values.size))].mean(axis=1))
    return np.concatenate(means)


def bootstrap_ci(values, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """BCa bootstrap confidence interval for the mean of values.

    Percentile where BCa is undefined; see the module docstring.

    Args:
        values: per-image scores, all finite.
        n_resamples: bootstrap resamples.
        confidence: the interval's coverage, in (0, 1).
        seed: the resampling seed; the same seed gives the same interval.

    Returns:
        (low, high). One value gives (value, value): there is nothing to resample.

    Raises:
        ValueError: for a confidence outside (0, 1), n_resamples below 1, no values, or a NaN or infinite one.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    values = _checked_values(values)
    if values.size == 1 or np.ptp(values) == 0:  # nothing varies: the interval is the value itself
        return float(values[0]), float(values[0])
    low, high = _bca(values, n_resamples, confidence, seed)
    if not (np.isfinite(low) and np.isfinite(high)):
        low, high = percentile_ci(values, n_resamples, confidence, seed)
    return float(low), float(high)


def _bca(values: np.ndarray, n_resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """scipy's BCa interval, or NaNs where it is undefined (scipy then warns; we fall back)."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's, on the same undefined cases
        result = stats.bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                                 method="BCa", vectorized=True, batch=max(1, _CELLS_PER_CHUNK // values.size),
                                 rng=np.random.default_rng(seed))
    return result.confidence_interval.low, result.confidence_interval.high


def percentile_ci(values, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval for the mean: the fallback where BCa is undefined.

    Args:
        values: per-image scores, all finite.
        n_resamples: bootstrap resamples.
        confidence: the interval's coverage.
        seed: the resampling seed.

    Returns:
        (low, high).

    Raises:
        ValueError: for no values, or a NaN or infinite one.
    """
    values = _checked_values(values)
    means = _resample_means(values, n_resamples, np.random.default_rng(seed))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mean_with_ci(values, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """The mean of values with its bootstrap interval (bootstrap_ci).

    Args:
        values: per-image scores, all finite.
        n_resamples: as for bootstrap_ci.
        confidence: as for bootstrap_ci.
        seed: as for bootstrap_ci.

    Returns:
        {"mean", "ci_low", "ci_high", "n"}, plain Python numbers ready for metrics.json.

    Raises:
        ValueError: as bootstrap_ci raises it.
    """
    low, high = bootstrap_ci(values, n_resamples, confidence, seed)
    values = _checked_values(values)
    return {"mean": float(values.mean()), "ci_low": low, "ci_high": high, "n": int(values.size)}


# per-image columns summarised with a confidence interval: 128 px, then native resolution

"""Confidence intervals for a mean over test images (Dice, IoU, HD95 per image).

Percentile bootstrap: resample the per-image values with replacement, take the mean of each
resample, and read the interval off the percentiles of those means. It assumes no normal
distribution, which matters here: per-image Dice is skewed and bounded by 1 (most images
near 0.97, a few failures far below), so mean +- 1.96 * std / sqrt(n) can even reach past 1.
"""

from __future__ import annotations

import numpy as np

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
    """Percentile-bootstrap confidence interval (low, high) for the mean of values.

    Deterministic for a seed. One value gives (value, value): there is nothing to resample.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    values = _checked_values(values)
    if values.size == 1:
        return float(values[0]), float(values[0])
    means = _resample_means(values, n_resamples, np.random.default_rng(seed))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mean_with_ci(values, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """{"mean", "ci_low", "ci_high", "n"} of values, plain Python numbers ready for metrics.json."""
    low, high = bootstrap_ci(values, n_resamples, confidence, seed)
    values = _checked_values(values)
    return {"mean": float(values.mean()), "ci_low": low, "ci_high": high, "n": int(values.size)}

"""Intensity normalisation: a resized float X-ray in [0, 1] -> the uint8 array the model sees.

One function per method (preprocess.normalize in params.yaml), and `normalize_image`, which
picks one from the settings. Training (the preprocess stage), `lungseg evaluate`, `lungseg
predict` and exported models all reach these through lungseg.data.preprocess.finish_image, with
the settings stored in the checkpoint or export, so a model always sees what it was trained on.

Why more than min-max: a bright burned-in label or marker sets the top of a min-max stretch, so
the lungs of such an X-ray end up squeezed into a narrow grey band. `percentile` ignores the
brightest and darkest few pixels; `equalize` and `clahe` map each image onto a fixed (flat)
histogram, whatever its contrast (docs/data.md, "Intensity normalisation").
"""

from __future__ import annotations

import numpy as np

from lungseg.core.config import PreprocessConfig
from lungseg.core.errors import LungsegError

NORMALIZE_KEYS = ("percentile_low", "percentile_high", "clahe_clip_limit", "clahe_tiles")  # the methods' own settings
CLAHE_HINT = "preprocess.normalize=clahe needs OpenCV, which is not installed: pip install -e '.[clahe]'"


def stretch_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map `low`..`high` linearly onto 0..255 (uint8, rounded to nearest, values beyond clipped).

    The min-max stretch of training images and of predict's overlays. A constant image (high == low)
    becomes 0 instead of dividing by zero.

    Args:
        values: floats (or a 256-entry table of 8-bit levels).
        low: the value that becomes 0; the image's own min for a min-max stretch, 0 for none.
        high: the value that becomes 255; the image's own max for a min-max stretch, 1 for none.

    Returns:
        uint8, the shape of `values`.
    """
    scaled = (values - low) / max(high - low, 1e-6)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def minmax(values: np.ndarray) -> np.ndarray:
    """Stretch the image's darkest pixel to 0 and its brightest to 255.

    Args:
        values: floats in [0, 1].

    Returns:
        uint8, the shape of `values`.
    """
    return stretch_to_uint8(values, float(values.min()), float(values.max()))


def percentile_stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Stretch the `low`-th percentile of the image to 0 and the `high`-th to 255, clipping beyond.

    A few bright pixels (a burned-in label) no longer set the contrast of the rest.

    Args:
        values: floats in [0, 1].
        low: the percentile that becomes 0, 0 <= low < high (0 and 100: min-max).
        high: the percentile that becomes 255, high <= 100.

    Returns:
        uint8, the shape of `values`.
    """
    bottom, top = np.percentile(values, [low, high])
    return stretch_to_uint8(values, float(bottom), float(top))


def equalize(values: np.ndarray) -> np.ndarray:
    """Global histogram equalisation.

    Each pixel becomes the share of the image's pixels that are at most as bright (the empirical CDF),
    so the grey levels come out evenly used whatever the contrast. Exact on the float values (no 256-bin
    quantisation first); the darkest level becomes 0, the brightest 255, a constant image 0.

    Args:
        values: floats in [0, 1].

    Returns:
        uint8, the shape of `values`.
    """
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    cdf = np.cumsum(counts)
    scaled = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1)
    return stretch_to_uint8(scaled[inverse.reshape(values.shape)], 0.0, 1.0)


def check_available(method: str) -> None:
    """Check that the packages `method` needs are installed.

    Called before a folder is read, so a missing OpenCV stops the run before minutes of decoding.

    Args:
        method: a preprocess.normalize method.

    Raises:
        LungsegError: saying how to install the missing package (OpenCV for clahe).
    """
    if method == "clahe":
        _opencv()


def _opencv():
    try:
        import cv2  # optional (the `clahe` extra): the only method that needs it
    except ImportError:
        raise LungsegError(CLAHE_HINT) from None
    return cv2


def clahe(values: np.ndarray, clip_limit: float, tiles: int) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV's).

    Equalisation per tile of a `tiles` x `tiles` grid, each tile's histogram clipped at `clip_limit` times
    its mean count so that noise in flat regions is not amplified, blended bilinearly between tiles.

    Args:
        values: floats in [0, 1]; min-max stretched to 8 bits first (OpenCV's CLAHE reads 8 or 16 bit
            images, and its clip limit is relative to 256 bins).
        clip_limit: histogram clip, in multiples of a tile's mean count.
        tiles: tiles per side.

    Returns:
        uint8, the shape of `values`.

    Raises:
        LungsegError: OpenCV is missing.
    """
    return _opencv().createCLAHE(clipLimit=float(clip_limit), tileGridSize=(tiles, tiles)).apply(minmax(values))


def normalize_image(values: np.ndarray, settings: PreprocessConfig) -> np.ndarray:
    """The uint8 image for the method `settings.normalize` names (see the functions above).

    Args:
        values: a resized float image in [0, 1].
        settings: the preprocess section (normalize and the method's own settings, NORMALIZE_KEYS);
            `none` keeps intensities as read, 0..1 -> 0..255.

    Returns:
        uint8, the shape of `values`.

    Raises:
        LungsegError: clahe without OpenCV.
        ValueError: an unknown method (config.PreprocessConfig refuses it first).
    """
    method = settings.normalize
    if method == "minmax":
        return minmax(values)
    if method == "percentile":
        return percentile_stretch(values, settings.percentile_low, settings.percentile_high)
    if method == "equalize":
        return equalize(values)
    if method == "clahe":
        return clahe(values, settings.clahe_clip_limit, settings.clahe_tiles)
    if method == "none":
        return stretch_to_uint8(values, 0.0, 1.0)
    raise ValueError(f"unknown normalisation {method!r}")  # config.PreprocessConfig refuses it first

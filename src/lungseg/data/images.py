"""The one reader for X-ray images and masks: any PNG or JPEG mode to a greyscale array.

Modes handled: 1, L, LA, P/PA (palette), RGB, RGBA, CMYK, I;16 (16-bit), I (32-bit int), F.
8-bit data is scaled by 255, 16-bit by 65535 (never clipped to 8 bits), so the values
returned by `read_grayscale` always lie in [0, 1] whatever the file's bit depth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message names the file and the reason."""


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode `path`, turning every decoding failure into an ImageReadError."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so that truncated files fail here and not later
            return image
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{path}: cannot read image ({error})") from error


def to_float_gray(image: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to a float32 HxW array in [0, 1]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode in ("I", "F"):
        return _scale_wide(np.asarray(image, dtype=np.float64))
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode != "L":
        # ITU-R 601 luma; alpha is dropped (X-rays carry no meaningful transparency)
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def _scale_wide(values: np.ndarray) -> np.ndarray:
    """Map 32-bit integer or float pixels into [0, 1] by the smallest range that holds them."""
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1 and values.dtype.kind == "f":
        return values.astype(np.float32)
    for limit in (255.0, 65535.0):
        if low >= 0 and high <= limit:
            return (values / limit).astype(np.float32)
    return ((values - low) / max(high - low, 1e-12)).astype(np.float32)


def mask_levels(image: Image.Image) -> np.ndarray:
    """A mask image as float32 in [0, 1]; masks saved with values 0/1 (in any bit depth) map to 0/1,
    not to 1/255 or 1/65535, which would vanish under any threshold."""
    raw = np.asarray(image)
    if raw.ndim == 2 and raw.dtype.kind in "biu" and raw.max() <= 1:
        return raw.astype(np.float32)
    return to_float_gray(image)


def read_grayscale(path: str | Path) -> np.ndarray:
    """Read an image file as a float32 HxW array in [0, 1]."""
    return to_float_gray(open_image(path))


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{path}: cannot read image ({error})") from error
    return height, width

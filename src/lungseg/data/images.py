"""The one reader for X-ray images and masks: any PNG or JPEG mode to a greyscale array.

Modes handled: 1, L, LA, P/PA (palette), RGB, RGBA, CMYK, I;16 (16-bit), I (32-bit int), F.
8-bit data is scaled by 255, 16-bit by 65535 (never clipped to 8 bits), so the values
returned always lie in [0, 1] whatever the file's bit depth.

`read_resized` is the fast path preprocessing uses: 8-bit data is shrunk in Pillow's uint8
mode (integer box-reduce, then Lanczos) and JPEGs are decoded straight at a reduced size, so a
3000 px X-ray never becomes a full-size float array.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # more than 8 bits per pixel
# Pillow's PNG reader raises SyntaxError for a corrupt chunk (found by tests/test_fuzz_images.py)
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
# Shrink by whole factors with a box filter while the image is over this many times the target,
# then finish with Lanczos: as sharp as Lanczos all the way, at a fraction of the cost.
REDUCING_GAP = 3.0


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message names the file and the reason."""


def open_image(path: str | Path, draft_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode `path`; return the image and its size on disk as (height, width).

    With `draft_size`, a JPEG is decoded directly at 1/2, 1/4 or 1/8 scale while staying at
    least that large (DCT scaling); other formats ignore it. Every decoding failure, including
    a truncated file, becomes an ImageReadError here rather than later.
    """
    try:
        with Image.open(path) as image:
            original = (image.height, image.width)
            if draft_size and image.format == "JPEG":
                image.draft("L", (draft_size, draft_size))
            image.load()
            return image, original
    except READ_ERRORS as error:
        raise ImageReadError(f"{path}: cannot read image ({error})") from error


def to_float_gray(image: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to a float32 HxW array in [0, 1]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode in ("I", "F"):
        return _scale_wide(np.asarray(image, dtype=np.float64))
    return np.asarray(_as_8bit_gray(image), dtype=np.float32) / 255.0


def _as_8bit_gray(image: Image.Image) -> Image.Image:
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    # ITU-R 601 luma; alpha is dropped (X-rays carry no meaningful transparency)
    return image if image.mode == "L" else image.convert("L")


def _scale_wide(values: np.ndarray) -> np.ndarray:
    """Map 32-bit integer or float pixels into [0, 1] by the smallest range that holds them."""
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1 and values.dtype.kind == "f":
        return values.astype(np.float32)
    for limit in (255.0, 65535.0):
        if low >= 0 and high <= limit:
            return (values / limit).astype(np.float32)
    return ((values - low) / max(high - low, 1e-12)).astype(np.float32)


def is_zero_one_mask(image: Image.Image) -> bool:
    """True for a mask saved with values 0 and 1 (in any bit depth) instead of 0 and 255: read
    as usual it would be 1/255 or 1/65535 bright and vanish under any threshold."""
    if image.mode not in ("L", *WIDE_MODES):
        return False
    return image.getextrema()[1] <= 1


def _resizable(image: Image.Image, is_mask: bool) -> Image.Image:
    """The image in a mode Pillow resizes well: 8-bit data as 'L' (0..255), wider data as 'F' in [0, 1]."""
    if is_mask and is_zero_one_mask(image):
        return Image.fromarray((np.asarray(image) > 0).astype(np.uint8) * 255)
    if image.mode in WIDE_MODES:
        return Image.fromarray(to_float_gray(image))
    return _as_8bit_gray(image)


@dataclass
class Resized:
    values: np.ndarray  # float32 size x size in [0, 1]
    original_size: tuple[int, int]  # (height, width) on disk
    levels: int  # distinct grey levels at full size (a clean mask has 2)


def read_resized(path: str | Path, size: int, is_mask: bool = False) -> Resized:
    """Read `path` shrunk (or grown) to size x size with antialiasing, as float32 in [0, 1].

    Images use Lanczos; masks use bilinear (no ringing), so that thresholding the result at 0.5
    keeps the pixels that were mostly lung.
    """
    image, original = open_image(path, draft_size=4 * size)
    resample = Image.Resampling.BILINEAR if is_mask else Image.Resampling.LANCZOS
    full = _resizable(image, is_mask)
    small = full.resize((size, size), resample, reducing_gap=REDUCING_GAP)
    values = np.asarray(small, dtype=np.float32)
    # uint8 results are clamped by Pillow; float ones can overshoot where Lanczos rings
    values = np.clip(values, 0.0, 1.0) if small.mode == "F" else values / 255.0
    return Resized(values, original, _count_levels(full) if is_mask else 0)


def _count_levels(image: Image.Image) -> int:
    colours = image.getcolors(256) if image.mode == "L" else None  # fast path for 8-bit data
    return len(colours) if colours is not None else len(np.unique(np.asarray(image)))


def read_mask(path: str | Path, threshold: int = 127) -> np.ndarray:
    """A mask at full size as uint8 0/1: lung where the pixel is above `threshold` on a 0..255
    scale (16-bit masks are scaled first; 0/1 masks are recognised, as in read_resized)."""
    image, _ = open_image(path)
    full = _resizable(image, is_mask=True)
    values = np.asarray(full, dtype=np.float32)
    scaled = values if full.mode == "L" else values * 255.0
    return (scaled > threshold).astype(np.uint8)


def read_grayscale(path: str | Path) -> np.ndarray:
    """Read an image file at full size as a float32 HxW array in [0, 1]."""
    return to_float_gray(open_image(path)[0])


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header only."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except READ_ERRORS as error:
        raise ImageReadError(f"{path}: cannot read image ({error})") from error

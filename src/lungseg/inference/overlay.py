"""What predict writes for each mask besides its numbers: the mask as a 0/255 PNG, and the
mask blended in colour over the X-ray. Pure numpy and Pillow; the evaluation pictures
(lungseg.evaluation.pictures) draw their overlays with the same functions.

Both writers are atomic (lungseg.core.io.atomic_path), and inputs are checked up front with
ValueErrors that say what is wrong.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lungseg.core.io import atomic_path

# --------------------------------------------------------------------------- checks


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check that ``image`` is HxW uint8 or float in [0, 1].

    Args:
        image: the array to check.
        name: what to call it in the error message.

    Returns:
        ``image`` as an array.

    Raises:
        ValueError: for another shape or dtype, NaN or infinite values, or floats outside [0, 1].
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"{name} must be 2-D (HxW greyscale), got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {image.dtype}")
    if image.size and not np.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if image.size and (image.min() < 0.0 or image.max() > 1.0):
        raise ValueError(
            f"float {name} must lie in [0, 1], got range [{image.min():g}, {image.max():g}]"
        )
    return image


def check_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Check that ``mask`` is HxW and binary (bool or 0/1).

    Args:
        mask: the array to check.
        name: what to call it in the error message.

    Returns:
        ``mask`` as a bool array.

    Raises:
        ValueError: for another shape, or any value other than 0 and 1.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be 2-D (HxW), got shape {mask.shape}")
    if mask.dtype == np.uint8 and (not mask.size or mask.max() <= 1):
        # the masks lungseg makes: checked and viewed without a full-size temporary
        return np.ascontiguousarray(mask).view(bool)
    if mask.dtype != bool:
        # Reject probabilities / 0-255 masks instead of silently thresholding them:
        # the caller decides the threshold, not the plotting code.
        bad = ~np.isin(mask, (0, 1))
        if bad.any():
            raise ValueError(
                f"{name} must be binary (bool or 0/1), found value {mask[bad].flat[0]!r}"
            )
    return mask.astype(bool)


def check_same_shape(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> None:
    """Check that two arrays have the same shape.

    Args:
        a: the first array.
        b: the second array.
        a_name: what to call `a` in the error message.
        b_name: what to call `b` in the error message.

    Raises:
        ValueError: when the shapes differ.
    """
    if a.shape != b.shape:
        raise ValueError(f"{a_name} shape {a.shape} != {b_name} shape {b.shape}")


def check_color(color: Sequence[int]) -> np.ndarray:
    """Check that ``color`` is an RGB triple in 0..255.

    Args:
        color: the (R, G, B) values.

    Returns:
        The colour as a float array of shape (3,).

    Raises:
        ValueError: for anything but 3 values in 0..255.
    """
    rgb = np.asarray(color, dtype=float)
    if rgb.shape != (3,) or (rgb < 0).any() or (rgb > 255).any():
        raise ValueError(f"color must be 3 values in 0..255 (RGB), got {color!r}")
    return rgb


def check_alpha(alpha: float) -> None:
    """Check that a blending weight lies in [0, 1].

    Args:
        alpha: the weight of the colour.

    Raises:
        ValueError: for a value outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")


# --------------------------------------------------------------------------- overlay


_OVERLAY_BLOCK = 1 << 18  # pixels blended at a time: temporaries stay a few MB whatever the image size


def _blend_tables(rgb_color: np.ndarray, alpha: float) -> np.ndarray:
    """3 x 256 uint8: entry [c, g] is ``round((1 - alpha) * g + alpha * color[c])``, computed in
    float64 once per grey level instead of once per pixel."""
    levels = np.arange(256, dtype=np.float64)
    blended = (1.0 - alpha) * levels[None, :] + alpha * rgb_color[:, None]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _blend_block(grey: np.ndarray, inside: np.ndarray, rgb_color: np.ndarray, alpha: float,
                 tables: np.ndarray, out: np.ndarray) -> None:
    """Blend one block of rows into ``out`` (rows x W x 3 uint8).

    grey: the block of the image (uint8, or float in [0, 1]). inside: its bool mask.
    rgb_color, alpha: as for overlay. tables: _blend_tables for uint8 images.
    """
    if grey.dtype == np.uint8:
        for channel in range(3):
            out[..., channel] = np.where(inside, tables[channel][grey], grey)
        return
    # float: the float64 formula, on this block only, so results match the full-size blend exactly
    scaled = grey.astype(np.float64) * 255.0
    outside = np.clip(np.rint(scaled), 0, 255)
    for channel in range(3):
        blended = np.clip(np.rint((1.0 - alpha) * scaled + alpha * rgb_color[channel]), 0, 255)
        out[..., channel] = np.where(inside, blended, outside)


def overlay(
    image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.4
) -> np.ndarray:
    """Blend ``mask`` pixels of a greyscale ``image`` toward ``color``.

    Built block of rows by block of rows into the uint8 result, uint8 images through per-level
    tables: besides the result (3 bytes a pixel) it needs a few MB, never a full-size float64
    RGB (24 bytes a pixel, 1.8 GB for a 10000 x 8000 X-ray).

    Args:
        image: HxW float in [0, 1] or uint8.
        mask: HxW bool or 0/1, the shape of `image`.
        color: the (R, G, B) colour, each in 0..255 (default red).
        alpha: the colour's weight, in [0, 1].

    Returns:
        HxWx3 uint8 RGB: outside the mask R == G == B == the grey value; inside, each channel is
        ``round((1 - alpha) * grey + alpha * color[c])`` (grey on the 0..255 scale).

    Raises:
        ValueError: for an image, mask, colour or alpha that fails its check, or shapes that differ.
    """
    image = check_image(image)
    mask = check_mask(mask)
    check_same_shape(image, mask, "image", "mask")
    rgb_color = check_color(color)
    check_alpha(alpha)

    tables = _blend_tables(rgb_color, alpha)
    rgb = np.empty((*image.shape, 3), dtype=np.uint8)
    rows = max(1, _OVERLAY_BLOCK // max(image.shape[1], 1))
    for start in range(0, len(image), rows):
        block = slice(start, start + rows)
        _blend_block(image[block], mask[block], rgb_color, alpha, tables, rgb[block])
    return rgb


def overlay_image(grey: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.4) -> Image.Image:
    """:func:`overlay` of a uint8 image as a Pillow RGB image, ready to save.

    The same pixels, made faster for writing many overlays. Each pixel is looked up once in a 512-entry
    table of packed RGBX words (grey level, plus 256 inside the mask), block of rows by block of rows, and
    the blocks are pasted into the picture: besides the picture (Pillow keeps RGB in 4 bytes a pixel) it
    needs a few MB.

    Args:
        grey: HxW uint8.
        mask: HxW bool or 0/1, the shape of `grey`.
        color: as for :func:`overlay`.
        alpha: as for :func:`overlay`.

    Returns:
        The RGB picture.

    Raises:
        ValueError: for a grey that is not HxW uint8, or a mask, colour or alpha that fails its check.
    """
    grey = check_image(grey, "grey")
    if grey.dtype != np.uint8:
        raise ValueError(f"grey must be uint8, got dtype {grey.dtype}")
    mask = check_mask(mask)
    check_same_shape(grey, mask, "grey", "mask")
    check_alpha(alpha)
    table = _packed_table(_blend_tables(check_color(color), alpha))
    height, width = grey.shape
    picture = Image.new("RGB", (width, height))
    rows = max(1, _OVERLAY_BLOCK // max(width, 1))
    for start in range(0, height, rows):
        index = grey[start:start + rows].astype(np.uint16)
        index |= mask[start:start + rows].view(np.uint8).astype(np.uint16) << 8
        block = table[index]  # uint32 rows x W, bytes R, G, B, 0 in memory order
        picture.paste(Image.frombytes("RGB", (width, len(block)), block, "raw", "RGBX"), (0, start))
    return picture


def _packed_table(tables: np.ndarray) -> np.ndarray:
    """512 little-endian RGBX words: entries 0..255 the grey levels as is, 256..511 blended
    (tables: _blend_tables' 3 x 256)."""
    levels = np.arange(256, dtype=np.uint32)
    outside = levels | levels << 8 | levels << 16
    inside = tables[0].astype(np.uint32) | tables[1].astype(np.uint32) << 8 | tables[2].astype(np.uint32) << 16
    return np.concatenate([outside, inside]).astype("<u4")


# --------------------------------------------------------------------------- mask files


MASK_PNG = {"compress_level": 1, "compress_type": zlib.Z_RLE}


def save_mask_png(mask: np.ndarray, path, sweep: bool = True) -> None:
    """Write a binary mask (bool or 0/1) as an 8-bit greyscale PNG with values 0/255, atomically.

    Args:
        mask: HxW bool or 0/1.
        path: where to write; the file is always PNG, so it must end in ``.png`` (the name does not lie).
        sweep: as in lungseg.core.io.atomic_path (False when the caller swept the folder once).

    Raises:
        ValueError: for a path not ending in .png, or a mask that fails check_mask.
    """
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"mask path must end in .png, got {str(path)!r}")
    mask = check_mask(mask)
    pixels = mask.view(np.uint8) * np.uint8(255)  # a bool array is 0/1 bytes
    with atomic_path(path, sweep) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", **MASK_PNG)  # 2-D uint8 -> mode "L"

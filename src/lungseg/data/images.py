"""The one reader for X-ray images and masks: PNG, JPEG, TIFF, BMP and DICOM to a greyscale array.

Modes handled: 1, L, LA, P/PA (palette), RGB, RGBA, CMYK, I;16 (16-bit), I (32-bit int), F.
8-bit data is scaled by 255, 16-bit by 65535 (never clipped to 8 bits), so the values
returned always lie in [0, 1] whatever the file's bit depth. DICOM files go through
lungseg.data.dicom (LUTs, window, MONOCHROME1) and come back as the same [0, 1] values.

Every reader applies the EXIF orientation, so images and masks come out as a viewer shows them,
and refuses an image over the pixel limit (set_max_pixels) from its header, before decoding it.

Masks (read_resized with is_mask=True, read_mask) follow what labelling tools write:
  greyscale (L, 1, 16-bit)  lung above the threshold on a 0..255 scale; 16-bit masks are scaled by
                            what they hold (values up to 255, as cv2.imwrite writes a uint16 0/255
                            array, are read as 8-bit; wider ones by 65535)
  label maps                a greyscale mask whose values are all small labels (at most
                            MAX_LABEL, e.g. 1 = right lung, 2 = left lung, as annotation tools and
                            uint8 label arrays export; 0/1 masks too): every non-zero label is lung
  palette (P, PA)           lung where the palette index is not 0, whatever the palette's colours
  RGB, RGBA                 lung where any colour channel is not 0 (fully transparent pixels are
                            background); Resized.colours counts the non-black colours
  alpha only                a mask whose colour is the same everywhere but whose alpha varies is
                            read by its alpha, as a greyscale mask
  DICOM                     MONOCHROME2, lung where the stored value is not 0

`read_resized` is the fast path preprocessing uses: 8-bit data is shrunk in Pillow's uint8
mode (integer box-reduce, then Lanczos) and JPEGs are decoded straight at a reduced size, so a
3000 px X-ray never becomes a full-size float array.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lungseg.core.errors import ImageReadError
from lungseg.data import dicom
from lungseg.data.dicom import DICOM_SUFFIXES, pixel_spacing  # noqa: F401  (pixel_spacing: re-exported)

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")
IMAGE_SUFFIXES = PILLOW_SUFFIXES + DICOM_SUFFIXES
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # more than 8 bits per pixel
COLOUR_MODES = ("RGB", "RGBA", "RGBX")
# What Pillow raises for a corrupt or truncated file: a broken PNG chunk is a SyntaxError (found by
# tests/test_fuzz_images.py), short headers are struct.error or EOFError, and the TIFF reader
# fails on malformed tags with IndexError, KeyError, TypeError or ZeroDivisionError.
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError,
               TypeError, ZeroDivisionError, Image.DecompressionBombError)
# Shrink by whole factors with a box filter while the image is over this many times the target,
# then finish with Lanczos: as sharp as Lanczos all the way, at a fraction of the cost.
REDUCING_GAP = 3.0
DEFAULT_MAX_PIXELS = 200_000_000  # a 14000 x 14000 scan; real chest X-rays stay under 20 Mpx
ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 upright, 2..8 mirrored and/or rotated
TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height
MANY_COLOURS = 256  # colour masks with more colours than this are reported as "over 256"
# A greyscale mask whose largest value is at most this holds labels, not grey levels: a 0/255
# mask is bright and a soft-edged one spans 0..255, while label maps number their structures
# 1, 2, 3, ... (no tool writes a lung as grey level 9 of 255: it would be invisible)
MAX_LABEL = 15

_max_pixels = DEFAULT_MAX_PIXELS
# lungseg checks every image's size from its header against _max_pixels before decoding; Pillow's
# own check would warn (DecompressionBombWarning) or fail with its own text first, so it is off.
Image.MAX_IMAGE_PIXELS = None


def set_max_pixels(limit: int) -> None:
    """Refuse, from now on in this process, images with more than `limit` pixels (width x height).

    Args:
        limit: a positive pixel count; DEFAULT_MAX_PIXELS unless a command or params.yaml asks otherwise.

    Raises:
        ValueError: `limit` is not a positive whole number.
    """
    global _max_pixels
    if isinstance(limit, bool) or int(limit) != limit or limit < 1:
        raise ValueError(f"the pixel limit must be a positive whole number of pixels, got {limit!r}")
    _max_pixels = int(limit)
    Image.MAX_IMAGE_PIXELS = None  # in case something else turned Pillow's check back on


def max_pixels() -> int:
    """The pixel limit now in force (see set_max_pixels).

    Returns:
        The limit, in pixels (width x height).
    """
    return _max_pixels


def is_image_file(path: str | Path) -> bool:
    """Whether lungseg reads `path` as an image.

    Names starting with '.' (.DS_Store, macOS '._x.png' companions) never are.

    Args:
        path: the file; only an extension-less one is opened, to look for the preamble.

    Returns:
        True for a name ending in one of IMAGE_SUFFIXES (any case), or a file without an extension that carries
        the DICOM preamble.
    """
    path = Path(path)
    if path.name.startswith("."):
        return False
    return path.suffix.lower() in PILLOW_SUFFIXES or dicom.is_dicom(path)


@contextmanager
def _named(path: str | Path) -> Iterator[None]:
    """Turn any decoding or conversion failure inside into an ImageReadError naming `path`."""
    try:
        yield
    except ImageReadError:
        raise
    except UnidentifiedImageError as error:  # Pillow's "cannot identify image file" says neither what nor why
        raise ImageReadError(f"{path}: not an image lungseg reads{_what_it_is(path)}") from error
    except READ_ERRORS as error:
        raise ImageReadError(f"{path}: cannot read image ({error})") from error


# The first bytes of files that turn up among images but are none (an archive, a document)
SIGNATURES = {b"PK\x03\x04": "a zip archive", b"%PDF": "a PDF document", b"\x1f\x8b": "a gzip archive",
              b"7z\xbc\xaf": "a 7-Zip archive", b"Rar!": "a RAR archive", b"<": "text or HTML"}


def _what_it_is(path: str | Path) -> str:
    """': it is a zip archive' (or another kind SIGNATURES knows), '' when the bytes say nothing."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(8)
    except OSError:
        return ""
    if not start:
        return ": the file is empty"
    kind = next((name for magic, name in SIGNATURES.items() if start.lstrip().startswith(magic)), None)
    return f": it is {kind}, not a picture" if kind else f" (its first bytes, {start[:4]!r}, are no image format's)"


def _check_pixels(path: str | Path, height: int, width: int) -> None:
    """Refuse an image larger than the pixel limit, before anything is decoded."""
    if height * width > _max_pixels:
        raise ImageReadError(
            f"{path}: {width}x{height} pixels ({height * width:,}) is over the limit of {_max_pixels:,} pixels "
            "that guards against decompression bombs; if the image is genuine, raise the limit with --max-pixels N "
            "(lungseg commands) or preprocess.max_pixels in params.yaml"
        )


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8 from the header (1 also when absent or unreadable).

    A PNG's eXIf chunk only counts before the pixel data: looking further would make Pillow
    decode the whole image, and writers put it first.
    """
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except READ_ERRORS:
        return 1  # viewers show an image whose EXIF block is unreadable as stored
    return value if value in range(1, 9) else 1


def _oriented_size(image: Image.Image, orientation: int) -> tuple[int, int]:
    """(height, width) of `image` once turned upright by its EXIF `orientation`."""
    return (image.width, image.height) if orientation in TRANSPOSED else (image.height, image.width)


@dataclass
class Opened:
    """An image file decoded upright (fields: see comments)."""

    image: Image.Image  # decoded, upright
    size: tuple[int, int]  # (height, width) at full size, upright
    orientation: int  # the EXIF orientation it had on disk (1: upright or none; always 1 for DICOM)
    drafted: bool = False  # a JPEG decoded by draft (reduced scale or straight to grey), not as stored


def _open(path: str | Path, draft_size: int | None = None, is_mask: bool = False) -> Opened:
    """Decode `path` upright. draft_size: see open_image. is_mask: a DICOM file is read as a mask,
    and a JPEG keeps its colours (the colour mask rules need them)."""
    if dicom.is_dicom(path):
        image, size = dicom.read_image(path, is_mask, check_size=_check_pixels)
        return Opened(image, size, 1)
    with _named(path), Image.open(path) as image:
        orientation = _orientation(image)
        size = _oriented_size(image, orientation)
        _check_pixels(path, *size)
        drafted = False
        if draft_size and image.format == "JPEG":
            before = (image.mode, image.size)
            image.draft(None if is_mask else "L", (draft_size, draft_size))
            # draft() answers for any single-tile JPEG; only a change of scale or mode counts
            drafted = (image.mode, image.size) != before
        image.load()
        return Opened(ImageOps.exif_transpose(image) if orientation != 1 else image, size, orientation, drafted)


def open_image(path: str | Path, draft_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode `path` upright (EXIF orientation applied).

    Every decoding failure, including a truncated file or one over the pixel limit, becomes an
    ImageReadError here rather than later.

    Args:
        path: the image file.
        draft_size: a JPEG is then decoded directly at 1/2, 1/4 or 1/8 scale while staying at
            least that large (DCT scaling); other formats ignore it.

    Returns:
        The decoded image, and its full size as (height, width).

    Raises:
        ImageReadError: naming the file, when it cannot be decoded or is over the pixel limit.
    """
    opened = _open(path, draft_size)
    return opened.image, opened.size


def to_float_gray(image: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to a float32 HxW array in [0, 1].

    Args:
        image: the image; 16-bit data is scaled by 65535, 32-bit and float by the smallest range that holds it,
            anything else as 8-bit grey (as_8bit_gray) by 255.

    Returns:
        float32 H x W in [0, 1].
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode in ("I", "F"):
        return _scale_wide(np.asarray(image, dtype=np.float64))
    return np.asarray(as_8bit_gray(image), dtype=np.float32) / 255.0


def as_8bit_gray(image: Image.Image) -> Image.Image:
    """An 8-bit image of any mode as 'L': palettes through RGBA, colours by luma.

    Args:
        image: an 8-bit image.

    Returns:
        `image` itself when it is 'L' already, else an 'L' copy.
    """
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


def mask_labels(image: Image.Image) -> list[int] | None:
    """The non-zero labels of a greyscale label map (every value at most MAX_LABEL, a 0/1 mask included).

    Read as grey levels, labels would be 1/255 or 1/65535 bright and vanish under any threshold.

    Args:
        image: a decoded mask.

    Returns:
        The labels present, in increasing order; None for a mask of grey levels (or not greyscale).
    """
    if image.mode not in ("L", *WIDE_MODES):
        return None
    low, high = image.getextrema()
    if low < 0 or high > MAX_LABEL or high == 0:
        return None
    counts = np.bincount(np.asarray(image).astype(np.int64).ravel(), minlength=MAX_LABEL + 1)
    return [int(label) for label in np.flatnonzero(counts[1:]) + 1]


def _as_8bit_values(image: Image.Image) -> Image.Image | None:
    """A 16- or 32-bit greyscale mask whose values all fit in 0..255 as an 'L' image of those
    values (cv2.imwrite of a uint16 0/255 array), else None."""
    if image.mode not in WIDE_MODES or image.mode == "F":
        return None
    low, high = image.getextrema()
    return Image.fromarray(np.asarray(image).astype(np.uint8)) if low >= 0 and high <= 255 else None


def _resizable(image: Image.Image) -> Image.Image:
    """An X-ray in a mode Pillow resizes well: 8-bit data as 'L' (0..255), wider data as 'F' in [0, 1]."""
    if image.mode in WIDE_MODES:
        return Image.fromarray(to_float_gray(image))
    return as_8bit_gray(image)


class MaskRead(NamedTuple):
    """A mask read for resizing (fields: see comments)."""

    image: Image.Image  # 'L' 0..255 or 'F' in [0, 1], ready to resize
    colours: int  # non-black colours of a palette or colour mask (0 for others)
    rule: str  # how a mask other than plain grey levels was read, for `lungseg check` ("" for plain ones)


def _mask_resizable(image: Image.Image, lung_labels: tuple[int, ...] = ()) -> MaskRead:
    """A mask in a mode Pillow resizes well ('L' 0..255 or 'F' in [0, 1]) by the rules in the
    module docstring, with its colour count and the rule that read it.

    image: the decoded, upright mask in any mode. lung_labels: the labels of a label map that
    are lung (data.lung_labels); () = every label.
    """
    image = _alpha_if_only_alpha_varies(image)
    if image.mode in ("P", "PA"):
        indices = np.asarray(image.getchannel(0))
        return MaskRead(_binary(indices > 0), int(np.count_nonzero(np.bincount(indices.ravel(), minlength=256)[1:])), "")
    if image.mode in COLOUR_MODES:
        return MaskRead(*_colour_mask(image), "")
    if image.mode in ("1", "LA"):
        image = image.convert("L")
    labels = mask_labels(image)
    if labels is not None:
        lung = [label for label in labels if not lung_labels or label in lung_labels]
        other = [label for label in labels if label not in lung]
        rule = "" if labels == [1] and not lung_labels else (
            f"labels {', '.join(map(str, lung)) or 'none'} read as lung"
            + (f", {', '.join(map(str, other))} as background (data.lung_labels)" if other else ""))
        return MaskRead(_binary(np.isin(np.asarray(image), lung)), 0, rule)
    narrow = _as_8bit_values(image)
    if narrow is not None:
        return MaskRead(narrow, 0, f"{image.mode} values 0..255 read as 8-bit")
    return MaskRead(_resizable(image), 0, "")


def _alpha_if_only_alpha_varies(image: Image.Image) -> Image.Image:
    """The alpha channel as an 'L' image when it is the only channel that varies, else `image`."""
    bands = image.getbands()
    if "A" not in bands or len(bands) < 2:
        return image
    extrema = dict(zip(bands, image.getextrema()))
    alpha_low, alpha_high = extrema.pop("A")
    if alpha_low == alpha_high or any(low != high for low, high in extrema.values()):
        return image
    return image.getchannel("A")


def _colour_mask(image: Image.Image) -> tuple[Image.Image, int]:
    """Lung where any of R, G, B is not 0 (fully transparent pixels count as black), and the
    number of distinct non-black colours (MANY_COLOURS + 1 when there are more)."""
    pixels = np.asarray(image.convert("RGBA"))
    colour, alpha = pixels[..., :3], pixels[..., 3]
    if alpha.min() != alpha.max():
        colour = np.where(alpha[..., None] == 0, 0, colour).astype(np.uint8)
    counted = Image.fromarray(colour).getcolors(MANY_COLOURS + 1)
    colours = MANY_COLOURS + 1 if counted is None else sum(1 for _, rgb in counted if rgb != (0, 0, 0))
    return _binary(colour.any(axis=2)), colours


def _binary(lung: np.ndarray) -> Image.Image:
    """A boolean lung array as an 'L' 0/255 image."""
    return Image.fromarray(lung.astype(np.uint8) * 255)


@dataclass
class Resized:
    """An image or mask as read_resized returns it (fields: see comments)."""

    values: np.ndarray  # float32 size x size in [0, 1]
    original_size: tuple[int, int]  # (height, width) at full size, upright
    levels: int  # distinct grey levels at full size (a clean mask has 2)
    orientation: int = 1  # EXIF orientation on disk (1: upright or none)
    colours: int = 0  # non-black colours of a palette or colour mask (a clean one has 1); 0 for others
    rule: str = ""  # how a mask other than plain grey levels was read (MaskRead.rule)


def read_resized(path: str | Path, size: int, is_mask: bool = False, lung_labels: tuple[int, ...] = ()) -> Resized:
    """Read `path` shrunk (or grown) to size x size with antialiasing, as float32 in [0, 1].

    Images use Lanczos; masks use bilinear (no ringing), so that thresholding the result at 0.5
    keeps the pixels that were mostly lung. Masks are read by the rules in the module docstring.

    Args:
        path: the image or mask file.
        size: the side of the square result.
        is_mask: read as a mask.
        lung_labels: for a label-map mask, the labels that are lung (data.lung_labels; () = every one).

    Returns:
        The resized values with the full size, grey levels, orientation, colours and rule they were read with.

    Raises:
        ImageReadError: naming the file, when it cannot be decoded or is over the pixel limit.
    """
    with _named(path):
        return _shrink(_open(path, draft_size=4 * size, is_mask=is_mask), size, is_mask, lung_labels)


def read_resized_and_full(path: str | Path, size: int) -> tuple[Resized, Image.Image]:
    """read_resized(path, size) for an X-ray, and the full-size upright image it came from, decoded once for both.

    lungseg predict shows that image under its overlay. A JPEG that read_resized decodes at reduced
    scale is decoded a second time at full size, as open_image would.

    Args:
        path: the X-ray file.
        size: the side of the square resized image.

    Returns:
        read_resized's result, and the full-size upright image.

    Raises:
        ImageReadError: naming the file, when it cannot be decoded or is over the pixel limit.
    """
    with _named(path):
        opened = _open(path, draft_size=4 * size)
        resized = _shrink(opened, size, is_mask=False)
        return resized, _open(path).image if opened.drafted else opened.image


def _shrink(opened: Opened, size: int, is_mask: bool, lung_labels: tuple[int, ...] = ()) -> Resized:
    """An opened image or mask resized to size x size as read_resized describes."""
    full, colours, rule = _mask_resizable(opened.image, lung_labels) if is_mask else (_resizable(opened.image), 0, "")
    resample = Image.Resampling.BILINEAR if is_mask else Image.Resampling.LANCZOS
    small = full.resize((size, size), resample, reducing_gap=REDUCING_GAP)
    levels = _count_levels(full) if is_mask else 0
    values = np.asarray(small, dtype=np.float32)
    # uint8 results are clamped by Pillow; float ones can overshoot where Lanczos rings
    values = np.clip(values, 0.0, 1.0) if small.mode == "F" else values / 255.0
    return Resized(values, opened.size, levels, opened.orientation, colours, rule)


def _count_levels(image: Image.Image) -> int:
    colours = image.getcolors(256) if image.mode == "L" else None  # fast path for 8-bit data
    return len(colours) if colours is not None else len(np.unique(np.asarray(image)))


def read_mask(path: str | Path, threshold: int = 127, lung_labels: tuple[int, ...] = ()) -> np.ndarray:
    """A mask at full size, upright, as uint8 0/1, read by the rules in the module docstring.

    Lung is where the pixel is above `threshold` on a 0..255 scale (16-bit masks are scaled first;
    0/1 masks, palette indices and colours are recognised, as in read_resized).

    Args:
        path: the mask file.
        threshold: 0..255; palette and colour masks are already 0/255.
        lung_labels: for a label map, the labels that are lung (data.lung_labels; () = every one).

    Returns:
        uint8 H x W, 1 = lung.

    Raises:
        ImageReadError: naming the file, when it cannot be decoded or is over the pixel limit.
    """
    with _named(path):
        full = _mask_resizable(_open(path, is_mask=True).image, lung_labels).image
        values = np.asarray(full, dtype=np.float32)
    scaled = values if full.mode == "L" else values * 255.0
    return (scaled > threshold).astype(np.uint8)


def read_grayscale(path: str | Path) -> np.ndarray:
    """Read an image file at full size, upright, as a float32 HxW array in [0, 1].

    Args:
        path: the image file.

    Returns:
        float32 H x W in [0, 1] (to_float_gray).

    Raises:
        ImageReadError: naming the file, when it cannot be decoded or is over the pixel limit.
    """
    with _named(path):
        return to_float_gray(_open(path).image)


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file as the readers return it (EXIF orientation applied), from its header only.

    Args:
        path: the image file.

    Returns:
        (height, width) in pixels, upright.

    Raises:
        ImageReadError: naming the file, when its header cannot be read or it is over the pixel limit (as the
            readers refuse it).
    """
    if dicom.is_dicom(path):
        size = dicom.image_size(path)
    else:
        with _named(path), Image.open(path) as image:
            size = _oriented_size(image, _orientation(image))
    _check_pixels(path, *size)
    return size

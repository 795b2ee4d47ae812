"""DICOM X-rays read with pydicom into the values the PNG path gives (lungseg.data.images uses this).

Images: stored values -> Modality LUT (rescale slope and intercept) -> VOI LUT, or window
centre and width, when the file has one -> scaled to [0, 1] by the range of the values then
present (8-bit data that no LUT changed is divided by 255, exactly as an 8-bit PNG) ->
MONOCHROME1 inverted, so that lungs are dark as in every other input. Colour files are read as
ITU-R 601 luma. Masks: single-frame MONOCHROME2, lung wherever the stored value is not zero.

A DICOM file is one named .dcm or .dicom, or one without an extension whose bytes 128..131 are
'DICM' (the Part 10 preamble). Every failure is an ImageReadError naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    RLETransferSyntaxes,
)

from lungseg.core.errors import ImageReadError

DICOM_SUFFIXES = (".dcm", ".dicom")
PREAMBLE_SIZE = 128
MAGIC = b"DICM"
GREY = ("MONOCHROME1", "MONOCHROME2")
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as Pillow's convert("L")
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# pydicom's plugins for the compressed transfer syntaxes it cannot decode with numpy or Pillow alone
INSTALL_JPEG = "pip install pylibjpeg pylibjpeg-libjpeg"
INSTALL_JPEG2000 = "pip install pylibjpeg pylibjpeg-openjpeg"
INSTALL_RLE = "pip install pylibjpeg pylibjpeg-rle"


def has_preamble(path: str | Path) -> bool:
    """Whether `path` is a readable file whose bytes 128..131 are 'DICM' (the DICOM Part 10 preamble).

    Args:
        path: any path; folders and unreadable files give False.

    Returns:
        True when the preamble is there.
    """
    try:
        with open(path, "rb") as handle:
            return handle.read(PREAMBLE_SIZE + len(MAGIC))[PREAMBLE_SIZE:] == MAGIC
    except OSError:
        return False


def is_dicom(path: str | Path) -> bool:
    """Whether lungseg reads `path` with pydicom.

    Args:
        path: the file; only an extension-less one is opened.

    Returns:
        True for a .dcm or .dicom name (any case), or no extension and the DICOM preamble.
    """
    suffix = Path(path).suffix.lower()
    return suffix in DICOM_SUFFIXES or (suffix == "" and has_preamble(path))


def _error(path: str | Path, reason: str) -> ImageReadError:
    return ImageReadError(f"{path}: {reason}")


@contextmanager
def _named(path: str | Path) -> Iterator[None]:
    """Turn any failure inside into an ImageReadError naming `path`, and keep pydicom quiet.

    pydicom parses each value when it is first used, so a corrupt file can fail anywhere below,
    with many exception types; and it warns about every odd value, while a file that cannot be
    used is reported once, as an error.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ImageReadError:
        raise
    except InvalidDicomError as error:
        # pydicom's text suggests force=True, which a user of lungseg cannot pass
        raise _error(path, "not a DICOM file: no 'DICM' after a 128-byte preamble, nor image data elements "
                           "without one") from error
    except Exception as error:
        raise _error(path, f"cannot read DICOM file ({type(error).__name__}: {_shortened(error)})") from error


def _shortened(error: Exception, limit: int = 200) -> str:
    """The error's text, cut: pydicom quotes whole byte strings of corrupt values."""
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."


def _dcmread(path: str | Path, header_only: bool) -> Dataset:
    """The dataset in `path`; with `header_only`, everything before the pixel data.

    A file without the 128-byte preamble and 'DICM' (older and raw writers leave them out) is
    read again as bare data elements; it counts as DICOM only if it then describes an image
    (Rows), and its transfer syntax is taken from how it was encoded. Anything else stays
    "not a DICOM file" (InvalidDicomError)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError:
        dataset = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
        if "Rows" not in dataset:
            raise
    if "TransferSyntaxUID" not in dataset.file_meta:
        implicit, little = dataset.original_encoding
        dataset.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                               ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return dataset


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a DICOM image from its header only (the pixel data is not read).

    Args:
        path: a DICOM file.

    Returns:
        (height, width) in pixels, from Rows and Columns.

    Raises:
        ImageReadError: the file cannot be read as DICOM or has no image size.
    """
    with _named(path):
        return _size(path, _dcmread(path, header_only=True))


def _size(path: str | Path, dataset: Dataset) -> tuple[int, int]:
    """(height, width) from the Rows and Columns of the dataset read from `path`."""
    rows, columns = dataset.get("Rows"), dataset.get("Columns")
    if not rows or not columns:
        raise _error(path, f"DICOM file has no image size (Rows {rows}, Columns {columns}); expected an X-ray image")
    return int(rows), int(columns)


def pixel_spacing(path: str | Path) -> tuple[float, float] | None:
    """Millimetres per pixel of a DICOM image, from PixelSpacing or else ImagerPixelSpacing.

    Args:
        path: any image file; a DICOM one is read up to its pixel data only.

    Returns:
        (row, column) spacing in mm; None for a file that is not DICOM or has neither (or an unusable value).

    Raises:
        ImageReadError: a DICOM file whose header cannot be read.
    """
    if not is_dicom(path):
        return None
    with _named(path):
        header = _dcmread(path, header_only=True)
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            spacing = _two_positive_numbers(header.get(keyword))
            if spacing is not None:
                return spacing
    return None


def _two_positive_numbers(value) -> tuple[float, float] | None:
    try:
        row, column = (float(v) for v in value)
    except (TypeError, ValueError):  # absent, one value, or text that is not a number
        return None
    return (row, column) if row > 0 and column > 0 else None


def read_image(path: str | Path, is_mask: bool = False,
               check_size: Callable[[str | Path, int, int], None] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode a DICOM file into a Pillow image, as the module docstring describes.

    Args:
        path: a DICOM file, read once.
        is_mask: read it as a mask (MONOCHROME2 only) instead of an X-ray.
        check_size: called as check_size(path, height, width) with the header's size before the
            pixels are decoded; it raises to refuse the file (images._check_pixels, the pixel limit).

    Returns:
        The image, mode 'F' in [0, 1] for an X-ray, mode 'L' 0/255 for a mask (lung where the stored value is
        not zero); and its (height, width).

    Raises:
        ImageReadError: naming the file, for any file that cannot be read, decoded or used (see the module docstring).
    """
    with _named(path):
        dataset = _dcmread(path, header_only=False)
        size = _size(path, dataset)
        if check_size is not None:
            check_size(path, *size)
        return _decode(path, dataset, is_mask), size


def _decode(path: str | Path, dataset: Dataset, is_mask: bool) -> Image.Image:
    """read_image's work, on the dataset read from `path`."""
    _check_decodable(path, dataset)
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if is_mask:
        if photometric != "MONOCHROME2" or samples != 1:
            raise _error(path, f"DICOM masks must be single-channel MONOCHROME2 with lung stored as non-zero values, "
                               f"this one is {photometric or 'unspecified'}; save the mask as PNG instead")
        return Image.fromarray(((_pixels(path, dataset) != 0) * 255).astype(np.uint8))
    if samples == 3:  # pydicom hands YBR data over as RGB
        pixels = _pixels(path, dataset)
        luma = np.rint(pixels @ LUMA).astype(pixels.dtype)
        return Image.fromarray(_unit_range(luma, int(dataset.get("BitsStored", 8))))
    if photometric not in GREY:
        raise _error(path, f"DICOM photometric interpretation {photometric or 'unspecified'} is not supported "
                           "(expected MONOCHROME1, MONOCHROME2 or RGB)")
    values = _unit_range(_apply_luts(path, _pixels(path, dataset), dataset), int(dataset.get("BitsStored", 16)))
    return Image.fromarray(1.0 - values if photometric == "MONOCHROME1" else values)


def _check_decodable(path: str | Path, dataset: Dataset) -> None:
    """Refuse, naming what is wrong, a file that has no single image or needs a missing decoder."""
    if not any(keyword in dataset for keyword in PIXEL_KEYWORDS):
        raise _error(path, "DICOM file holds no pixel data (a report or other non-image object); expected an X-ray image")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise _error(path, f"DICOM file holds {frames} frames; lungseg reads single-frame X-rays")
    syntax = _transfer_syntax(path, dataset)
    if not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise _error(path, f"pixel data compressed as {syntax.name} ({syntax}), which no pydicom decoder reads; "
                           "export the image uncompressed or as PNG") from error
    if not decoder.is_available:
        raise _error(path, f"pixel data compressed as {syntax.name} ({syntax}) and no decoder for it is installed; "
                           f"install one with: {_install_hint(syntax)}")


def _transfer_syntax(path: str | Path, dataset: Dataset) -> UID:
    syntax = getattr(dataset, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is None:
        raise _error(path, "DICOM file has no transfer syntax in its file meta information; cannot decode its pixels")
    return UID(syntax)


def _install_hint(syntax: UID) -> str:
    if syntax in JPEG2000TransferSyntaxes or "High-Throughput JPEG 2000" in syntax.name:
        return INSTALL_JPEG2000
    return INSTALL_RLE if syntax in RLETransferSyntaxes else INSTALL_JPEG


def _pixels(path: str | Path, dataset: Dataset) -> np.ndarray:
    """The stored pixel values, decoded."""
    try:
        return dataset.pixel_array
    except Exception as error:  # decoders and pydicom's checks raise many exception types for bad data
        syntax = _transfer_syntax(path, dataset)
        hint = f"; if the file is intact, try another decoder: {_install_hint(syntax)}" if syntax.is_compressed else ""
        raise _error(path, f"cannot decode DICOM pixel data ({syntax.name}): {type(error).__name__}: "
                           f"{_shortened(error)}{hint}") from error


def _apply_luts(path: str | Path, pixels: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Stored values -> Modality LUT -> VOI LUT or window, as a viewer shows them."""
    try:
        return apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)
    except Exception as error:  # e.g. a window width of 0 or a LUT with a malformed descriptor
        raise _error(path, f"cannot apply the DICOM rescale, VOI LUT or window ({type(error).__name__}: {_shortened(error)})") from error


def _unit_range(values: np.ndarray, bits_stored: int) -> np.ndarray:
    """float32 in [0, 1]: 8-bit integers over 255 (as an 8-bit PNG), anything else by its own
    minimum and maximum, so that 12- and 16-bit data keep every value (nothing is clipped).

    values: pixel values after the LUTs. bits_stored: the file's BitsStored.
    """
    if bits_stored <= 8 and values.dtype.kind in "ui" and values.min() >= 0:
        return values.astype(np.float32) / 255.0
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)

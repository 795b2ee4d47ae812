"""Tests for DICOM input (lungseg.data.dicom through lungseg.data.images): LUTs, MONOCHROME1,
bit depths, pixel spacing, masks, compressed files, and DICOM files in a data folder.

Every file is written here with pydicom from a small synthetic array, and its pixels are checked
against the same array saved as PNG and read through the PNG path.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from lungseg.cli import main as cli
from lungseg.core.config import PreprocessConfig
from lungseg.core.errors import ImageReadError
from lungseg.data.images import (
    is_image_file,
    pixel_spacing,
    read_grayscale,
    read_mask,
    read_resized,
    read_size,
    set_max_pixels,
)
from lungseg.data.layout import find_layout, list_pairs
from lungseg.data.preprocess import preprocess_folder, scan_folder

SETTINGS = PreprocessConfig(image_size=16, workers=1, metadata_columns=("county", "ptb"))


def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                syntax=ExplicitVRLittleEndian, pixel_data: bytes | None = None, **elements):
    """Write `pixels` (uint8 or uint16, H x W) as a single-frame DICOM file at `path`.

    bits_stored: defaults to the dtype's width. syntax: the transfer syntax UID; with a compressed
    one, pass the encapsulated `pixel_data`. elements: extra attributes by keyword
    (RescaleSlope=2, WindowCenter=..., PixelSpacing=[...], ...).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = pixels.dtype.itemsize * 8
    dataset.BitsStored = bits_stored or dataset.BitsAllocated
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    dataset.PixelData = pixels.tobytes() if pixel_data is None else pixel_data
    if pixel_data is not None:
        dataset["PixelData"].VR = "OB"
        dataset["PixelData"].is_undefined_length = True
    dataset.save_as(path, enforce_file_format=True)
    return path


def ramp12(shape=(12, 20)) -> np.ndarray:
    """A 12-bit horizontal ramp 100..4000 stored in uint16, with a little seeded noise."""
    height, width = shape
    noise = np.random.default_rng(0).integers(0, 30, size=shape)
    return (np.tile(np.linspace(100, 4000, width), (height, 1)) + noise).astype(np.uint16)


def minmax(values: np.ndarray) -> np.ndarray:
    return (values - values.min()) / (values.max() - values.min())


# --------------------------------------------------------------------------- pixel values


def test_12_bit_monochrome2_matches_the_same_array_as_16_bit_png(tmp_path):
    pixels = ramp12()
    dcm = write_dicom(tmp_path / "x.dcm", pixels, bits_stored=12)
    png = tmp_path / "x.png"
    Image.fromarray(pixels).save(png)
    values = read_grayscale(dcm)
    assert values.dtype == np.float32 and values.shape == pixels.shape
    assert values.min() == 0.0 and values.max() == 1.0  # scaled by its own range, not by 65535 (nearly black)
    np.testing.assert_allclose(values, minmax(read_grayscale(png)), atol=1e-5)
    assert read_size(dcm) == pixels.shape


def test_monochrome1_is_inverted_so_lungs_are_dark(tmp_path):
    pixels = ramp12()
    plain = write_dicom(tmp_path / "m2.dcm", pixels, bits_stored=12)
    inverted = write_dicom(tmp_path / "m1.dcm", (4095 - pixels).astype(np.uint16), "MONOCHROME1", bits_stored=12)
    np.testing.assert_allclose(read_grayscale(inverted), read_grayscale(plain), atol=1e-5)


def test_8_bit_dicom_reads_exactly_as_the_8_bit_png(tmp_path):
    pixels = np.array([[0, 51, 200], [128, 1, 99]], dtype=np.uint8)  # not stretched to 0..255
    dcm = write_dicom(tmp_path / "x.dcm", pixels)
    png = tmp_path / "x.png"
    Image.fromarray(pixels).save(png)
    np.testing.assert_array_equal(read_grayscale(dcm), read_grayscale(png))
    inverted = write_dicom(tmp_path / "inv.dcm", 255 - pixels, "MONOCHROME1")
    np.testing.assert_allclose(read_grayscale(inverted), read_grayscale(png), atol=1e-6)


def test_rescale_then_window_as_a_viewer_shows_it(tmp_path):
    stored = np.tile(np.arange(0, 2000, 50, dtype=np.uint16), (3, 1))
    # the window (in rescaled units, 0..2000) covers stored values 500..1500 only if the rescale is applied first
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=1000, WindowWidth=2000)
    expected = np.clip((2.0 * stored - 1000) / 2000, 0, 1)
    np.testing.assert_allclose(read_grayscale(path), expected, atol=2e-3)
    assert (read_grayscale(path) == 0).sum() == 3 * 11  # stored 0..500 are below the window: black


def test_rescale_alone_keeps_every_value(tmp_path):
    pixels = ramp12()
    path = write_dicom(tmp_path / "r.dcm", pixels, bits_stored=12, RescaleSlope=0.5, RescaleIntercept=-1024)
    np.testing.assert_allclose(read_grayscale(path), minmax(pixels.astype(float)), atol=1e-5)


def test_read_resized_of_dicom_matches_the_png_path(tmp_path):
    pixels = ramp12((40, 30))
    dcm = write_dicom(tmp_path / "x.dcm", pixels, bits_stored=12)
    png = tmp_path / "x.png"
    Image.fromarray(pixels).save(png)
    from_dcm, from_png = read_resized(dcm, 8), read_resized(png, 8)
    assert from_dcm.original_size == from_png.original_size == (40, 30)
    full = read_grayscale(png)  # the DICOM is scaled by the full image's range, before resizing
    expected = (from_png.values - full.min()) / (full.max() - full.min())
    np.testing.assert_allclose(from_dcm.values, expected, atol=1e-4)


# --------------------------------------------------------------------------- header, spacing, names


def test_pixel_spacing_prefers_pixel_spacing_then_imager_pixel_spacing(tmp_path):
    pixels = np.zeros((4, 4), dtype=np.uint16)
    both = write_dicom(tmp_path / "both.dcm", pixels, PixelSpacing=[0.2, 0.3], ImagerPixelSpacing=[0.25, 0.25])
    imager = write_dicom(tmp_path / "imager.dcm", pixels, ImagerPixelSpacing=[0.143, 0.15])
    neither = write_dicom(tmp_path / "neither.dcm", pixels)
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    assert pixel_spacing(both) == pytest.approx((0.2, 0.3))
    assert pixel_spacing(imager) == pytest.approx((0.143, 0.15))
    assert pixel_spacing(neither) is None
    assert pixel_spacing(png) is None


def test_extensionless_file_with_the_preamble_is_a_dicom_image(tmp_path):
    pixels = ramp12()
    path = write_dicom(tmp_path / "1000", pixels, bits_stored=12)
    other = tmp_path / "notes"
    other.write_text("not an image")
    assert is_image_file(path) and not is_image_file(other)
    assert not is_image_file(tmp_path / ".1000.dcm")
    assert read_size(path) == pixels.shape
    np.testing.assert_allclose(read_grayscale(path), minmax(pixels.astype(float)), atol=1e-5)


def test_read_size_reads_the_header_only(tmp_path):
    path = write_dicom(tmp_path / "cut.dcm", ramp12((30, 40)), bits_stored=12)
    path.write_bytes(path.read_bytes()[:-100])  # the pixel data is cut short; the header is intact
    assert read_size(path) == (30, 40)
    with pytest.raises(ImageReadError) as caught:
        read_grayscale(path)
    assert str(path) in str(caught.value)


# --------------------------------------------------------------------------- masks


def test_dicom_mask_is_lung_where_not_zero(tmp_path):
    mask = np.zeros((20, 16), dtype=np.uint8)
    mask[5:15, 4:12] = 1
    path = write_dicom(tmp_path / "mask.dcm", mask)
    np.testing.assert_array_equal(read_mask(path), mask)
    small = read_resized(path, 8, is_mask=True)
    assert small.original_size == (20, 16) and small.levels == 2
    assert small.values[4, 4] == 1.0 and small.values[0, 0] == 0.0


def test_monochrome1_dicom_mask_is_refused_clearly(tmp_path):
    path = write_dicom(tmp_path / "mask1.dcm", np.zeros((8, 8), np.uint8), "MONOCHROME1")
    with pytest.raises(ImageReadError) as caught:
        read_mask(path)
    message = str(caught.value)
    assert str(path) in message and "MONOCHROME2" in message and "PNG" in message


# --------------------------------------------------------------------------- compressed and broken files


def test_compressed_file_without_a_decoder_names_the_syntax_and_what_to_install(tmp_path):
    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder (pylibjpeg or gdcm) is installed")
    path = write_dicom(tmp_path / "lossless.dcm", np.zeros((8, 8), np.uint16), syntax=JPEGLosslessSV1,
                       pixel_data=encapsulate([b"\xff\xd8 not really JPEG \xff\xd9"]))
    with pytest.raises(ImageReadError) as caught:
        read_grayscale(path)
    message = str(caught.value)
    assert str(path) in message
    assert "JPEG Lossless" in message and str(JPEGLosslessSV1) in message
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in message
    assert read_size(path) == (8, 8)  # the header alone is still readable


def test_jpeg_baseline_dicom_is_decoded_like_the_same_jpeg(tmp_path):
    if not get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG Baseline decoder for pydicom")
    pixels = np.tile(np.linspace(0, 255, 16), (16, 1)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    jpeg = tmp_path / "x.jpg"
    jpeg.write_bytes(buffer.getvalue())
    path = write_dicom(tmp_path / "x.dcm", pixels, syntax=JPEGBaseline8Bit, pixel_data=encapsulate([buffer.getvalue()]))
    np.testing.assert_allclose(read_grayscale(path), read_grayscale(jpeg), atol=2 / 255)


def test_broken_dicom_files_are_named_errors(tmp_path):
    text = tmp_path / "text.dcm"
    text.write_text("this is not a DICOM file")
    no_pixels = write_dicom(tmp_path / "nopixels.dcm", np.zeros((4, 4), np.uint16))
    header_only = dcmread(no_pixels)
    del header_only.PixelData
    header_only.save_as(no_pixels)
    frames = write_dicom(tmp_path / "frames.dcm", np.zeros((8, 4), np.uint8), NumberOfFrames=2)
    for path, reason in [(text, "not a DICOM file"), (no_pixels, "no pixel data"), (frames, "2 frames")]:
        with pytest.raises(ImageReadError) as caught:
            read_grayscale(path)
        assert str(path) in str(caught.value) and reason in str(caught.value)
    with pytest.raises(ImageReadError, match="absent.dcm"):
        read_size(tmp_path / "absent.dcm")


def test_dicom_over_the_pixel_limit_is_refused_from_its_header(tmp_path, restore_max_pixels):
    path = write_dicom(tmp_path / "big.dcm", np.zeros((30, 40), np.uint16))
    set_max_pixels(1000)
    for read in (read_grayscale, read_size):
        with pytest.raises(ImageReadError) as caught:
            read(path)
        message = str(caught.value)
        assert str(path) in message and "40x30" in message and "1,000" in message and "--max-pixels" in message


# --------------------------------------------------------------------------- in a data folder


def _dicom_folder(root, n: int = 2):
    """image/<id>.dcm (the first one without an extension) with mask/<id>.png, upright rectangles."""
    (root / "image").mkdir(parents=True)
    (root / "mask").mkdir()
    mask = np.zeros((40, 30), np.uint8)
    mask[10:30, 8:22] = 255
    for k in range(n):
        name = str(1000 + k) if k == 0 else f"{1000 + k}.dcm"
        write_dicom(root / "image" / name, ramp12((40, 30)), bits_stored=12, PixelSpacing=[0.2, 0.2])
        Image.fromarray(mask).save(root / "mask" / f"{1000 + k}.png")
    return root


def test_dicom_images_pair_with_png_masks(tmp_path):
    root = _dicom_folder(tmp_path / "data", n=2)
    pairs = list_pairs(find_layout(root))
    assert pairs["id"].tolist() == ["1000", "1001"]
    assert [p.name for p in pairs["image_path"]] == ["1000", "1001.dcm"]


def test_check_and_preprocess_read_a_dicom_folder(tmp_path, capsys):
    root = _dicom_folder(tmp_path / "data", n=2)
    scan = scan_folder(root, SETTINGS)
    assert scan.findings == [] and len(scan.pairs) == 2
    images, masks, index = preprocess_folder(root, SETTINGS)
    assert images.shape == masks.shape == (2, 16, 16)
    assert index["height"].tolist() == [40, 40] and index["width"].tolist() == [30, 30]
    assert 0.15 < masks.mean() < 0.35
    assert cli(["check", str(root), "--params", str(tmp_path / "none.yaml")]) == 0
    assert "2 usable pairs, 0 error(s), 0 warning(s)" in capsys.readouterr().out


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit VR", "explicit VR"])
def test_a_dcm_without_the_preamble_is_read_as_pydicom_reads_it_with_force(tmp_path, implicit):
    import pydicom

    pixels = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    full = write_dicom(tmp_path / "full.dcm", pixels)
    dataset = pydicom.dcmread(full)
    dataset.file_meta, dataset.preamble = FileMetaDataset(), None
    bare = tmp_path / "bare.dcm"  # what raw and older writers leave: data elements, no preamble, no file meta
    dataset.save_as(bare, enforce_file_format=False, implicit_vr=implicit, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_grayscale(bare), read_grayscale(full))


def test_a_dcm_that_holds_no_dicom_at_all_is_still_not_a_dicom_file(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("these are notes, not an X-ray\n" * 20)
    with pytest.raises(ImageReadError, match="not a DICOM file"):
        read_grayscale(path)

"""Tests for lungseg.data.images: every PNG/JPEG/TIFF/BMP mode to float32 greyscale in [0, 1], masks as
labelling tools write them, EXIF orientation and the pixel limit (DICOM: tests/test_dicom.py)."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lungseg.core.errors import ImageReadError
from lungseg.data.images import (
    DEFAULT_MAX_PIXELS,
    is_image_file,
    read_grayscale,
    read_mask,
    read_resized,
    read_size,
    set_max_pixels,
)


def _check(values: np.ndarray, shape: tuple[int, int]) -> None:
    assert values.dtype == np.float32
    assert values.shape == shape
    assert values.min() >= 0.0 and values.max() <= 1.0


def _luma(r, g, b) -> float:
    """ITU-R 601 luma on the 0..1 scale."""
    return (0.299 * r + 0.587 * g + 0.114 * b) / 255


def test_mode_L_values_are_divided_by_255(tmp_path):
    pixels = np.array([[0, 51, 255], [128, 1, 204]], dtype=np.uint8)
    path = tmp_path / "l.png"
    Image.fromarray(pixels, mode="L").save(path)
    values = read_grayscale(path)
    _check(values, (2, 3))
    np.testing.assert_allclose(values, pixels / 255.0, atol=1e-7)


def test_mode_1_bilevel_reads_as_0_and_1(tmp_path):
    image = Image.new("1", (3, 2), 0)
    image.putpixel((1, 0), 1)
    image.putpixel((2, 1), 1)
    path = tmp_path / "bilevel.png"
    image.save(path)
    assert Image.open(path).mode == "1"
    values = read_grayscale(path)
    _check(values, (2, 3))
    np.testing.assert_array_equal(values, [[0, 1, 0], [0, 0, 1]])


def test_mode_LA_drops_alpha(tmp_path):
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (200, 0))  # fully transparent, but the grey value is what counts
    image.putpixel((1, 0), (50, 255))
    path = tmp_path / "la.png"
    image.save(path)
    assert Image.open(path).mode == "LA"
    values = read_grayscale(path)
    _check(values, (1, 2))
    np.testing.assert_allclose(values, [[200 / 255, 50 / 255]], atol=1e-6)


def test_palette_reads_the_palette_colour_not_the_index(tmp_path):
    image = Image.new("P", (3, 1))
    # index 0 -> black, 1 -> white, 2 -> pure blue
    image.putpalette([0, 0, 0, 255, 255, 255, 0, 0, 255] + [0] * (256 * 3 - 9))
    image.putdata([0, 1, 2])
    path = tmp_path / "palette.png"
    image.save(path)
    assert Image.open(path).mode == "P"
    values = read_grayscale(path)
    _check(values, (1, 3))
    # index 1 must be white (1.0), not 1/255; blue is 0.114 * 255 / 255 ~ 0.114
    np.testing.assert_allclose(values, [[0.0, 1.0, _luma(0, 0, 255)]], atol=1.5 / 255)


def test_mode_RGB_uses_luma(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (10, 20, 30)]
    image = Image.new("RGB", (len(colours), 1))
    image.putdata(colours)
    path = tmp_path / "rgb.png"
    image.save(path)
    values = read_grayscale(path)
    _check(values, (1, len(colours)))
    np.testing.assert_allclose(values[0], [_luma(*c) for c in colours], atol=1.5 / 255)


def test_mode_RGBA_drops_alpha(tmp_path):
    image = Image.new("RGBA", (2, 1))
    image.putdata([(255, 255, 255, 0), (0, 255, 0, 128)])
    path = tmp_path / "rgba.png"
    image.save(path)
    assert Image.open(path).mode == "RGBA"
    values = read_grayscale(path)
    _check(values, (1, 2))
    np.testing.assert_allclose(values[0], [1.0, _luma(0, 255, 0)], atol=1.5 / 255)


def test_16_bit_png_is_scaled_by_65535_not_clipped(tmp_path):
    pixels = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I")
    values = read_grayscale(path)
    _check(values, (2, 2))
    assert values[1, 0] == pytest.approx(1.0)
    assert values[0, 1] == pytest.approx(0.5, abs=1e-4)
    assert values[1, 1] == pytest.approx(1000 / 65535, rel=1e-5)  # not 1.0 (clipped to 255) nor 1000/255
    assert values[0, 0] == 0.0


def test_dark_16_bit_png_keeps_its_16_bit_scale(tmp_path):
    """A 16-bit file whose values all happen to be <= 255 is still a 16-bit file."""
    pixels = np.array([[0, 100, 200]], dtype=np.uint16)
    path = tmp_path / "dark16.png"
    Image.fromarray(pixels).save(path)
    values = read_grayscale(path)
    np.testing.assert_allclose(values, pixels / 65535.0, rtol=1e-5)


def test_jpeg_greyscale_within_compression_tolerance(tmp_path):
    pixels = np.full((16, 16), 200, dtype=np.uint8)
    pixels[:, 8:] = 40
    path = tmp_path / "grey.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    values = read_grayscale(path)
    _check(values, (16, 16))
    # away from the edge between the two halves, JPEG keeps a flat block within a few levels
    assert abs(values[4, 2] - 200 / 255) < 4 / 255
    assert abs(values[4, 13] - 40 / 255) < 4 / 255


def test_jpeg_rgb_within_compression_tolerance(tmp_path):
    image = Image.new("RGB", (16, 8), (255, 0, 0))
    image.paste((0, 0, 255), (8, 0, 16, 8))
    path = tmp_path / "colour.jpeg"
    image.save(path, quality=95)
    assert Image.open(path).mode == "RGB"
    values = read_grayscale(path)
    _check(values, (8, 16))
    assert abs(values[4, 2] - _luma(255, 0, 0)) < 6 / 255
    assert abs(values[4, 13] - _luma(0, 0, 255)) < 6 / 255


def test_read_size_is_height_then_width(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (40, 30)).save(path)  # PIL size is (width, height)
    assert read_size(path) == (30, 40)
    assert read_grayscale(path).shape == (30, 40)


def test_truncated_png_raises_image_read_error_naming_the_file(tmp_path):
    path = tmp_path / "truncated.png"
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(path)  # noise barely compresses, so cutting the file loses pixel data
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as caught:
        read_grayscale(path)
    assert str(path) in str(caught.value)


def test_non_image_named_png_raises_image_read_error_naming_the_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError) as caught:
        read_grayscale(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ImageReadError) as caught:
        read_size(path)
    assert str(path) in str(caught.value)


def test_missing_file_raises_image_read_error(tmp_path):
    path = tmp_path / "absent.png"
    with pytest.raises(ImageReadError, match="absent.png"):
        read_grayscale(path)


def _png_header_only(path, width: int, height: int) -> None:
    """A tiny PNG file whose header claims width x height 8-bit grey pixels (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_an_image_read_error_in_read_grayscale(tmp_path):
    path = tmp_path / "bomb.png"
    _png_header_only(path, 20000, 20000)  # 400 Mpx: over Pillow's 179 Mpx limit
    with pytest.raises(ImageReadError) as caught:
        read_grayscale(path)
    assert str(path) in str(caught.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_an_image_read_error_in_read_size(tmp_path):
    path = tmp_path / "bomb.png"
    _png_header_only(path, 20000, 20000)
    with pytest.raises(ImageReadError) as caught:
        read_size(path)
    assert str(path) in str(caught.value)


# --------------------------------------------------------------------------- TIFF and BMP


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".bmp", ".TIF"])
def test_tiff_and_bmp_read_as_the_same_png(tmp_path, suffix):
    pixels = np.array([[0, 51, 255], [128, 1, 204]], dtype=np.uint8)
    png, other = tmp_path / "x.png", tmp_path / f"x{suffix}"
    Image.fromarray(pixels).save(png)
    Image.fromarray(pixels).save(other, format="BMP" if suffix == ".bmp" else "TIFF")
    assert is_image_file(other)
    np.testing.assert_array_equal(read_grayscale(other), read_grayscale(png))
    np.testing.assert_array_equal(read_resized(other, 4).values, read_resized(png, 4).values)


def test_16_bit_tiff_is_scaled_by_65535(tmp_path):
    pixels = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    path = tmp_path / "sixteen.tif"
    Image.fromarray(pixels).save(path)
    np.testing.assert_allclose(read_grayscale(path), pixels / 65535.0, rtol=1e-6)


def test_is_image_file_by_suffix_and_name(tmp_path):
    for name in ["a.png", "b.JPG", "c.jpeg", "d.tif", "e.tiff", "f.bmp", "g.dcm", "h.DCM"]:
        assert is_image_file(tmp_path / name), name
    for name in ["notes.txt", "Thumbs.db", ".DS_Store", "._a.png", ".hidden.dcm"]:
        assert not is_image_file(tmp_path / name), name
    (tmp_path / "plain").write_bytes(b"\x00" * 200)  # no extension, no DICOM preamble
    assert not is_image_file(tmp_path / "plain")


# --------------------------------------------------------------------------- masks as labelling tools write them


def _rect(shape=(8, 10)) -> np.ndarray:
    lung = np.zeros(shape, dtype=bool)
    lung[2:6, 3:8] = True
    return lung


def test_palette_mask_is_read_by_index_not_by_colour(tmp_path):
    lung = _rect()
    image = Image.fromarray(lung.astype(np.uint8)).convert("P")
    image.putpalette([0, 0, 0, 128, 0, 0] + [0] * (254 * 3))  # index 1: dark red, grey value 38: under any threshold
    path = tmp_path / "palette.png"
    image.save(path)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_mask(path), lung)
    small = read_resized(path, 10, is_mask=True)
    assert small.colours == 1 and small.levels == 2
    assert small.values[3, 5] == 1.0 and small.values[0, 0] == 0.0


@pytest.mark.parametrize("lung_colour", [(1, 1, 1), (255, 255, 255), (255, 0, 0), (0, 0, 90)])
def test_rgb_mask_is_lung_wherever_a_channel_is_not_zero(tmp_path, lung_colour):
    lung = _rect()
    pixels = np.zeros((*lung.shape, 3), dtype=np.uint8)
    pixels[lung] = lung_colour
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    np.testing.assert_array_equal(read_mask(path), lung)
    grey = tmp_path / "grey.png"
    Image.fromarray(lung.astype(np.uint8) * 255).save(grey)
    small, expected = read_resized(path, 4, is_mask=True), read_resized(grey, 4, is_mask=True)
    np.testing.assert_array_equal(small.values, expected.values)
    assert small.colours == 1


def test_rgba_mask_whose_alpha_alone_varies_is_read_by_its_alpha(tmp_path):
    lung = _rect()
    pixels = np.zeros((*lung.shape, 4), dtype=np.uint8)
    pixels[..., 0] = 255  # red everywhere; only the alpha draws the lung
    pixels[..., 3] = lung * 255
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels).save(path)
    np.testing.assert_array_equal(read_mask(path), lung)


def test_rgba_mask_on_a_transparent_white_background(tmp_path):
    lung = _rect()
    pixels = np.full((*lung.shape, 4), 255, dtype=np.uint8)
    pixels[..., 3] = 0  # transparent white: background
    pixels[lung] = (0, 200, 0, 255)
    path = tmp_path / "rgba.png"
    Image.fromarray(pixels).save(path)
    np.testing.assert_array_equal(read_mask(path), lung)


def test_colour_mask_with_several_colours_counts_them(tmp_path):
    pixels = np.zeros((8, 10, 3), dtype=np.uint8)
    pixels[2:6, 1:4] = (255, 0, 0)  # right lung red
    pixels[2:6, 6:9] = (0, 255, 0)  # left lung green
    path = tmp_path / "two.png"
    Image.fromarray(pixels).save(path)
    small = read_resized(path, 10, is_mask=True)
    assert small.colours == 2
    assert read_mask(path).sum() == 2 * 4 * 3  # both count as lung


def test_grey_masks_are_read_as_before(tmp_path):
    lung = _rect()
    for name, pixels in [("l255.png", lung.astype(np.uint8) * 255), ("l01.png", lung.astype(np.uint8)),
                         ("i16.png", lung.astype(np.uint16) * 65535), ("i16_01.png", lung.astype(np.uint16))]:
        Image.fromarray(pixels).save(tmp_path / name)
        np.testing.assert_array_equal(read_mask(tmp_path / name), lung, err_msg=name)
        assert read_resized(tmp_path / name, 4, is_mask=True).colours == 0


def test_a_label_map_counts_every_label_as_lung_and_says_so(tmp_path):
    # what annotation tools and np.uint8 label arrays export: 1 = right lung, 2 = left lung
    labels = np.zeros((8, 10), np.uint8)
    labels[2:6, 1:4], labels[2:6, 6:9] = 1, 2
    for name, pixels in [("labels8.png", labels), ("labels16.png", labels.astype(np.uint16))]:
        Image.fromarray(pixels).save(tmp_path / name)
        np.testing.assert_array_equal(read_mask(tmp_path / name), labels > 0, err_msg=name)
        small = read_resized(tmp_path / name, 10, is_mask=True)
        assert small.rule == "labels 1, 2 read as lung" and small.levels == 2
        assert small.values[:, :5].max() == 1.0 and small.values[:, 5:].max() == 1.0  # both lungs


def test_a_16_bit_mask_holding_0_and_255_is_read_as_8_bit(tmp_path):
    lung = _rect()
    path = tmp_path / "cv2.png"  # cv2.imwrite of a uint16 0/255 array: a 16-bit PNG
    Image.fromarray(lung.astype(np.uint16) * 255).save(path)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(read_mask(path), lung)  # 255/65535 would fall under every threshold
    small = read_resized(path, 10, is_mask=True)
    assert "values 0..255 read as 8-bit" in small.rule and small.values.max() == 1.0


def test_grey_levels_are_not_mistaken_for_labels(tmp_path):
    soft = (np.linspace(0, 255, 80).reshape(8, 10)).astype(np.uint8)  # a soft-edged mask spans 0..255
    Image.fromarray(soft).save(tmp_path / "soft.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "soft.png"), soft > 127)
    assert read_resized(tmp_path / "soft.png", 10, is_mask=True).rule == ""
    faint = np.where(_rect(), 20, 0).astype(np.uint8)  # above MAX_LABEL: a grey level, under the threshold
    Image.fromarray(faint).save(tmp_path / "faint.png")
    assert read_mask(tmp_path / "faint.png").sum() == 0


# --------------------------------------------------------------------------- EXIF orientation


def _save_rotated_jpeg(path, upright: np.ndarray, orientation: int = 6) -> None:
    """Save `upright` as a JPEG stored turned 90 degrees anticlockwise, tagged so that viewers turn it back."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.rot90(upright, 1).copy()).save(path, quality=95, exif=exif)


def test_exif_orientation_is_applied_everywhere(tmp_path):
    upright = np.zeros((40, 24), dtype=np.uint8)
    upright[:10, :8] = 255  # a bright block at the top left, as a viewer shows it
    path = tmp_path / "turned.jpg"
    _save_rotated_jpeg(path, upright)
    assert Image.open(path).size == (40, 24)  # stored 24 high and 40 wide
    assert read_size(path) == (40, 24)
    full = read_grayscale(path)
    assert full.shape == (40, 24) and full[:10, :8].mean() > 0.9 and full[20:, 12:].mean() < 0.1
    small = read_resized(path, 8)
    assert small.original_size == (40, 24) and small.orientation == 6
    assert small.values[0, 0] > 0.9 and small.values[-1, -1] < 0.1
    mask = read_mask(path)
    assert mask.shape == (40, 24) and mask[:10, :8].all()


def test_upright_image_has_orientation_1(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.fromarray(np.zeros((8, 4), np.uint8)).save(path)
    assert read_resized(path, 4).orientation == 1


# --------------------------------------------------------------------------- the pixel limit


def test_image_over_the_pixel_limit_names_file_size_limit_and_the_way_out(tmp_path, restore_max_pixels):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(path)
    set_max_pixels(1000)
    for read in (read_grayscale, read_size, lambda p: read_resized(p, 8), read_mask):
        with pytest.raises(ImageReadError) as caught:
            read(path)
        message = str(caught.value)
        assert str(path) in message and "40x30" in message and "1,200" in message and "1,000" in message
        assert "--max-pixels N (lungseg commands) or preprocess.max_pixels in params.yaml" in message
    set_max_pixels(DEFAULT_MAX_PIXELS)
    assert read_size(path) == (30, 40)


def test_pillow_never_warns_under_lungsegs_limit(tmp_path):
    path = tmp_path / "large.png"
    _png_header_only(path, 14000, 14000)  # 196 Mpx: over Pillow's own 89 Mpx warning, under lungseg's limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        assert read_size(path) == (14000, 14000)


def test_decompression_bomb_message_is_lungsegs_not_pillows(tmp_path):
    path = tmp_path / "bomb.png"
    _png_header_only(path, 20000, 20000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageReadError) as caught:
            read_grayscale(path)
    assert str(path) in str(caught.value) and "--max-pixels" in str(caught.value)
    assert "decompression bomb DOS attack" not in str(caught.value)


def test_set_max_pixels_refuses_a_nonsense_limit():
    for limit in (0, -5, 2.5, True):
        with pytest.raises(ValueError):
            set_max_pixels(limit)


# --------------------------------------------------------------------------- corrupt TIFF and BMP files


def _encoded(fmt: str, mode: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (int(rng.integers(1, 30)), int(rng.integers(1, 30))), dtype=np.uint8))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["TIFF", "BMP"]), mode=st.sampled_from(["L", "RGB", "1", "P"]), seed=st.integers(0, 2**16),
       cut=st.floats(0.0, 0.95), flips=st.lists(st.integers(0, 10**6), max_size=6))
def test_corrupt_tiff_and_bmp_read_or_fail_with_a_named_error(tmp_path, fmt, mode, seed, cut, flips):
    data = bytearray(_encoded(fmt, mode, seed))
    data = data[: max(1, int(len(data) * cut))] if cut > 0 else data
    for position in flips:
        data[position % len(data)] ^= 0xFF
    path = tmp_path / ("broken.tif" if fmt == "TIFF" else "broken.bmp")
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the corrupt TIFF tags it skips
        try:
            small = read_resized(path, 8, is_mask=bool(seed % 2))
        except ImageReadError as error:
            assert str(path) in str(error)
        else:
            assert small.values.shape == (8, 8) and 0 <= small.values.min() and small.values.max() <= 1


def test_a_zip_among_images_is_called_a_zip_not_an_unidentified_file(tmp_path):
    import zipfile

    path = tmp_path / "scans.png"  # what a mis-named download looks like
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.txt", "hello")
    with pytest.raises(ImageReadError, match=r"scans.png: not an image lungseg reads: it is a zip archive, not a picture"):
        read_grayscale(path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="the file is empty"):
        read_grayscale(empty)


def test_lung_labels_choose_which_labels_of_a_label_map_are_lung(tmp_path):
    labels = np.zeros((8, 12), np.uint8)
    labels[2:6, 1:4], labels[2:6, 8:11], labels[3:5, 5:7] = 1, 2, 3  # 3: the heart
    path = tmp_path / "organs.png"
    Image.fromarray(labels).save(path)
    np.testing.assert_array_equal(read_mask(path), labels > 0)  # by default every label is lung
    np.testing.assert_array_equal(read_mask(path, lung_labels=(1, 2)), np.isin(labels, (1, 2)))
    small = read_resized(path, 12, is_mask=True, lung_labels=(1, 2))
    assert small.rule == "labels 1, 2 read as lung, 3 as background (data.lung_labels)"
    assert read_resized(path, 12, is_mask=True).rule == "labels 1, 2, 3 read as lung"

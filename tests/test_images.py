"""Tests for lungseg.data.images: every PNG/JPEG mode to float32 greyscale in [0, 1]."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lungseg.data.images import ImageReadError, read_grayscale, read_size


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

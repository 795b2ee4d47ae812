"""Property-based fuzzing of the image reader: any size, any mode, any corruption gives either a
valid array or an ImageReadError naming the file, never another exception."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from lungseg.core.errors import ImageReadError
from lungseg.data.images import read_grayscale, read_resized

MODES = ["L", "LA", "P", "RGB", "RGBA", "I;16", "1"]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def encoded(mode: str, height: int, width: int, seed: int, fmt: str) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).convert(mode)
    if fmt == "JPEG" and mode not in ("L", "RGB"):
        image = image.convert("L")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


images = st.builds(encoded, st.sampled_from(MODES), st.integers(1, 70), st.integers(1, 70),
                   st.integers(0, 2**16), st.sampled_from(["PNG", "JPEG"]))


@FUZZ
@given(data=images, size=st.sampled_from([8, 16]), is_mask=st.booleans())
def test_valid_files_of_any_mode_and_size_read_into_range(tmp_path, data, size, is_mask):
    path = tmp_path / "x.png"
    path.write_bytes(data)
    full = read_grayscale(path)
    assert full.dtype == np.float32 and 0 <= full.min() and full.max() <= 1
    small = read_resized(path, size, is_mask=is_mask)
    assert small.values.shape == (size, size)
    assert np.isfinite(small.values).all() and small.values.min() >= 0 and small.values.max() <= 1
    assert small.original_size == full.shape


@FUZZ
@given(data=images, cut=st.floats(0.0, 0.95), flips=st.lists(st.integers(0, 10**6), max_size=8))
@example(data=encoded("RGB", 4, 10, 0, "PNG"), cut=0.0, flips=[36])  # a broken chunk: Pillow raised SyntaxError
def test_corrupted_files_read_or_fail_with_a_named_error(tmp_path, data, cut, flips):
    broken = bytearray(data[: max(1, int(len(data) * cut))] if cut > 0 else data)
    for position in flips:
        broken[position % len(broken)] ^= 0xFF
    path = tmp_path / "broken.png"
    path.write_bytes(bytes(broken))
    try:
        small = read_resized(path, 8)
    except ImageReadError as error:
        assert str(path) in str(error)
    else:
        assert small.values.shape == (8, 8)


@FUZZ
@given(junk=st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_other_exceptions(tmp_path, junk):
    path = tmp_path / "junk.jpg"
    path.write_bytes(junk)
    try:
        read_grayscale(path)
    except ImageReadError as error:
        assert "junk.jpg" in str(error)

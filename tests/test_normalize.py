"""Tests for lungseg.data.normalize (preprocess.normalize) and for the setting's journey: the
preprocess stage's arrays, the images predict prepares, checkpoints and exports all agree."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from lungseg.core import config
from lungseg.core.config import PreprocessConfig
from lungseg.core.errors import LungsegError, ParamsError
from lungseg.data.normalize import clahe, equalize, minmax, normalize_image, percentile_stretch
from lungseg.data.preprocess import preparation, prepare_image, preprocess_folder
from lungseg.data.processed import load_processed, save_processed
from lungseg.inference.formats import metadata, parse_metadata
from lungseg.model.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from lungseg.model.unet import UNet

SIZE = 32
METHODS = ["minmax", "percentile", "equalize", "clahe", "none"]


def settings(**overrides) -> PreprocessConfig:
    return PreprocessConfig(**{"image_size": SIZE, "workers": 1, **overrides})


def _needs_opencv(method: str) -> None:
    if method == "clahe":
        pytest.importorskip("cv2", reason="clahe needs OpenCV: pip install -e '.[clahe]'")


def labelled_xray(size: int = 64) -> np.ndarray:
    """A dim, low-contrast 'X-ray' (values 0.2..0.5, a smooth ramp) with a small burned-in label
    at full brightness in one corner (under 1 % of the pixels)."""
    rows, cols = np.mgrid[0:size, 0:size] / (size - 1)
    image = 0.2 + 0.3 * (rows + cols) / 2
    image[1:4, 1:4] = 1.0
    return image


# --------------------------------------------------------------------------- the methods


def test_percentile_ignores_a_small_bright_label_that_sets_the_minmax_stretch():
    image = labelled_xray()
    body = np.ones(image.shape, dtype=bool)
    body[1:4, 1:4] = False
    stretched, plain = percentile_stretch(image, 1.0, 99.0), minmax(image)
    # min-max: the label takes 255 and the body only reaches about half of the range
    assert plain[body].max() < 140
    # percentile: the body spans (almost) the whole range; the label is clipped to white
    assert stretched[body].min() <= 5 and stretched[body].max() >= 250
    assert np.all(stretched[~body] == 255)


def test_percentile_0_to_100_is_minmax():
    image = labelled_xray()
    np.testing.assert_array_equal(percentile_stretch(image, 0.0, 100.0), minmax(image))


def test_equalize_makes_the_histogram_roughly_flat_whatever_the_contrast():
    skewed = np.random.default_rng(0).random((64, 64)) ** 4  # most pixels dark
    assert np.histogram(minmax(skewed), bins=8, range=(0, 256))[0].max() > 0.4 * skewed.size
    counts = np.histogram(equalize(skewed), bins=8, range=(0, 256))[0] / skewed.size
    np.testing.assert_allclose(counts, 1 / 8, atol=0.01)


def test_equalize_keeps_the_order_of_grey_levels_and_spans_the_range():
    image = labelled_xray()
    out = equalize(image).astype(int)
    order = np.argsort(image, axis=None, kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= 0)  # brighter in, never darker out
    assert out.min() == 0 and out.max() == 255


@pytest.mark.parametrize("method", METHODS)
def test_a_constant_image_gives_a_constant_array(method):
    _needs_opencv(method)
    out = normalize_image(np.full((SIZE, SIZE), 0.4), settings(normalize=method))
    assert out.dtype == np.uint8 and out.shape == (SIZE, SIZE)
    assert len(np.unique(out)) == 1


def test_clahe_raises_local_contrast_in_a_dim_region():
    pytest.importorskip("cv2", reason="clahe needs OpenCV: pip install -e '.[clahe]'")
    rng = np.random.default_rng(0)
    image = np.full((64, 64), 0.9)
    image[:, :32] = 0.1 + 0.05 * rng.random((64, 32))  # a dark, nearly flat left half with faint texture
    left_before = minmax(image)[:, 8:24].std()
    left_after = clahe(image, 2.0, 4)[:, 8:24].std()
    assert left_after > 2 * left_before


def test_clahe_without_opencv_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # what `import cv2` finds when OpenCV is not installed
    with pytest.raises(LungsegError, match=r"clahe needs OpenCV.*pip install -e '\.\[clahe\]'"):
        normalize_image(labelled_xray(), settings(normalize="clahe"))


def test_a_folder_is_not_read_for_clahe_without_opencv(tmp_path, write_pair_folder, monkeypatch):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=1)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(LungsegError, match="clahe needs OpenCV"):
        preprocess_folder(folder.root, settings(normalize="clahe"))


# --------------------------------------------------------------------------- bad params


@pytest.mark.parametrize("section, problem", [
    ({"normalize": "zscore"}, "preprocess.normalize"),
    ({"percentile_low": 99, "percentile_high": 1}, "preprocess.percentile_low=99: must be below preprocess.percentile_high"),
    ({"percentile_low": 5, "percentile_high": 5}, "preprocess.percentile_low=5: must be below"),
    ({"percentile_high": 150}, "preprocess.percentile_high"),
    ({"clahe_clip_limit": 0}, "preprocess.clahe_clip_limit"),
    ({"clahe_tiles": 0}, "preprocess.clahe_tiles"),
    ({"image_size": 16, "clahe_tiles": 32}, "preprocess.clahe_tiles=32: must be at most preprocess.image_size"),
])
def test_bad_normalisation_params_are_a_params_error_naming_the_key(section, problem):
    with pytest.raises(ParamsError, match=problem.replace(".", r"\.").replace("[", r"\[")):
        config.load({"preprocess": section}, "preprocess")


# --------------------------------------------------------------------------- one recipe everywhere


def _labelled_folder(tmp_path, write_pair_folder):
    """Pairs whose images carry a bright label, so that every method gives a different array."""
    from PIL import Image

    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2, size=(48, 40))
    for k, path in enumerate(folder.image_paths.values()):
        image = (labelled_xray(48)[:, :40] * 255).astype(np.uint8) + k
        Image.fromarray(image).save(path)
    return folder


@pytest.mark.parametrize("method", METHODS)
def test_training_arrays_and_predict_inputs_are_identical(method, tmp_path, write_pair_folder):
    """The preprocess stage's arrays, and the images predict prepares with the settings that
    travelled through settings.json and the checkpoint, are the same arrays."""
    _needs_opencv(method)
    folder = _labelled_folder(tmp_path, write_pair_folder)
    chosen = settings(normalize=method, percentile_low=2.0, percentile_high=97.0, clahe_tiles=4)
    images, masks, index = preprocess_folder(folder.root, chosen)
    save_processed(images, masks, index, preparation(chosen), tmp_path / "processed")
    stored = load_processed(tmp_path / "processed").settings
    model_args = {"depth": 1, "base_width": 2}
    save_checkpoint(make_checkpoint(UNet(**model_args), model_args, stored, 0.5), tmp_path / "model.pth")
    travelled = PreprocessConfig(**load_checkpoint(tmp_path / "model.pth")["preprocess"])  # as predict builds it
    assert travelled.normalize == method
    for k, id_ in enumerate(index["id"]):
        predicted_input, _ = prepare_image(folder.image_paths[id_], travelled)
        np.testing.assert_array_equal(predicted_input, images[k])


def test_the_methods_give_different_arrays(tmp_path, write_pair_folder):
    pytest.importorskip("cv2", reason="clahe needs OpenCV: pip install -e '.[clahe]'")
    folder = _labelled_folder(tmp_path, write_pair_folder)
    arrays = {m: preprocess_folder(folder.root, settings(normalize=m))[0] for m in METHODS}
    assert len({a.tobytes() for a in arrays.values()}) == len(METHODS)


def _checkpoint_with(preprocess: dict, path) -> dict:
    model_args = {"depth": 1, "base_width": 2}
    save_checkpoint(make_checkpoint(UNet(**model_args), model_args, preprocess, 0.5), path)
    return load_checkpoint(path)


def test_a_checkpoint_from_before_the_option_loads_as_minmax(tmp_path):
    checkpoint = _checkpoint_with({"image_size": SIZE, "mask_threshold": 127}, tmp_path / "old.pth")
    assert checkpoint["preprocess"]["normalize"] == "minmax"
    # and it stays minmax whatever params.yaml's default becomes
    assert PreprocessConfig(**checkpoint["preprocess"]).normalize == "minmax"


def test_an_export_from_before_the_option_loads_as_minmax():
    text = json.dumps({"threshold": 0.5, "postprocess": "none", "model": {}, "preprocess": {"image_size": SIZE}})
    assert parse_metadata(text, "old.ts")["preprocess"]["normalize"] == "minmax"


def test_the_normalisation_travels_into_export_metadata(tmp_path):
    stored = {"image_size": SIZE, "normalize": "percentile", "percentile_low": 2.0, "percentile_high": 97.0}
    checkpoint = _checkpoint_with(stored, tmp_path / "model.pth")
    document = parse_metadata(json.dumps(metadata(checkpoint)), "model.onnx")
    assert document["preprocess"] == stored

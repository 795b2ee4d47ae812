"""Tests for lungseg.predict: `lungseg predict MODEL INPUT... --out DIR`, run in-process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lungseg.checkpoint import make_checkpoint, save_checkpoint
from lungseg.cli import main
from lungseg.config import PreprocessConfig
from lungseg.data.preprocess import prepare_image
from lungseg.model import UNet
from lungseg.predict import (
    COLUMNS,
    list_inputs,
    load_predictor,
    lung_sides,
    unique_names,
)

SIZE = 32
MODEL_ARGS = {"depth": 2, "base_width": 4}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """An untrained tiny U-Net saved as a lungseg checkpoint (plumbing needs no skill)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    preprocess = {"image_size": SIZE, "normalize": "minmax", "mask_threshold": 127}
    save_checkpoint(make_checkpoint(UNet(**MODEL_ARGS), MODEL_ARGS, preprocess, 0.5), path)
    return path


def gradient(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A float image in [0, 1]: a bright band in the middle of a dark field, plus noise."""
    rows = np.linspace(-1, 1, height)[:, None]
    cols = np.linspace(-1, 1, width)[None, :]
    noise = np.random.default_rng(seed).uniform(0, 0.1, (height, width))
    return np.clip(np.exp(-4 * (rows**2 + cols**2)) * 0.9 + noise, 0, 1)


def write_inputs(folder):
    """Three X-rays of different sizes and modes: 8-bit L PNG, RGB JPEG, 16-bit PNG.
    Returns {file name: (height, width)}."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((gradient(40, 30) * 255).astype(np.uint8)).save(folder / "a_gray.png")
    rgb = np.repeat((gradient(50, 64, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    Image.fromarray(rgb).save(folder / "b_colour.jpg", quality=95)
    Image.fromarray((gradient(37, 45, 2) * 65535).astype(np.uint16)).save(folder / "c_wide.png")
    return {"a_gray.png": (40, 30), "b_colour.jpg": (50, 64), "c_wide.png": (37, 45)}


def splitting_threshold(model_path, sources) -> float:
    """The median lung probability the model gives these images, so that the masks are neither
    empty nor full (an untrained model is close to constant)."""
    predictor = load_predictor(model_path, "cpu")
    images = np.stack([prepare_image(s, PreprocessConfig(**predictor.preprocess))[0] for s in sources])
    return float(np.median(predictor.probabilities(images)))


def read_table(out):
    return pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)


def predict(model_path, inputs, out, *options) -> int:
    return main(["predict", str(model_path), *map(str, inputs), "--out", str(out), "--device", "cpu", "--quiet", *options])


# --------------------------------------------------------------------------- outputs


def test_masks_overlays_and_table_at_each_inputs_original_size(model_path, tmp_path):
    sizes = write_inputs(tmp_path / "in")
    sources = [str(tmp_path / "in" / name) for name in sizes]
    threshold = splitting_threshold(model_path, sources)
    # a batch of 2 over 3 images: the rows must still come out in input order
    code = predict(model_path, [tmp_path / "in"], tmp_path / "out", "--threshold", str(threshold), "--batch-size", "2")
    assert code == 0
    table = read_table(tmp_path / "out")
    assert list(table.columns) == COLUMNS
    assert table["input"].tolist() == sources
    for row, (name, (height, width)) in zip(table.itertuples(), sizes.items()):
        mask = np.asarray(Image.open(tmp_path / "out" / row.mask_file))
        overlay = Image.open(tmp_path / "out" / row.overlay_file)
        assert row.mask_file == f"masks/{name.rsplit('.', 1)[0]}.png"
        assert mask.dtype == np.uint8 and mask.shape == (height, width)
        assert set(np.unique(mask)) <= {0, 255}
        assert 0 < mask.mean() < 255, "the threshold was chosen to split the probabilities"
        assert overlay.mode == "RGB" and overlay.size == (width, height)
        assert (int(row.height), int(row.width)) == (height, width)
        assert float(row.lung_fraction) == pytest.approx((mask > 0).mean())
        sides = lung_sides(mask > 0)
        assert (int(row.right_lung_px), int(row.left_lung_px), int(row.n_components)) == (sides.right_px, sides.left_px, sides.n_components)
        assert row.error == ""


def test_overlay_paints_the_lungs_red_and_leaves_the_rest_grey(model_path, tmp_path):
    write_inputs(tmp_path / "in")
    source = tmp_path / "in" / "a_gray.png"
    threshold = splitting_threshold(model_path, [source])
    assert predict(model_path, [source], tmp_path / "out", "--threshold", str(threshold), "--alpha", "1") == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "a_gray.png")) > 0
    overlay = np.asarray(Image.open(tmp_path / "out" / "overlays" / "a_gray.png")).astype(int)
    assert (overlay[mask] == [255, 0, 0]).all()  # alpha 1: pure red where lung
    outside = overlay[~mask]
    assert (outside[:, 0] == outside[:, 1]).all() and (outside[:, 1] == outside[:, 2]).all()


def test_no_overlays_writes_masks_and_table_only(model_path, tmp_path):
    write_inputs(tmp_path / "in")
    assert predict(model_path, [tmp_path / "in" / "a_gray.png"], tmp_path / "out", "--no-overlays") == 0
    assert not (tmp_path / "out" / "overlays").exists()
    assert (tmp_path / "out" / "masks" / "a_gray.png").is_file()
    assert read_table(tmp_path / "out")["overlay_file"].tolist() == [""]


# --------------------------------------------------------------------------- failures


def test_unreadable_file_gives_an_error_row_and_exit_1_while_the_rest_are_written(model_path, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    (tmp_path / "in" / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    code = predict(model_path, [tmp_path / "in"], tmp_path / "out")
    assert code == 1
    table = read_table(tmp_path / "out")
    assert [name.rsplit("/", 1)[1] for name in table["input"]] == ["a_gray.png", "b_broken.png", "b_colour.jpg", "c_wide.png"]
    broken = table.iloc[1]
    assert "b_broken.png" in broken["error"]
    assert all(broken[column] == "" for column in COLUMNS if column not in ("input", "error"))
    assert (table.drop(index=1)["error"] == "").all()
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["a_gray.png", "b_colour.png", "c_wide.png"]
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "b_broken.png" in errors[0]


def test_missing_input_exits_2_before_anything_is_written(model_path, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    code = predict(model_path, [tmp_path / "in", tmp_path / "nowhere.png"], tmp_path / "out")
    assert code == 2
    assert "nowhere.png" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_no_images_found_exits_2(model_path, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    assert predict(model_path, [tmp_path / "empty"], tmp_path / "out") == 2
    assert "no images" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_checkpoint_exits_2(tmp_path, capsys):
    write_inputs(tmp_path / "in")
    (tmp_path / "model.pth").write_bytes(b"not a model")
    assert predict(tmp_path / "model.pth", [tmp_path / "in"], tmp_path / "out") == 2
    assert "model.pth" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_exits_2_naming_it(model_path, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    assert main(["predict", str(model_path), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert "cuda" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- inputs and names


def test_same_stem_in_two_folders_gets_distinct_outputs(model_path, tmp_path):
    for folder, seed in (("first", 0), ("second", 1)):
        (tmp_path / folder).mkdir()
        Image.fromarray((gradient(20 + 10 * seed, 24, seed) * 255).astype(np.uint8)).save(tmp_path / folder / "x.png")
    assert predict(model_path, [tmp_path / "first", tmp_path / "second"], tmp_path / "out") == 0
    table = read_table(tmp_path / "out")
    assert table["mask_file"].tolist() == ["masks/x.png", "masks/x-2.png"]
    assert table["overlay_file"].tolist() == ["overlays/x.png", "overlays/x-2.png"]
    # each mask belongs to its own input: the sizes tell them apart
    assert Image.open(tmp_path / "out" / "masks" / "x.png").size == (24, 20)
    assert Image.open(tmp_path / "out" / "masks" / "x-2.png").size == (24, 30)


def test_unique_names_never_reuse_a_taken_name_in_any_case():
    sources = ["a/x.png", "b/x.jpg", "c/X.png", "d/x-2.png", "e/y.png"]
    assert unique_names(sources) == ["x", "x-2", "X-3", "x-2-2", "y"]


def test_folders_list_sorted_images_only_and_recursive_on_request(tmp_path):
    write_inputs(tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "._a_gray.png").write_bytes(b"macOS companion file")
    write_inputs(tmp_path / "in" / "deeper")
    flat = list_inputs([str(tmp_path / "in")])
    assert [p.rsplit("/", 1)[1] for p in flat] == ["a_gray.png", "b_colour.jpg", "c_wide.png"]
    deep = list_inputs([str(tmp_path / "in")], recursive=True)
    assert len(deep) == 6 and deep[:3] == flat and all("/deeper/" in p for p in deep[3:])


def test_a_file_named_twice_is_predicted_once(tmp_path):
    write_inputs(tmp_path / "in")
    listed = list_inputs([str(tmp_path / "in" / "c_wide.png"), str(tmp_path / "in")])
    assert listed[0] == str(tmp_path / "in" / "c_wide.png") and len(listed) == 3


def test_a_recursive_rerun_does_not_segment_its_own_masks(model_path, tmp_path):
    write_inputs(tmp_path / "in")
    out = tmp_path / "in" / "predicted"
    for _ in range(2):
        assert predict(model_path, [tmp_path / "in"], out, "--recursive") == 0
    assert len(read_table(out)) == 3


# --------------------------------------------------------------------------- lung sides


def blob(mask: np.ndarray, top: int, left: int, height: int, width: int) -> int:
    mask[top:top + height, left:left + width] = 1
    return height * width


def test_the_blob_on_the_images_left_is_the_patients_right_lung():
    mask = np.zeros((40, 60), np.uint8)
    on_image_left = blob(mask, 5, 3, 30, 10)  # 300 px
    on_image_right = blob(mask, 8, 40, 20, 12)  # 240 px
    sides = lung_sides(mask)
    assert (sides.right_px, sides.left_px, sides.n_components) == (on_image_left, on_image_right, 2)
    mirrored = lung_sides(mask[:, ::-1])
    assert (mirrored.right_px, mirrored.left_px) == (on_image_right, on_image_left)


def test_only_the_two_largest_components_are_lungs():
    mask = np.zeros((40, 60), np.uint8)
    blob(mask, 0, 0, 2, 2)  # a speck in the far left corner: not a lung, though furthest left
    right = blob(mask, 5, 10, 30, 10)
    left = blob(mask, 5, 40, 30, 8)
    assert lung_sides(mask) == type(lung_sides(mask))(right, left, 3)


@pytest.mark.parametrize("left_edge, expect_right", [(2, True), (45, False)])
def test_a_single_component_goes_by_the_half_of_the_image_it_lies_in(left_edge, expect_right):
    mask = np.zeros((40, 60), np.uint8)
    size = blob(mask, 5, left_edge, 20, 10)
    sides = lung_sides(mask)
    assert (sides.right_px, sides.left_px) == ((size, 0) if expect_right else (0, size))
    assert sides.n_components == 1


def test_an_empty_mask_has_no_lungs():
    sides = lung_sides(np.zeros((10, 10), np.uint8))
    assert (sides.right_px, sides.left_px, sides.n_components) == (0, 0, 0)

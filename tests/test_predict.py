"""Tests for lungseg.inference.predict: `lungseg predict MODEL INPUT... --out DIR`, run in-process."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from scipy import ndimage
from tiny_models import tiny_estimator

from lungseg.cli import main
from lungseg.core.config import PreprocessConfig
from lungseg.data.images import IMAGE_SUFFIXES, open_image, read_resized_and_full
from lungseg.data.normalize import stretch_to_uint8
from lungseg.data.preprocess import finish_image, prepare_image
from lungseg.inference.budget import PixelBudget
from lungseg.inference.formats import load_predictor
from lungseg.inference.predict import (
    COLUMNS,
    Budgets,
    Job,
    Outputs,
    display_grey,
    grey_for_display,
    list_inputs,
    predict_all,
    unique_names,
    write_table,
)
from lungseg.model.checkpoint import make_checkpoint, save_checkpoint
from lungseg.model.unet import UNet
from lungseg.postprocessing import quality
from lungseg.postprocessing.quality import lung_pixels

SIZE = 32
MODEL_ARGS = {"depth": 2, "base_width": 4}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """An untrained tiny U-Net saved as a lungseg checkpoint (plumbing needs no skill)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    preprocess = {"image_size": SIZE, "normalize": "minmax", "mask_threshold": 127}
    estimator = tiny_estimator(SIZE).to_dict()
    save_checkpoint(make_checkpoint(UNet(**MODEL_ARGS), MODEL_ARGS, preprocess, 0.5, dice_estimator=estimator), path)
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


def fingerprint(folder) -> dict:
    """{relative path: sha256} of every file below `folder`: what a refused run must leave as it was."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_dicom(path, pixels: np.ndarray, **elements):
    """`pixels` (uint16 H x W) as a minimal single-frame MONOCHROME2 DICOM file; `elements` are
    extra attributes by keyword (PixelSpacing=[...])."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.SamplesPerPixel, dataset.PhotometricInterpretation = "DX", 1, "MONOCHROME2"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


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
        sides = lung_pixels(mask > 0)
        assert (int(row.right_lung_px), int(row.left_lung_px), int(row.n_components)) == (sides.right_px, sides.left_px, sides.n_components)
        assert row.error == ""


def test_the_table_ends_with_the_quality_columns_and_the_summary_counts_the_flagged(model_path, tmp_path, capsys):
    sizes = write_inputs(tmp_path / "in")
    sources = [str(tmp_path / "in" / name) for name in sizes]
    threshold = splitting_threshold(model_path, sources)
    assert predict(model_path, [tmp_path / "in"], tmp_path / "out", "--threshold", str(threshold)) == 0
    table = read_table(tmp_path / "out")
    earlier = ["input", "mask_file", "overlay_file", "height", "width", "lung_fraction", "right_lung_px",
               "left_lung_px", "right_lung_cm2", "left_lung_cm2", "n_components", "error"]
    assert list(table.columns) == earlier + ["right_share", "left_share", "balance", "dice_estimate", "flag"]
    predictor = load_predictor(model_path, "cpu", threshold)
    settings = PreprocessConfig(**predictor.preprocess)
    for row, source in zip(table.itertuples(), sources):
        mask = (np.asarray(Image.open(tmp_path / "out" / row.mask_file)) > 0).astype(np.uint8)
        probability = predictor.probabilities(prepare_image(source, settings)[0][None])[0]
        expected = quality.assess(mask, predictor.dice_estimate(probability))
        assert 0 <= expected.dice_estimate <= 1
        assert float(row.right_share) == pytest.approx(expected.right_share, abs=1e-4)
        assert float(row.left_share) == pytest.approx(expected.left_share, abs=1e-4)
        assert float(row.balance) == pytest.approx(expected.balance, abs=1e-4)
        assert float(row.dice_estimate) == pytest.approx(expected.dice_estimate, abs=1e-4)
        assert row.flag == expected.flag
    flagged = int((table["flag"] != "").sum())
    assert f"{flagged} of 3 flagged: see the flag column of predictions.csv" in capsys.readouterr().out


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
    flat, skipped = list_inputs([str(tmp_path / "in")])
    assert [p.rsplit("/", 1)[1] for p in flat] == ["a_gray.png", "b_colour.jpg", "c_wide.png"]
    assert skipped == [f"{tmp_path / 'in' / 'deeper'}: a subfolder (add --recursive to read it)",
                       f"{tmp_path / 'in' / 'notes.txt'}: not an image format lungseg reads ({', '.join(IMAGE_SUFFIXES)})"]
    deep, skipped = list_inputs([str(tmp_path / "in")], recursive=True)
    assert len(deep) == 6 and deep[:3] == flat and all("/deeper/" in p for p in deep[3:])
    assert len(skipped) == 1 and "notes.txt" in skipped[0]


def test_a_file_named_twice_is_predicted_once(tmp_path):
    write_inputs(tmp_path / "in")
    listed, skipped = list_inputs([str(tmp_path / "in" / "c_wide.png"), str(tmp_path / "in")])
    assert listed[0] == str(tmp_path / "in" / "c_wide.png") and len(listed) == 3 and skipped == []


def test_hidden_files_skipped_in_a_folder_are_reported_in_one_line(model_path, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    (tmp_path / "in" / "._a_gray.png").write_bytes(b"macOS companion file")
    (tmp_path / "in" / ".DS_Store").write_bytes(b"Finder")
    assert predict(model_path, [tmp_path / "in"], tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert f"skipped 2 hidden file(s) in {tmp_path / 'in'}" in err.splitlines()
    assert len(read_table(tmp_path / "out")) == 3


def test_folders_list_tiff_bmp_and_extensionless_dicom_too(tmp_path):
    (tmp_path / "in").mkdir()
    pixels = (gradient(20, 24) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in" / "b.tif")
    Image.fromarray(pixels).save(tmp_path / "in" / "c.bmp")
    write_dicom(tmp_path / "in" / "a", (gradient(20, 24) * 4000).astype(np.uint16))
    (tmp_path / "in" / "notes").write_text("an extension-less file that is not DICOM")
    assert [p.rsplit("/", 1)[1] for p in list_inputs([str(tmp_path / "in")]).sources] == ["a", "b.tif", "c.bmp"]


# --------------------------------------------------------------------------- the --out folder


def pairs_folder(root, n: int = 3):
    """A dataset laid out as ds/images/<id>.png + ds/masks/<id>.png (ground truth)."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for k in range(n):
        Image.fromarray((gradient(30, 24, k) * 255).astype(np.uint8)).save(root / "images" / f"{k}.png")
        truth = np.zeros((30, 24), np.uint8)
        truth[5:25, 3 + k:10 + k] = 255
        Image.fromarray(truth).save(root / "masks" / f"{k}.png")
    return root


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_holding_the_input_folder_is_refused_and_ground_truth_masks_survive(model_path, tmp_path, capsys, overwrite):
    ds = pairs_folder(tmp_path / "ds")
    before = fingerprint(ds)
    assert predict(model_path, [ds / "images"], ds, *overwrite) == 2
    captured = capsys.readouterr()
    assert fingerprint(ds) == before  # not one byte of ds/masks/* (or anything else) changed
    error = captured.err
    assert error.startswith(f"error: --out {ds}:") and f"{ds} holds the input folder {ds / 'images'}" in error
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_inside_an_input_folder_is_refused_even_with_overwrite(model_path, tmp_path, capsys, overwrite):
    write_inputs(tmp_path / "in")
    assert predict(model_path, [tmp_path / "in"], tmp_path / "in" / "predicted", "--recursive", *overwrite) == 2
    assert f"lies inside the input folder {tmp_path / 'in'}" in capsys.readouterr().err
    assert not (tmp_path / "in" / "predicted").exists()


def test_out_is_refused_as_the_folder_of_an_input_file_but_below_it_is_fine(model_path, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    source = tmp_path / "in" / "a_gray.png"
    assert predict(model_path, [source], tmp_path / "in", "--overwrite") == 2
    assert f"is the folder of the input file {source}" in capsys.readouterr().err
    assert predict(model_path, [source], tmp_path / "in" / "preds") == 0  # as `predict model.pth xray.png --out preds`


def test_out_holding_the_model_file_is_refused(model_path, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    assert predict(model_path, [tmp_path / "in"], model_path.parent.parent, "--overwrite") == 2
    assert f"holds the input file {model_path}" in capsys.readouterr().err


def test_an_out_folder_that_holds_files_is_refused_without_overwrite(model_path, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert predict(model_path, [tmp_path / "in"], tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert f"--out {tmp_path / 'out'} already holds 1 file(s)" in error and "--overwrite" in error
    assert fingerprint(tmp_path / "out") == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}


def test_an_empty_or_hidden_only_out_folder_is_used(model_path, tmp_path):
    write_inputs(tmp_path / "in")
    (tmp_path / "out" / "masks").mkdir(parents=True)  # e.g. left by a run stopped before its first mask
    (tmp_path / "out" / ".DS_Store").write_bytes(b"Finder")
    assert predict(model_path, [tmp_path / "in"], tmp_path / "out") == 0
    assert (tmp_path / "out" / ".DS_Store").read_bytes() == b"Finder"


def test_overwrite_replaces_the_earlier_run_and_removes_its_stale_outputs_only(model_path, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert predict(model_path, [tmp_path / "in"], out) == 0
    (out / "notes.txt").write_text("mine")  # the user's own file beside the outputs
    (out / "mine").mkdir()
    (out / "mine" / "x.png").write_bytes(b"also mine")
    assert predict(model_path, [tmp_path / "in" / "c_wide.png"], out, "--overwrite") == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["c_wide.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["c_wide.png"]
    assert read_table(out)["mask_file"].tolist() == ["masks/c_wide.png"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "mine" / "x.png").read_bytes() == b"also mine"
    # --no-overlays: the earlier overlays are stale too, and their emptied folder goes
    assert predict(model_path, [tmp_path / "in" / "c_wide.png"], out, "--overwrite", "--no-overlays") == 0
    assert not (out / "overlays").exists() and (out / "masks" / "c_wide.png").is_file()


def test_overwrite_refuses_a_foreign_file_where_only_lungseg_writes(model_path, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert predict(model_path, [tmp_path / "in"], out) == 0
    (out / "masks" / "readme.txt").write_text("my notes on these masks")
    before = fingerprint(out)
    assert predict(model_path, [tmp_path / "in" / "a_gray.png"], out, "--overwrite") == 2
    error = capsys.readouterr().err
    assert "not overwritten" in error and str(out / "masks" / "readme.txt") in error
    assert fingerprint(out) == before


def test_failed_images_of_an_overwrite_run_leave_no_mask_of_the_earlier_run(model_path, tmp_path):
    write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert predict(model_path, [tmp_path / "in"], out) == 0
    (tmp_path / "in" / "b_colour.jpg").write_bytes(b"now broken")
    assert predict(model_path, [tmp_path / "in"], out, "--overwrite") == 1
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a_gray.png", "c_wide.png"]


# --------------------------------------------------------------------------- size limit, areas and memory


def test_max_pixels_turns_a_larger_image_into_an_error_row(model_path, tmp_path, capsys, restore_max_pixels):
    write_inputs(tmp_path / "in")  # 40 x 30, 50 x 64 and 37 x 45 pixels
    assert predict(model_path, [tmp_path / "in"], tmp_path / "out", "--max-pixels", "2000") == 1
    table = read_table(tmp_path / "out")
    assert table["error"].str.contains("over the limit of 2,000 pixels").tolist() == [False, True, False]


def test_lung_areas_in_cm2_come_from_the_dicom_pixel_spacing(model_path, tmp_path):
    (tmp_path / "in").mkdir()
    write_dicom(tmp_path / "in" / "spaced.dcm", (gradient(40, 30) * 4000).astype(np.uint16), PixelSpacing=[0.5, 0.2])
    Image.fromarray((gradient(40, 30) * 255).astype(np.uint8)).save(tmp_path / "in" / "unspaced.png")
    threshold = splitting_threshold(model_path, [tmp_path / "in" / "spaced.dcm"])
    assert predict(model_path, [tmp_path / "in"], tmp_path / "out", "--threshold", str(threshold)) == 0
    spaced, unspaced = read_table(tmp_path / "out").itertuples()
    assert int(spaced.right_lung_px) + int(spaced.left_lung_px) > 0
    assert float(spaced.right_lung_cm2) == pytest.approx(int(spaced.right_lung_px) * 0.5 * 0.2 / 100, abs=1e-3)
    assert float(spaced.left_lung_cm2) == pytest.approx(int(spaced.left_lung_px) * 0.5 * 0.2 / 100, abs=1e-3)
    assert (unspaced.right_lung_cm2, unspaced.left_lung_cm2) == ("", "")


def old_overlay(grey: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """The overlay as predict made it before: grey in [0, 1] blended toward red in float64."""
    rgb = np.repeat(grey.astype(np.float64)[..., None] * 255.0, 3, axis=-1)
    rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.array([255.0, 0.0, 0.0])
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["a_gray.png", "c_wide.png", "b_colour.jpg"])
def test_overlays_are_8_bit_and_within_one_grey_level_of_the_old_float_overlay(model_path, tmp_path, name):
    write_inputs(tmp_path / "in")
    source = tmp_path / "in" / name
    threshold = splitting_threshold(model_path, [source])
    assert predict(model_path, [source], tmp_path / "out", "--threshold", str(threshold)) == 0
    written = Image.open(tmp_path / "out" / "overlays" / f"{source.stem}.png")
    assert written.mode == "RGB"  # 8 bits a channel
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{source.stem}.png")) > 0
    from lungseg.data.images import read_grayscale

    grey = read_grayscale(source)
    stretched = np.clip((grey - grey.min()) / max(grey.max() - grey.min(), 1e-6), 0, 1)
    difference = np.abs(np.asarray(written).astype(int) - old_overlay(stretched, mask, 0.4))
    assert 0 < mask.mean() < 1 and difference.max() <= 1


def test_display_grey_is_uint8_stretched_to_the_full_range(tmp_path):
    write_inputs(tmp_path / "in")
    for name in ("a_gray.png", "c_wide.png", "b_colour.jpg"):
        grey = display_grey(str(tmp_path / "in" / name), "minmax")
        assert grey.dtype == np.uint8 and (grey.min(), grey.max()) == (0, 255)


def test_overlay_grey_is_stretched_as_the_models_input_is(tmp_path):
    """display_grey and preprocessing share one min-max stretch (stretch_to_uint8): a 16-bit
    image's overlay grey is what finish_image makes of the same pixels."""
    values = (gradient(37, 45, 2) * 65535).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "wide.png")
    as_read = values.astype(np.float32) / 65535.0  # as lungseg.data.images reads 16-bit files
    expected = finish_image(as_read, PreprocessConfig(image_size=SIZE, normalize="minmax"))
    np.testing.assert_array_equal(display_grey(str(tmp_path / "wide.png"), "minmax"), expected)


def test_stretch_to_uint8_maps_low_and_high_to_0_and_255_and_a_constant_to_0():
    values = np.array([0.2, 0.3, 0.6, 0.9], dtype=np.float32)
    assert stretch_to_uint8(values, 0.2, 0.6).tolist() == [0, 64, 255, 255]
    assert stretch_to_uint8(np.full(3, 0.5, np.float32), 0.5, 0.5).tolist() == [0, 0, 0]


def test_lung_pixels_centres_agree_with_scipy_center_of_mass():
    rng = np.random.default_rng(3)
    mask = (ndimage.gaussian_filter(rng.random((60, 80)), 4) > 0.5).astype(np.uint8)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel())[1:]
    largest = np.argsort(sizes, kind="stable")[::-1][:2] + 1
    columns = [ndimage.center_of_mass(labels == label)[1] for label in largest]
    expected = sorted(int(sizes[label - 1]) for label in largest)
    sides = lung_pixels(mask)
    assert sorted([sides.right_px, sides.left_px]) == expected
    right = int(sizes[largest[int(np.argmin(columns))] - 1])
    assert sides.right_px == right


# --------------------------------------------------------------------------- lung sides


def blob(mask: np.ndarray, top: int, left: int, height: int, width: int) -> int:
    mask[top:top + height, left:left + width] = 1
    return height * width


def test_the_blob_on_the_images_left_is_the_patients_right_lung():
    mask = np.zeros((40, 60), np.uint8)
    on_image_left = blob(mask, 5, 3, 30, 10)  # 300 px
    on_image_right = blob(mask, 8, 40, 20, 12)  # 240 px
    sides = lung_pixels(mask)
    assert (sides.right_px, sides.left_px, sides.n_components) == (on_image_left, on_image_right, 2)
    mirrored = lung_pixels(mask[:, ::-1])
    assert (mirrored.right_px, mirrored.left_px) == (on_image_right, on_image_left)


def test_only_the_two_largest_components_are_lungs():
    mask = np.zeros((40, 60), np.uint8)
    blob(mask, 0, 0, 2, 2)  # a speck in the far left corner: not a lung, though furthest left
    right = blob(mask, 5, 10, 30, 10)
    left = blob(mask, 5, 40, 30, 8)
    assert lung_pixels(mask) == type(lung_pixels(mask))(right, left, 3, 2)  # the speck is no piece


@pytest.mark.parametrize("left_edge, expect_right", [(2, True), (45, False)])
def test_a_single_component_goes_by_the_half_of_the_image_it_lies_in(left_edge, expect_right):
    mask = np.zeros((40, 60), np.uint8)
    size = blob(mask, 5, left_edge, 20, 10)
    sides = lung_pixels(mask)
    assert (sides.right_px, sides.left_px) == ((size, 0) if expect_right else (0, size))
    assert sides.n_components == 1


def test_an_empty_mask_has_no_lungs():
    sides = lung_pixels(np.zeros((10, 10), np.uint8))
    assert (sides.right_px, sides.left_px, sides.n_components) == (0, 0, 0)


# --------------------------------------------------------------------------- worker threads and memory in flight


def write_many(folder, count: int = 7):
    """write_inputs' three X-rays plus `count` 8-bit ones of assorted sizes and a broken file in
    the middle of the sorted listing; returns the sorted sources."""
    write_inputs(folder)
    for index in range(count):
        height, width = 30 + 7 * index, 60 - 4 * index
        Image.fromarray((gradient(height, width, 10 + index) * 255).astype(np.uint8)).save(folder / f"d{index}.png")
    (folder / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    return list_inputs([str(folder)]).sources


def test_outputs_are_the_same_for_any_number_of_workers_and_keep_the_input_order(model_path, tmp_path, capsys):
    sources = write_many(tmp_path / "in")
    threshold = splitting_threshold(model_path, [s for s in sources if "broken" not in s])
    runs = {}
    for workers in ("1", "2", "5"):
        out = tmp_path / f"out{workers}"
        code = predict(model_path, [tmp_path / "in"], out, "--threshold", str(threshold), "--batch-size", "3", "--workers", workers)
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert code == 1 and len(errors) == 1 and "b_broken.png" in errors[0]
        runs[workers] = (read_table(out), fingerprint(out))
    table, files = runs["1"]
    assert table["input"].tolist() == sources
    assert table["error"].str.contains("b_broken.png").tolist() == ["b_broken.png" in s for s in sources]
    # the table, the review page and the run's record; a mask, an overlay, a thumbnail and an X-ray view per readable image
    assert len(files) == 3 + 4 * (len(sources) - 1)
    for other_table, other_files in (runs["2"], runs["5"]):
        pd.testing.assert_frame_equal(other_table, table)
        assert other_files == files


def test_a_budget_smaller_than_any_image_still_writes_every_image_alike_and_is_given_back(model_path, tmp_path):
    """Images larger than the working budget run one at a time; display greys that do not fit the
    kept budget are read again for their overlay. Neither may change a pixel or hold on to memory."""
    sources = write_many(tmp_path / "in", count=3)
    predictor = load_predictor(model_path, "cpu", splitting_threshold(model_path, [s for s in sources if "broken" not in s]))
    jobs = [Job(source, name) for source, name in zip(sources, unique_names(sources))]
    fingerprints = []
    for budgets in (Budgets(), Budgets(PixelBudget(1), PixelBudget(0))):
        out = tmp_path / f"out{len(fingerprints)}"
        rows = predict_all(predictor, jobs, Outputs(out), batch_size=2, quiet=True, workers=3, budgets=budgets)
        write_table(rows, out / "predictions.csv")
        assert (budgets.working.used, budgets.kept.used) == (0, 0)
        fingerprints.append(fingerprint(out))
    assert fingerprints[0] == fingerprints[1]


def test_torch_threads_are_put_back_after_a_run(model_path, tmp_path):
    write_inputs(tmp_path / "in")
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # not 1, so a run that left 1 behind fails even on a 1-core machine
    try:
        assert predict(model_path, [tmp_path / "in"], tmp_path / "out", "--workers", "2") == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["a_gray.png", "b_colour.jpg", "c_wide.png"])
def test_one_read_gives_what_prepare_image_and_display_grey_give(tmp_path, name):
    write_inputs(tmp_path / "in")
    source = str(tmp_path / "in" / name)
    settings = PreprocessConfig(image_size=SIZE, normalize="minmax")
    resized, full = read_resized_and_full(source, SIZE)
    image, size = prepare_image(source, settings)
    np.testing.assert_array_equal(finish_image(resized.values, settings), image)
    assert resized.original_size == size
    np.testing.assert_array_equal(grey_for_display(full, "minmax"), display_grey(source, "minmax"))


def test_the_overlay_grey_of_another_normalisation_is_stretched_as_minmax_and_none_keeps_the_values(tmp_path):
    Image.fromarray((gradient(20, 30) * 100 + 50).astype(np.uint8)).save(tmp_path / "dim.png")
    stretched = display_grey(str(tmp_path / "dim.png"), "minmax")
    assert (stretched.min(), stretched.max()) == (0, 255)
    np.testing.assert_array_equal(display_grey(str(tmp_path / "dim.png"), "percentile"), stretched)
    np.testing.assert_array_equal(display_grey(str(tmp_path / "dim.png"), "none"), np.asarray(Image.open(tmp_path / "dim.png")))


def test_the_display_grey_of_an_8_bit_image_costs_about_its_own_size(tmp_path):
    import tracemalloc

    Image.fromarray(np.random.default_rng(0).integers(20, 200, (1500, 1200), dtype=np.uint8)).save(tmp_path / "big.png")
    image, _ = open_image(str(tmp_path / "big.png"))
    tracemalloc.start()
    try:
        grey = grey_for_display(image, "minmax")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (grey.min(), grey.max()) == (0, 255)
    assert peak / grey.size < 2.5, "the result is 1 byte a pixel; an int64 copy of the indices would be 8 more"


class RecordingBudget(PixelBudget):
    """A PixelBudget that remembers the most pixels it ever had out at once."""

    peak = 0

    def take(self, pixels: int, wait: bool = True) -> bool:
        taken = super().take(pixels, wait)
        self.peak = max(self.peak, self.used)
        return taken


def test_the_working_budget_is_never_overdrawn_during_a_run(model_path, tmp_path):
    sources = write_many(tmp_path / "in", count=5)  # every image below 3,300 pixels
    predictor = load_predictor(model_path, "cpu")
    jobs = [Job(source, name) for source, name in zip(sources, unique_names(sources))]
    budgets = Budgets(RecordingBudget(4000), RecordingBudget(5000))
    rows = predict_all(predictor, jobs, Outputs(tmp_path / "out"), batch_size=4, quiet=True, workers=4, budgets=budgets)
    assert len(rows) == len(jobs)
    assert 0 < budgets.working.peak <= 4000 and 0 < budgets.kept.peak <= 5000
    assert (budgets.working.used, budgets.kept.used) == (0, 0)


def test_a_model_saved_without_a_calibration_runs_with_an_empty_estimate_and_says_why(tmp_path, capsys):
    old = tmp_path / "old.pth"
    preprocess = {"image_size": SIZE, "normalize": "minmax", "mask_threshold": 127}
    torch.manual_seed(0)
    save_checkpoint(make_checkpoint(UNet(**MODEL_ARGS), MODEL_ARGS, preprocess, 0.5), old)
    write_inputs(tmp_path / "in")
    assert predict(old, [tmp_path / "in"], tmp_path / "out") == 0  # an estimate is never a reason to fail
    table = read_table(tmp_path / "out")
    assert (table["dice_estimate"] == "").all()
    lines = [line for line in capsys.readouterr().err.splitlines() if "Dice calibration" in line]
    assert len(lines) == 1 and str(old) in lines[0] and "retrain" in lines[0]


def test_no_estimate_leaves_the_column_empty_and_says_nothing_about_calibration(model_path, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    assert predict(model_path, [tmp_path / "in"], tmp_path / "out", "--no-estimate") == 0
    assert (read_table(tmp_path / "out")["dice_estimate"] == "").all()
    assert "calibration" not in capsys.readouterr().err


def test_min_dice_decides_which_estimates_flag(model_path, tmp_path):
    write_inputs(tmp_path / "in")
    assert predict(model_path, [tmp_path / "in"], tmp_path / "all", "--min-dice", "1") == 0
    everything = read_table(tmp_path / "all")
    assert everything["flag"].str.contains("estimated Dice").all()
    assert predict(model_path, [tmp_path / "in"], tmp_path / "none", "--min-dice", "0") == 0
    assert not read_table(tmp_path / "none")["flag"].str.contains("estimated Dice").any()


def test_an_unwritable_out_is_refused_with_one_line_before_any_image_is_read(model_path, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    assert predict(model_path, [tmp_path / "in"], "/proc/lungseg-predictions") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out /proc/lungseg-predictions: cannot write there") and len(err.splitlines()) == 1


def test_a_full_disk_stops_the_run_with_one_line_and_leaves_only_whole_files(model_path, tmp_path, small_disk, capsys):
    disk = small_disk("256k")
    folder = tmp_path / "in"
    folder.mkdir()
    noise = np.random.default_rng(0)
    for k in range(40):  # noisy 300 px overlays compress badly: ~100 KB each, so the disk fills after a few
        Image.fromarray(noise.integers(0, 256, (300, 300), np.uint8)).save(folder / f"x{k:02d}.png")
    out = disk / "out"
    assert predict(model_path, [folder], out, "--workers", "1") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: could not write into {out}")
    assert "No space left on device (ENOSPC); stopped after" in err[0]
    leftovers = [path for path in out.rglob("*") if path.name.startswith(".")]
    assert leftovers == []  # no temporary of a killed write
    for mask in (out / "masks").glob("*.png"):
        with Image.open(mask) as image:
            image.load()  # whole: a half-written PNG would fail here
    if (out / "predictions.csv").exists():
        table = read_table(out)
        assert len(table) < 40 and all((out / name).is_file() for name in table["mask_file"])


def test_the_recursive_hint_comes_only_when_there_are_subfolders_to_look_in(model_path, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert predict(model_path, [tmp_path / "empty"], tmp_path / "out1") == 2
    err = capsys.readouterr().err
    assert "no images" in err and "--recursive" not in err
    write_inputs(tmp_path / "nested" / "day1")
    assert predict(model_path, [tmp_path / "nested"], tmp_path / "out2") == 2
    assert "add --recursive to look in subfolders" in capsys.readouterr().err
    assert predict(model_path, [tmp_path / "nested"], tmp_path / "out3", "--recursive") == 0


def test_a_folder_yields_every_file_predict_reads_when_named_and_counts_the_rest(model_path, tmp_path, capsys):
    folder = tmp_path / "in"
    write_inputs(folder)
    pixels = (gradient(30, 40) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "d_web.webp")  # read when named: read in a folder too
    Image.fromarray(pixels).save(folder / "e_anim.gif")
    (folder / "f_gone.png").symlink_to(folder / "missing.png")  # a broken link
    (folder / "g_again.png").symlink_to(folder / "a_gray.png")  # a second name of a listed file
    (folder / "h_readme.txt").write_text("about these scans")
    assert predict(model_path, [folder], tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert sorted(read_table(tmp_path / "out")["input"].map(lambda p: p.rsplit("/", 1)[1])) == [
        "a_gray.png", "b_colour.jpg", "c_wide.png", "d_web.webp", "e_anim.gif"]
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped: ")]
    assert skipped == [f"skipped: {folder / 'f_gone.png'}: a broken link",
                       f"skipped: {folder / 'h_readme.txt'}: not an image format lungseg reads ({', '.join(IMAGE_SUFFIXES)})",
                       f"skipped: {folder / 'g_again.png'}: the same file as {folder / 'a_gray.png'}"]
    assert "5 of 8 file(s) segmented" in captured.out and "3 skipped (listed above on stderr)" in captured.out

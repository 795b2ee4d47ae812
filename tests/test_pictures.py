"""Tests for lungseg.evaluation.pictures: overlay maths, PNG writers, validation and atomic writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from lungseg.evaluation import pictures
from lungseg.inference import overlay

# --------------------------------------------------------------------------- helpers


def _row(size: int = 16, title: str = "best · id 17 · Dice 0.973", dtype=np.float32) -> dict:
    rng = np.random.default_rng(size)
    image = rng.random((size, size)).astype(dtype)
    truth = np.zeros((size, size), dtype=np.uint8)
    truth[4:12, 3:8] = 1
    pred = truth.copy()
    pred[4:12, 8:10] = 1
    return {"image": image, "truth": truth, "pred": pred, "title": title}


def _history(n_epochs: int = 3) -> pd.DataFrame:
    epochs = np.arange(1, n_epochs + 1)
    return pd.DataFrame(
        {
            "epoch": epochs,
            "train_loss": 1.0 / epochs,
            "val_loss": 1.2 / epochs,
            "val_dice": [0.80, 0.95, 0.90][:n_epochs],
            "val_iou": [0.70, 0.90, 0.82][:n_epochs],
            "lr": 1e-3,
        }
    )


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()  # raises on a truncated/corrupt file
        return img.size


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# --------------------------------------------------------------------------- overlay


def test_overlay_shape_and_dtype():
    out = overlay.overlay(np.zeros((5, 7), np.float32), np.zeros((5, 7), bool))
    assert out.shape == (5, 7, 3)
    assert out.dtype == np.uint8


def test_overlay_outside_mask_is_grey_image_value():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 0] = True
    out = overlay.overlay(image, mask)
    outside = ~mask
    for c in range(3):
        np.testing.assert_array_equal(out[..., c][outside], image[outside])


def test_overlay_inside_mask_exact_alpha_blend():
    image = np.full((2, 2), 100, dtype=np.uint8)
    mask = np.array([[1, 0], [0, 0]], dtype=np.uint8)
    out = overlay.overlay(image, mask, color=(255, 0, 0), alpha=0.4)
    # R = 0.6*100 + 0.4*255 = 162; G = B = 0.6*100 = 60
    assert out[0, 0].tolist() == [162, 60, 60]
    assert out[1, 1].tolist() == [100, 100, 100]


def test_overlay_alpha_zero_and_one():
    image = np.full((1, 1), 50, dtype=np.uint8)
    mask = np.ones((1, 1), dtype=bool)
    assert overlay.overlay(image, mask, alpha=0.0)[0, 0].tolist() == [50, 50, 50]
    assert overlay.overlay(image, mask, color=(10, 20, 30), alpha=1.0)[0, 0].tolist() == [10, 20, 30]


def test_overlay_uint8_and_float_agree():
    rng = np.random.default_rng(0)
    as_uint8 = rng.integers(0, 256, size=(9, 11), dtype=np.uint8)
    as_float = as_uint8.astype(np.float64) / 255.0
    mask = rng.random((9, 11)) > 0.5
    np.testing.assert_array_equal(overlay.overlay(as_uint8, mask), overlay.overlay(as_float, mask))
    np.testing.assert_array_equal(
        overlay.overlay(as_uint8, mask), overlay.overlay(as_float.astype(np.float32), mask)
    )


def _old_float_overlay(image: np.ndarray, mask: np.ndarray, color, alpha: float) -> np.ndarray:
    """The overlay as viz made it before: a full-size float64 RGB blend of the unrounded grey."""
    grey = image.astype(np.float64) * (255.0 if image.dtype != np.uint8 else 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(color, dtype=float)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize(("color", "alpha"), [((255, 0, 0), 0.4), ((10, 200, 30), 0.73), ((0, 0, 255), 1.0)])
def test_overlay_is_uint8_and_equals_the_old_full_size_float_blend(dtype, color, alpha, monkeypatch):
    monkeypatch.setattr(overlay, "_OVERLAY_BLOCK", 41 * 7)  # 7 rows a block: blocks must join up, the last one short
    rng = np.random.default_rng(1)
    image = rng.random((300, 41))
    image = (image * 255).round().astype(np.uint8) if dtype == np.uint8 else image.astype(dtype)
    mask = rng.random((300, 41)) > 0.5
    out = overlay.overlay(image, mask, color=color, alpha=alpha)
    assert out.dtype == np.uint8 and out.shape == (300, 41, 3)
    np.testing.assert_array_equal(out, _old_float_overlay(image, mask, color, alpha))


@pytest.mark.parametrize(("color", "alpha"), [((255, 0, 0), 0.4), ((10, 200, 30), 0.73), ((0, 0, 255), 1.0), ((9, 9, 9), 0.0)])
def test_overlay_image_holds_the_same_pixels_as_overlay(color, alpha, monkeypatch):
    monkeypatch.setattr(overlay, "_OVERLAY_BLOCK", 41 * 7)  # 7 rows a block: blocks must join up, the last one short
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (300, 41), dtype=np.uint8)
    mask = (rng.random((300, 41)) > 0.5).astype(np.uint8)
    picture = overlay.overlay_image(image, mask, color=color, alpha=alpha)
    assert picture.mode == "RGB" and picture.size == (41, 300)
    np.testing.assert_array_equal(np.asarray(picture), overlay.overlay(image, mask, color=color, alpha=alpha))


def test_overlay_image_takes_uint8_only_and_checks_the_mask():
    with pytest.raises(ValueError, match="uint8"):
        overlay.overlay_image(np.zeros((4, 4), np.float32), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="binary"):
        overlay.overlay_image(np.zeros((4, 4), np.uint8), np.full((4, 4), 7, np.uint8))
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        overlay.overlay_image(np.zeros((4, 4), np.uint8), np.zeros((4, 5), bool))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_overlay_needs_a_few_bytes_a_pixel_not_a_float64_rgb(dtype):
    rng = np.random.default_rng(0)
    image = rng.random((2000, 2000)).astype(dtype) if dtype != np.uint8 else rng.integers(0, 256, (2000, 2000), np.uint8)
    mask = (rng.random((2000, 2000)) > 0.5).astype(np.uint8)
    peak = traced_peak(overlay.overlay, image, mask)
    # the result is 3 bytes a pixel, the blocks' temporaries a few MB; the old float64 RGB
    # blend needed 24 bytes a pixel for that array alone, and as much again for its copies
    assert peak / image.size < 8


def test_overlay_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"image shape \(128, 128\) != mask shape \(64, 64\)"):
        overlay.overlay(np.zeros((128, 128)), np.zeros((64, 64)))


@pytest.mark.parametrize(
    ("image", "mask", "message"),
    [
        (np.zeros((4, 4, 3)), np.zeros((4, 4)), "2-D"),
        (np.full((4, 4), 2.0), np.zeros((4, 4)), r"\[0, 1\]"),
        (np.zeros((4, 4), np.int64), np.zeros((4, 4)), "dtype int64"),
        (np.zeros((4, 4)), np.full((4, 4), 0.5), "binary"),
    ],
)
def test_overlay_rejects_bad_inputs(image, mask, message):
    with pytest.raises(ValueError, match=message):
        overlay.overlay(image, mask)


# --------------------------------------------------------------------------- error image

# a 2 x 3 case where every pixel's kind is known:
#   truth  1 1 0    pred  1 0 1    ->  TP FN FP
#          0 1 0          0 1 0        TN TP TN
_ERR_IMAGE = np.array([[10, 20, 30], [40, 50, 60]], dtype=np.uint8)
_ERR_TRUTH = np.array([[1, 1, 0], [0, 1, 0]], dtype=np.uint8)
_ERR_PRED = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.uint8)


def _grey(value: int) -> list[int]:
    return [value, value, value]


def test_error_image_exact_colours_on_a_hand_made_case():
    rgb = pictures.error_image(_ERR_IMAGE, _ERR_TRUTH, _ERR_PRED)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert pictures.FP_COLOR == (255, 0, 255) and pictures.FN_COLOR == (0, 255, 0)  # magenta, green: as the title says
    expected = [[_grey(10), list(pictures.FN_COLOR), list(pictures.FP_COLOR)],  # TP uncoloured, FN green, FP magenta
                [_grey(40), _grey(50), _grey(60)]]  # TN, TP, TN: the X-ray's grey
    assert rgb.tolist() == expected


def test_error_image_of_a_float_image_uses_the_rounded_grey_and_takes_bool_masks():
    rgb = pictures.error_image(_ERR_IMAGE / 255.0, _ERR_TRUTH.astype(bool), _ERR_PRED.astype(bool))
    np.testing.assert_array_equal(rgb, pictures.error_image(_ERR_IMAGE, _ERR_TRUTH, _ERR_PRED))


def test_error_image_of_a_perfect_prediction_is_the_grey_x_ray():
    rgb = pictures.error_image(_ERR_IMAGE, _ERR_TRUTH, _ERR_TRUTH)
    np.testing.assert_array_equal(rgb, np.repeat(_ERR_IMAGE[..., None], 3, axis=2))


def test_error_image_empty_and_all_lung_predictions():
    empty = pictures.error_image(_ERR_IMAGE, _ERR_TRUTH, np.zeros((2, 3), np.uint8))
    full = pictures.error_image(_ERR_IMAGE, _ERR_TRUTH, np.ones((2, 3), np.uint8))
    truth = _ERR_TRUTH.astype(bool)
    assert (empty[truth] == pictures.FN_COLOR).all() and (empty[~truth] == empty[~truth][:, :1]).all()
    assert (full[~truth] == pictures.FP_COLOR).all() and (full[truth] == full[truth][:, :1]).all()


def test_error_image_does_not_change_its_inputs():
    image, truth, pred = _ERR_IMAGE.copy(), _ERR_TRUTH.copy(), _ERR_PRED.copy()
    pictures.error_image(image, truth, pred)
    assert (image == _ERR_IMAGE).all() and (truth == _ERR_TRUTH).all() and (pred == _ERR_PRED).all()


@pytest.mark.parametrize(
    ("truth", "pred", "message"),
    [
        (_ERR_TRUTH, np.zeros((3, 2), np.uint8), r"image shape \(2, 3\) != pred shape \(3, 2\)"),
        (_ERR_TRUTH[:1], _ERR_PRED, r"image shape \(2, 3\) != truth shape \(1, 3\)"),
        (_ERR_TRUTH * 255, _ERR_PRED, "truth must be binary"),
        (_ERR_TRUTH, _ERR_PRED * 0.5, "pred must be binary"),
    ],
)
def test_error_image_rejects_bad_masks(truth, pred, message):
    with pytest.raises(ValueError, match=message):
        pictures.error_image(_ERR_IMAGE, truth, pred)


# --------------------------------------------------------------------------- montage


def test_save_montage_writes_png_that_grows_with_rows(tmp_path):
    one, three = tmp_path / "one.png", tmp_path / "three.png"
    pictures.save_montage([_row()], one, dpi=40)
    pictures.save_montage([_row(), _row(20, "median", np.uint8), _row(12, "worst")], three, dpi=40)
    (w1, h1), (w3, h3) = _png_size(one), _png_size(three)
    assert w1 == w3
    assert h3 > h1
    assert h3 == pytest.approx(3 * h1, rel=0.05)


def test_save_montage_has_five_columns_the_last_one_the_errors(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(pictures, "_save_figure", lambda fig, path, dpi: drawn.append(fig))
    pictures.save_montage([_row(), _row(12, "worst")], tmp_path / "m.png", dpi=30)
    axes = drawn[0].axes
    assert len(axes) == 10
    assert [ax.get_title() for ax in axes[:5]] == list(pictures.MONTAGE_COLUMNS)
    assert pictures.MONTAGE_COLUMNS[:4] == ("X-ray", "ground truth", "prediction", "overlay")
    assert pictures.MONTAGE_COLUMNS[4] == "errors: FP magenta, FN green"
    row = _row()
    shown = axes[4].get_images()[0].get_array()
    np.testing.assert_array_equal(shown, pictures.error_image(row["image"], row["truth"], row["pred"]))


def test_save_montage_png_is_five_tiles_wide(tmp_path):
    pictures.save_montage([_row()], tmp_path / "m.png", dpi=40)
    assert _png_size(tmp_path / "m.png") == (5 * 100, 100)  # 2.5 in tiles at 40 dpi


def _flags(ax) -> tuple[list[str], bool]:
    """(texts drawn on the axes, whether any frame line is visible)."""
    return [t.get_text() for t in ax.texts], any(spine.get_visible() for spine in ax.spines.values())


@pytest.mark.parametrize(("pred_value", "label"), [(0, "empty prediction"), (1, "all lung")])
def test_save_montage_labels_and_frames_an_empty_or_all_lung_prediction(tmp_path, monkeypatch, pred_value, label):
    drawn = []
    monkeypatch.setattr(pictures, "_save_figure", lambda fig, path, dpi: drawn.append(fig))
    flat = _row()
    flat["pred"] = np.full((16, 16), pred_value, np.uint8)
    pictures.save_montage([_row(), flat], tmp_path / "m.png", dpi=30)
    axes = drawn[0].axes
    assert _flags(axes[7]) == ([label], True)  # row 2, prediction column
    assert _flags(axes[2]) == ([], False)  # an ordinary prediction stays unmarked
    assert _flags(axes[6]) == ([], False)  # its truth has lung and background
    monkeypatch.undo()
    pictures.save_montage([flat], tmp_path / "flat.png", dpi=30)  # and the real figure renders
    _png_size(tmp_path / "flat.png")


def test_save_montage_labels_an_empty_truth(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(pictures, "_save_figure", lambda fig, path, dpi: drawn.append(fig))
    row = _row()
    row["truth"] = np.zeros((16, 16), np.uint8)
    pictures.save_montage([row], tmp_path / "m.png", dpi=30)
    assert _flags(drawn[0].axes[1]) == (["empty truth"], True)


def test_save_montage_accepts_uint8_images(tmp_path):
    row = _row()
    row["image"] = (row["image"] * 255).astype(np.uint8)
    pictures.save_montage([row], tmp_path / "m.png", dpi=30)
    _png_size(tmp_path / "m.png")


def test_save_montage_creates_parent_dirs(tmp_path):
    path = tmp_path / "a" / "b" / "montage.png"
    pictures.save_montage([_row()], path, dpi=30)
    assert path.is_file()


def test_save_montage_empty_rows_raises(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        pictures.save_montage([], tmp_path / "m.png")
    assert not (tmp_path / "m.png").exists()


def test_save_montage_row_shape_mismatch_names_row(tmp_path):
    bad = _row()
    bad["pred"] = np.zeros((8, 8), np.uint8)
    expected = r"rows\[1\] image shape \(16, 16\) != pred shape \(8, 8\)"
    with pytest.raises(ValueError, match=expected):
        pictures.save_montage([_row(), bad], tmp_path / "m.png")


def test_save_montage_missing_key_raises(tmp_path):
    row = _row()
    del row["truth"]
    with pytest.raises(ValueError, match="truth"):
        pictures.save_montage([row], tmp_path / "m.png")


# --------------------------------------------------------------------------- curves


@pytest.mark.parametrize("writer", [pictures.save_loss_curves, pictures.save_dice_curves])
@pytest.mark.parametrize("n_epochs", [1, 3])
def test_curves_write_valid_png(tmp_path, writer, n_epochs):
    path = tmp_path / "curve.png"
    writer(_history(n_epochs), path, dpi=50)
    assert _png_size(path) == (300, 200)  # 6x4 inches at 50 dpi


def test_curves_accept_unsorted_epochs(tmp_path):
    hist = _history(3).iloc[::-1].reset_index(drop=True)
    pictures.save_dice_curves(hist, tmp_path / "d.png", dpi=30)
    _png_size(tmp_path / "d.png")


@pytest.mark.parametrize(
    ("writer", "column"),
    [
        (pictures.save_loss_curves, "val_loss"),
        (pictures.save_loss_curves, "train_loss"),
        (pictures.save_dice_curves, "val_dice"),
        (pictures.save_dice_curves, "val_iou"),
    ],
)
def test_curves_missing_column_raises_naming_it(tmp_path, writer, column):
    hist = _history().drop(columns=[column])
    with pytest.raises(ValueError, match=rf"missing column '{column}'.*'epoch'"):
        writer(hist, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_curves_empty_history_raises(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        pictures.save_loss_curves(_history().iloc[:0], tmp_path / "c.png")


def test_best_epoch_is_first_max_of_val_dice():
    hist = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_dice": [0.5, 0.9, 0.9, 0.7]})
    assert pictures._best_epoch(hist) == (2, 0.9)


def test_dice_curves_all_nan_raises(tmp_path):
    hist = _history().assign(val_dice=np.nan)
    with pytest.raises(ValueError, match="val_dice"):
        pictures.save_dice_curves(hist, tmp_path / "d.png")


# --------------------------------------------------------------------------- mask png


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.float32])
def test_save_mask_png_round_trips(tmp_path, dtype):
    rng = np.random.default_rng(1)
    mask = (rng.random((13, 17)) > 0.5).astype(dtype)
    path = tmp_path / "mask.png"
    overlay.save_mask_png(mask, path)
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.mode == "L"
        pixels = np.array(img)
    assert set(np.unique(pixels).tolist()) == {0, 255}
    np.testing.assert_array_equal(pixels == 255, mask.astype(bool))


def test_save_mask_png_rejects_non_binary_and_wrong_suffix(tmp_path):
    with pytest.raises(ValueError, match="binary"):
        overlay.save_mask_png(np.full((4, 4), 255, np.uint8), tmp_path / "m.png")
    with pytest.raises(ValueError, match=r"\.png"):
        overlay.save_mask_png(np.zeros((4, 4), bool), tmp_path / "m.jpg")


# --------------------------------------------------------------------------- atomic writes


def test_no_temp_files_after_success(tmp_path):
    pictures.save_montage([_row()], tmp_path / "montage.png", dpi=30)
    pictures.save_loss_curves(_history(), tmp_path / "loss.png", dpi=30)
    pictures.save_dice_curves(_history(), tmp_path / "dice.png", dpi=30)
    overlay.save_mask_png(np.eye(4, dtype=bool), tmp_path / "mask.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dice.png",
        "loss.png",
        "mask.png",
        "montage.png",
    ]


def _failing_savefig(self, fname, *args, **kwargs):
    # Simulate a crash half-way through writing: bytes reach the temp file, then boom.
    with open(fname, "wb") as f:
        f.write(b"\x89PNG partial")
    raise RuntimeError("disk on fire")


@pytest.mark.parametrize(
    "write",
    [
        lambda p: pictures.save_montage([_row()], p, dpi=30),
        lambda p: pictures.save_loss_curves(_history(), p, dpi=30),
        lambda p: pictures.save_dice_curves(_history(), p, dpi=30),
    ],
)
def test_failed_render_keeps_old_file_and_removes_temp(tmp_path, monkeypatch, write):
    path = tmp_path / "out.png"
    path.write_bytes(b"old contents")
    monkeypatch.setattr(Figure, "savefig", _failing_savefig)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write(path)
    assert path.read_bytes() == b"old contents"
    assert _leftovers(tmp_path) == []


def test_failed_mask_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "mask.png"
    path.write_bytes(b"old mask")

    def boom(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"partial")
        raise OSError("no space left")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="no space"):
        overlay.save_mask_png(np.eye(3, dtype=bool), path)
    assert path.read_bytes() == b"old mask"
    assert _leftovers(tmp_path) == []


def test_error_discovered_while_drawing_keeps_old_file(tmp_path, monkeypatch):
    # A failure inside drawing (after validation passed) must not touch the target.
    path = tmp_path / "montage.png"
    path.write_bytes(b"old montage")

    def bad_overlay(*args, **kwargs):
        raise ValueError("bad pixel discovered while drawing")

    monkeypatch.setattr(pictures, "overlay", bad_overlay)
    with pytest.raises(ValueError, match="while drawing"):
        pictures.save_montage([_row()], path, dpi=30)
    assert path.read_bytes() == b"old montage"
    assert _leftovers(tmp_path) == []


def test_figure_without_suffix_is_png_and_unknown_suffix_raises(tmp_path):
    pictures.save_loss_curves(_history(), tmp_path / "loss", dpi=30)
    _png_size(tmp_path / "loss")
    with pytest.raises(ValueError, match="supported"):
        pictures.save_loss_curves(_history(), tmp_path / "loss.xyz", dpi=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss"]


def test_bad_dpi_raises(tmp_path):
    with pytest.raises(ValueError, match="dpi"):
        pictures.save_loss_curves(_history(), tmp_path / "l.png", dpi=0)


@pytest.mark.parametrize("epochs", [[1], [1, 2, 3], list(range(0, 40))])
def test_epoch_axis_ticks_are_integers(epochs):
    ax = Figure().subplots()
    ax.plot(epochs, np.zeros(len(epochs)), marker="o")
    pictures._epoch_axis(ax, pd.Series(epochs))
    ticks = ax.get_xticks()
    assert len(ticks) > 0
    np.testing.assert_array_equal(ticks, np.round(ticks))
    if len(epochs) <= 3:
        assert ticks.tolist() == epochs  # every epoch of a short run is labelled


def test_overlay_image_needs_only_a_few_mb_beside_the_picture():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2000, 2000), np.uint8)
    mask = (rng.random((2000, 2000)) > 0.5).astype(np.uint8)
    peak = traced_peak(overlay.overlay_image, image, mask)
    # numpy's temporaries (the picture itself is Pillow's, outside tracemalloc): a block of rows
    # at a time, not a full-size index or RGBX array (8 and 16 MB here)
    assert peak < 4 * 2**20


def traced_peak(function, *args) -> int:
    """The peak bytes numpy and Python allocate while `function(*args)` runs."""
    import tracemalloc

    tracemalloc.start()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_estimate_scatter_draws_a_picture_and_names_missing_columns(tmp_path):
    table = pd.DataFrame({"dice": [0.95, 0.8, 0.6], "dice_estimate": [0.94, 0.85, None]})  # no estimate: left out
    pictures.save_estimate_scatter(table, tmp_path / "scatter.png", dpi=50, min_dice=0.9)
    with Image.open(tmp_path / "scatter.png") as picture:
        assert picture.size == (225, 225)  # 4.5 in at 50 dpi
        assert np.asarray(picture.convert("L")).std() > 0
    with pytest.raises(ValueError, match="dice_estimate"):
        pictures.save_estimate_scatter(table[["dice"]], tmp_path / "other.png")
    assert not (tmp_path / "other.png").exists()


def test_a_long_file_name_keeps_its_row_label_beside_its_own_row(tmp_path, monkeypatch):
    """External sets name files by their source: the label must not run into the next row."""
    name = "CHNCXR_0001_0_shenzhen_hospital_no3_chest_pa_view_2019-05-17_series_004_image_0007"
    drawn = []
    monkeypatch.setattr(pictures, "_save_figure", lambda fig, path, dpi: drawn.append(fig))
    rows = [_row(title=f"{label} · id {name}\nDice 0.95{i} · est. 0.94{i}") for i, label in enumerate(("best", "median", "worst"))]
    pictures.save_montage(rows, tmp_path / "montage.png", dpi=40)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = drawn[0]
    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # lays the figure out as saving it would
    renderer = canvas.get_renderer()
    first_column = [axes for axes in figure.axes if axes.get_ylabel()]
    assert len(first_column) == 3
    for axes in first_column:
        label, tile = axes.yaxis.label.get_window_extent(renderer), axes.get_window_extent(renderer)
        assert tile.y0 - 1 <= label.y0 and label.y1 <= tile.y1 + 1, (axes.get_ylabel(), label, tile)
        first, second = axes.get_ylabel().split("\n")
        assert first.startswith(first.split(" · ")[0]) and first.endswith("image_0007") and "…" in first
        assert second.startswith("Dice 0.95")


def test_fit_label_leaves_short_lines_alone():
    assert pictures.fit_label("best · id 17\nDice 0.973") == "best · id 17\nDice 0.973"
    assert len(pictures.fit_label("x" * 100, width=20)) == 20

"""Tests for lungseg.data.preprocess: folders of pairs -> uint8 arrays + index, and their storage."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from lungseg.core.config import PreprocessConfig
from lungseg.core.errors import DataError
from lungseg.data.images import max_pixels, set_max_pixels
from lungseg.data.preprocess import preparation, preprocess_folder, scan_folder
from lungseg.data.processed import ProcessedSet, load_processed, save_processed

SIZE = 16


def settings(**overrides) -> PreprocessConfig:
    values = {"image_size": SIZE, "workers": 1, "metadata_columns": ("county", "ptb")}
    values.update(overrides)
    return PreprocessConfig(**values)


def _rect_mask(shape, value):
    height, width = shape
    mask = np.zeros(shape, dtype=np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = value
    return mask


# --------------------------------------------------------------------------- arrays


def test_arrays_have_the_right_shape_dtype_and_range(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="kaggle", n=3, size=(40, 30))
    images, masks, index = preprocess_folder(folder.root, settings())
    assert images.shape == masks.shape == (3, SIZE, SIZE)
    assert images.dtype == masks.dtype == np.uint8
    for image in images:  # minmax stretches each image to the full range
        assert image.min() == 0 and image.max() == 255
    assert set(np.unique(masks)) == {0, 1}
    # the mask is a centred rectangle over half of each side: a quarter of the pixels
    for mask in masks:
        assert 0.15 < mask.mean() < 0.35
        assert mask[SIZE // 2, SIZE // 2] == 1 and mask[0, 0] == 0
    assert len(index) == 3


def test_normalize_none_keeps_intensities(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    Image.fromarray(np.full((32, 32), 100, dtype=np.uint8)).save(tmp_path / "image" / "1.png")
    Image.fromarray(_rect_mask((32, 32), 255)).save(tmp_path / "mask" / "1.png")
    images, _, _ = preprocess_folder(tmp_path, settings(normalize="none"))
    assert np.all(images == 100)
    images, _, _ = preprocess_folder(tmp_path, settings(normalize="minmax"))
    assert np.all(images == 0)  # a flat image has nothing to stretch; it must not blow up


def test_16_bit_and_rgb_inputs_work(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    ramp16 = np.tile(np.linspace(0, 65535, 32), (32, 1)).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "image" / "1.png")
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0] = np.tile(np.linspace(0, 255, 32), (32, 1)).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "image" / "2.png")
    for id_ in ("1", "2"):
        Image.fromarray(_rect_mask((32, 32), 255)).save(tmp_path / "mask" / f"{id_}.png")
    images, masks, index = preprocess_folder(tmp_path, settings(normalize="none"))
    assert images.shape == (2, SIZE, SIZE)
    # the 16-bit ramp spans nearly the full range after scaling by 65535 (not clipped to all-white)
    assert images[0, :, 0].max() < 20 and images[0, :, -1].min() > 235
    assert images[0].mean() == pytest.approx(127.5, abs=10)
    # red channel only: luma 0.299 of the ramp; increasing left to right
    assert images[1, :, -1].mean() == pytest.approx(0.299 * 255, abs=8)
    assert np.all(np.diff(images[1, 0].astype(int)) >= 0)
    assert set(np.unique(masks)) == {0, 1}


def test_mask_of_a_different_size_names_the_mask_and_writes_nothing(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=3, size=(40, 30))
    bad_mask = folder.mask_paths["2"]
    Image.fromarray(_rect_mask((20, 20), 255)).save(bad_mask)
    out = tmp_path / "processed"
    with pytest.raises(DataError) as caught:
        images, masks, index = preprocess_folder(folder.root, settings())
        save_processed(images, masks, index, preparation(settings()), out)  # must never be reached
    message = str(caught.value)
    assert str(bad_mask) in message
    assert "differs" in message
    assert len(caught.value.problems) == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_unreadable_image_among_good_ones_is_named(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="kaggle", n=4)
    broken = folder.image_paths["3"]
    broken.write_bytes(broken.read_bytes()[:40])  # truncated: the header survives, the pixels do not
    with pytest.raises(DataError) as caught:
        preprocess_folder(folder.root, settings())
    assert str(broken) in str(caught.value)
    assert "1 problem(s)" in str(caught.value) and "(4 image/mask pairs found)" in str(caught.value)


def test_every_bad_pair_is_reported_at_once(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=4)
    folder.image_paths["1"].write_text("not a png")
    Image.fromarray(_rect_mask((8, 8), 255)).save(folder.mask_paths["4"])
    with pytest.raises(DataError) as caught:
        preprocess_folder(folder.root, settings())
    message = str(caught.value)
    assert str(folder.image_paths["1"]) in message and str(folder.mask_paths["4"]) in message
    assert len(caught.value.problems) == 2


def test_masks_stored_as_0_1_are_recognised(tmp_path, write_pair_folder):
    as_255 = write_pair_folder(tmp_path / "a", layout="plain", n=2, mask_value=255)
    as_1 = write_pair_folder(tmp_path / "b", layout="plain", n=2, mask_value=1)
    _, masks_255, _ = preprocess_folder(as_255.root, settings())
    _, masks_1, _ = preprocess_folder(as_1.root, settings())
    assert masks_1.sum() > 0
    np.testing.assert_array_equal(masks_1, masks_255)


def test_16_bit_masks_stored_as_0_1_are_recognised(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))).save(tmp_path / "image" / "1.png")
    Image.fromarray(_rect_mask((32, 32), 1).astype(np.uint16)).save(tmp_path / "mask" / "1.png")
    _, masks, _ = preprocess_folder(tmp_path, settings())
    assert masks.sum() > 0


def test_mask_threshold_decides_grey_mask_pixels(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    for id_ in ("1", "2"):
        Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))).save(tmp_path / "image" / f"{id_}.png")
    Image.fromarray(_rect_mask((32, 32), 100)).save(tmp_path / "mask" / "1.png")  # grey region, value 100
    Image.fromarray(_rect_mask((32, 32), 255)).save(tmp_path / "mask" / "2.png")  # keeps the empty share at a half
    _, low, _ = preprocess_folder(tmp_path, settings(mask_threshold=50))
    _, high, _ = preprocess_folder(tmp_path, settings(mask_threshold=127))
    assert high[0].sum() == 0 and high[1].sum() > 0
    assert 0.15 < low[0].mean() < 0.35  # the 16x16 centre of a 32x32 mask: about a quarter


def test_a_threshold_that_empties_every_mask_is_an_error(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))).save(tmp_path / "image" / "1.png")
    Image.fromarray(_rect_mask((32, 32), 100)).save(tmp_path / "mask" / "1.png")
    with pytest.raises(DataError) as caught:
        preprocess_folder(tmp_path, settings(mask_threshold=127))
    message = str(caught.value)
    assert "empty masks: the only mask is empty" in message and str(tmp_path / "mask" / "1.png") in message
    assert "mask_threshold" in message  # the hint at the mask format rules


def test_index_table_columns_and_values(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="kaggle", n=3, size=(40, 30))
    _, _, index = preprocess_folder(folder.root, settings(metadata_columns=("county", "gender")))
    assert list(index.columns) == ["id", "image_file", "mask_file", "height", "width", "county", "gender", "gender_raw"]
    assert index["id"].tolist() == ["1", "2", "3"]
    assert index["image_file"][0] == "Chest-X-Ray/Chest-X-Ray/image/1.png"  # relative to the data folder
    assert index["mask_file"][0] == "Chest-X-Ray/Chest-X-Ray/mask/1.png"
    assert index["height"].tolist() == [40, 40, 40] and index["width"].tolist() == [30, 30, 30]
    assert index["county"].tolist() == ["Shenxhen", "Montgomery", "Shenxhen"]
    assert index["gender"].tolist() == ["female", "male", "female"]
    assert index["gender_raw"].tolist() == ["Female", "Male", "Female"]


def test_index_has_empty_metadata_without_metadata_file(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2, metadata=False)
    _, _, index = preprocess_folder(folder.root, settings())
    assert index["county"].tolist() == ["", ""] and index["ptb"].tolist() == ["", ""]


def test_save_and_load_round_trip(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="kaggle", n=3)
    chosen = settings(mask_threshold=100)
    images, masks, index = preprocess_folder(folder.root, chosen)
    out = tmp_path / "processed"
    save_processed(images, masks, index, preparation(chosen), out)
    assert sorted(p.name for p in out.iterdir()) == ["images.npy", "index.csv", "masks.npy", "settings.json"]
    loaded = load_processed(out)
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.masks, masks)
    assert loaded.images.dtype == np.uint8 and loaded.masks.dtype == np.uint8
    # everything a model needs to prepare new images the same way, the normalisation's own settings included
    assert loaded.settings == {"image_size": SIZE, "normalize": chosen.normalize, "mask_threshold": 100, "percentile_low": 1.0,
                               "percentile_high": 99.0, "clahe_clip_limit": 2.0, "clahe_tiles": 8}
    assert json.loads((out / "settings.json").read_text()) == loaded.settings
    assert loaded.index["id"].tolist() == ["1", "2", "3"]  # ids stay strings
    assert loaded.index["county"].tolist() == index["county"].tolist()
    assert loaded.index["height"].tolist() == [40, 40, 40]  # sizes come back as numbers, ids and metadata as text


def test_save_processed_replaces_an_older_output(tmp_path, write_pair_folder):
    out = tmp_path / "processed"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2)
    images, masks, index = preprocess_folder(folder.root, settings())
    save_processed(images, masks, index, preparation(settings()), out)
    assert not (out / "stale.txt").exists()
    assert len(load_processed(out).images) == 2


def test_processed_set_subset_follows_the_order_asked():
    images = np.arange(4, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), dtype=np.uint8)
    masks = (images % 2).astype(np.uint8)
    index = pd.DataFrame({"id": ["a", "b", "c", "d"], "county": ["x", "y", "x", "y"]})
    data = ProcessedSet(images, masks, index, {"image_size": 2})
    part = data.subset(["c", "a", "d"])
    assert part.index["id"].tolist() == ["c", "a", "d"]
    assert part.index.index.tolist() == [0, 1, 2]
    assert part.images[:, 0, 0].tolist() == [2, 0, 3]
    assert part.masks[:, 0, 0].tolist() == [0, 0, 1]
    assert part.settings == {"image_size": 2}
    with pytest.raises(KeyError):
        data.subset(["zzz"])


def test_one_and_two_workers_give_identical_results(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=5, size=(24, 20))
    one = preprocess_folder(folder.root, settings(workers=1))
    two = preprocess_folder(folder.root, settings(workers=2))
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    pd.testing.assert_frame_equal(one[2], two[2])


def test_the_pixel_limit_reaches_the_worker_processes(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2, size=(40, 30))
    before = max_pixels()
    set_max_pixels(1000)  # under 40 x 30: every file is refused, in whichever process reads it
    try:
        with pytest.raises(DataError) as caught:
            preprocess_folder(folder.root, settings(workers=2))
    finally:
        set_max_pixels(before)
    message = str(caught.value)
    assert "2 problem(s)" in message and "--max-pixels" in message
    assert str(folder.image_paths["1"]) in message and str(folder.image_paths["2"]) in message


# --------------------------------------------------------------------------- the stage script


def _run_stage(tmp_path, data_dir, repo_root):
    params = {
        "data": {"dir": str(data_dir)},
        "preprocess": {"image_size": SIZE, "mask_threshold": 127, "normalize": "minmax",
                       "metadata_columns": ["county", "ptb"], "workers": 1},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(repo_root / "stages" / "preprocess.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_stage_with_good_data_writes_the_processed_folder(tmp_path, write_pair_folder, repo_root):
    folder = write_pair_folder(tmp_path / "good", layout="plain", n=2, size=(40, 30))
    result = _run_stage(tmp_path, folder.root, repo_root)
    assert result.returncode == 0, result.stderr
    assert len(load_processed(tmp_path / "data" / "processed").images) == 2


def test_stage_with_a_bad_mask_exits_2_and_writes_nothing(tmp_path, write_pair_folder, repo_root):
    folder = write_pair_folder(tmp_path / "bad", layout="plain", n=2, size=(40, 30))
    bad_mask = folder.mask_paths["1"]
    Image.fromarray(_rect_mask((10, 10), 255)).save(bad_mask)
    result = _run_stage(tmp_path, folder.root, repo_root)
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr
    assert str(bad_mask) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "params.yaml"]


# --------------------------------------------------------------------------- the real samples


def test_real_kaggle_sample(kaggle_sample):
    images, masks, index = preprocess_folder(kaggle_sample, settings(image_size=64, workers=2))
    assert images.shape == masks.shape == (240, 64, 64)
    assert set(index["county"]) == {"Shenxhen", "Montgomery"}
    assert (index["county"] == "Montgomery").sum() == 48
    assert set(index["ptb"]) == {"0", "1"}
    assert index["id"].tolist() == [str(i) for i in range(1000, 1240)]
    assert set(np.unique(masks)) == {0, 1}
    lung_fraction = masks.reshape(len(masks), -1).mean(axis=1)
    # lungs cover 8% (id 1129, a small-lunged Shenzhen image: 8.4% in the full-size mask too) to 41% of an image
    assert lung_fraction.min() > 0.05 and lung_fraction.max() < 0.5
    assert np.median(lung_fraction) > 0.15
    # shrinking to 64 px keeps each mask's lung fraction: compare with the full-size 0/255 masks
    mask_dir = kaggle_sample / "Chest-X-Ray" / "Chest-X-Ray" / "mask"
    for k in range(0, 240, 24):
        full = np.asarray(Image.open(mask_dir / f"{index['id'][k]}.png")) > 127
        assert lung_fraction[k] == pytest.approx(full.mean(), abs=0.02)
    assert np.all(images.reshape(len(images), -1).max(axis=1) == 255)


def test_real_covid_sample_in_plain_layout(covid_sample):
    images, masks, index = preprocess_folder(covid_sample, settings(image_size=32, workers=2))
    assert images.shape == masks.shape == (42, 32, 32)
    assert index["county"].tolist() == [""] * 42  # no MetaData.csv
    assert (index["height"] != index["width"]).any()  # varied, non-square originals
    assert set(np.unique(masks)) == {0, 1}
    assert np.all(masks.reshape(42, -1).sum(axis=1) > 0)


def test_a_metadata_file_saved_by_excel_in_cp1252_is_read_with_a_warning(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="kaggle", n=2)
    text = folder.metadata_path.read_text().replace("Montgomery", "Montgoméry")
    folder.metadata_path.write_bytes(text.encode("cp1252"))
    scan = scan_folder(folder.root, PreprocessConfig(image_size=16, workers=1))
    notes = [f for f in scan.findings if f.kind == "MetaData.csv encoding"]
    assert len(notes) == 1 and notes[0].level == "warning" and str(folder.metadata_path) in notes[0].detail
    assert "Montgoméry" in scan.metadata["county"].tolist()

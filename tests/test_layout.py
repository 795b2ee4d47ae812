"""Tests for lungseg.data.layout (finding pairs) and lungseg.data.metadata (MetaData.csv)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from lungseg.core.errors import DataError
from lungseg.data.layout import find_layout, list_pairs, pair_files, skip_reason
from lungseg.data.metadata import read_metadata

# --------------------------------------------------------------------------- find_layout


def test_kaggle_layout_is_detected_with_its_metadata(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="kaggle")
    layout = find_layout(folder.root)
    assert layout.kind == "kaggle"
    assert layout.image_dir == folder.root / "Chest-X-Ray" / "Chest-X-Ray" / "image"
    assert layout.mask_dir == folder.root / "Chest-X-Ray" / "Chest-X-Ray" / "mask"
    assert layout.metadata_path == folder.root / "MetaData.csv"


def test_plain_layout_is_detected_and_metadata_is_optional(tmp_path, write_pair_folder):
    with_meta = write_pair_folder(tmp_path / "with", layout="plain", metadata=True)
    without = write_pair_folder(tmp_path / "without", layout="plain", metadata=False)
    layout = find_layout(with_meta.root)
    assert (layout.kind, layout.image_dir, layout.mask_dir) == ("plain", with_meta.root / "image", with_meta.root / "mask")
    assert layout.metadata_path == with_meta.root / "MetaData.csv"
    layout = find_layout(without.root)
    assert layout.kind == "plain"
    assert layout.metadata_path is None


def test_kaggle_layout_without_metadata_is_accepted(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="kaggle", metadata=False)
    layout = find_layout(folder.root)
    assert layout.kind == "kaggle"
    assert layout.metadata_path is None


def test_find_layout_accepts_a_string_path(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain")
    assert find_layout(str(folder.root)).image_dir == folder.root / "image"


def test_missing_folder_raises_data_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as caught:
        find_layout(missing)
    message = str(caught.value)
    assert str(missing) in message
    assert "does not exist" in message


def test_a_missing_relative_folder_is_also_named_as_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data folder data/raw/own \(" + re.escape(str(tmp_path)) + r"/data/raw/own\) does not exist"):
        find_layout("data/raw/own")


def test_wrong_folder_raises_data_error_saying_what_was_expected(tmp_path):
    wrong = tmp_path / "holiday_photos"
    (wrong / "images").mkdir(parents=True)  # "images", not "image"
    (wrong / "mask").mkdir()
    with pytest.raises(DataError) as caught:
        find_layout(wrong)
    message = str(caught.value)
    assert str(wrong) in message
    assert "image/" in message and "mask/" in message
    assert "Chest-X-Ray" in message  # names the Kaggle layout it looked for


def test_image_folder_without_mask_folder_is_not_a_layout(tmp_path):
    (tmp_path / "image").mkdir()
    with pytest.raises(DataError, match="not a lungseg data folder"):
        find_layout(tmp_path)


# --------------------------------------------------------------------------- list_pairs


def test_list_pairs_pairs_by_stem(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=3)
    pairs = list_pairs(find_layout(folder.root))
    assert list(pairs.columns) == ["id", "image_path", "mask_path"]
    assert pairs["id"].tolist() == ["1", "2", "3"]
    for _, row in pairs.iterrows():
        assert row.image_path == folder.image_paths[row.id]
        assert row.mask_path == folder.mask_paths[row.id]


def test_unpaired_image_and_mask_are_listed_together_in_one_error(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", ids=["1", "2", "3"])
    lonely_image = folder.image_dir / "4.png"
    lonely_mask = folder.mask_dir / "5.png"
    Image.new("L", (8, 8)).save(lonely_image)
    Image.new("L", (8, 8)).save(lonely_mask)
    with pytest.raises(DataError) as caught:
        list_pairs(find_layout(folder.root))
    error = caught.value
    assert len(error.problems) == 2
    message = str(error)
    assert str(lonely_image) in message and "image without a mask" in message
    assert str(lonely_mask) in message and "mask without an image" in message


def test_same_id_twice_is_an_error(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", ids=["1", "2"])
    Image.new("L", (40, 30)).save(folder.image_dir / "1.jpg")
    with pytest.raises(DataError) as caught:
        list_pairs(find_layout(folder.root))
    message = str(caught.value)
    assert "'1' appears twice" in message
    assert str(folder.image_dir / "1.png") in message and str(folder.image_dir / "1.jpg") in message


def test_empty_image_folder_is_an_error(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    with pytest.raises(DataError) as caught:
        list_pairs(find_layout(tmp_path))
    assert "no images found" in str(caught.value)
    assert str(tmp_path / "image") in str(caught.value)


def test_non_image_and_hidden_files_are_ignored(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2)
    (folder.image_dir / "README.txt").write_text("notes")
    (folder.image_dir / ".3.png").write_bytes(b"")  # e.g. a macOS resource fork
    (folder.mask_dir / "Thumbs.db").write_bytes(b"")
    assert list_pairs(find_layout(folder.root))["id"].tolist() == ["1", "2"]


def test_ids_are_in_natural_order(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", ids=["10", "2", "1", "b", "a"], size=(8, 8))
    assert list_pairs(find_layout(folder.root))["id"].tolist() == ["1", "2", "10", "a", "b"]


def test_jpeg_and_uppercase_suffixes_are_paired(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "image" / "7.JPG", format="JPEG")
    Image.new("L", (8, 8)).save(tmp_path / "mask" / "7.png")
    pairs = list_pairs(find_layout(tmp_path))
    assert pairs["id"].tolist() == ["7"]
    assert pairs["image_path"][0].name == "7.JPG"


# --------------------------------------------------------------------------- read_metadata


def _write_csv(path, text: str):
    path.write_text(text)
    return path


def test_read_metadata_keeps_only_the_columns_asked_for(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2)
    table = read_metadata(folder.metadata_path, ["1", "2"], ["county", "ptb"])
    assert list(table.columns) == ["id", "county", "ptb", "ptb_raw"]
    assert table["id"].tolist() == ["1", "2"]
    assert table["county"].tolist() == ["Shenxhen", "Montgomery"]
    assert table["ptb"].tolist() == ["0", "1"]


def test_read_metadata_strips_stray_spaces_and_commas(tmp_path):
    path = _write_csv(
        tmp_path / "MetaData.csv",
        'id, gender ,age,county,ptb,remarks\n'
        ' 1 ,"Male,", 35 , Shenxhen ,1,\n'
        '2,"female ,",40,Montgomery,0,"pleural effusion,"\n',
    )
    table = read_metadata(path, ["1", "2"], ["gender", "age", "county", "remarks"])
    assert table["gender"].tolist() == ["male", "female"]
    assert table["gender_raw"].tolist() == ["Male,", "female ,"]
    assert table["age"].tolist() == ["35", "40"]
    assert table["county"].tolist() == ["Shenxhen", "Montgomery"]
    assert table["remarks"].tolist() == ["", "pleural effusion"]


def test_read_metadata_follows_the_order_of_ids_and_fills_unknown_ids(tmp_path):
    path = _write_csv(tmp_path / "MetaData.csv", "id,county,ptb\n1,Shenxhen,0\n2,Montgomery,1\n")
    table = read_metadata(path, ["2", "99", "1"], ["county"])
    assert table["id"].tolist() == ["2", "99", "1"]
    assert table["county"].tolist() == ["Montgomery", "", "Shenxhen"]


def test_read_metadata_missing_column_is_named(tmp_path):
    path = _write_csv(tmp_path / "MetaData.csv", "id,gender,age\n1,Male,30\n")
    with pytest.raises(DataError) as caught:
        read_metadata(path, ["1"], ["county", "age"])
    message = str(caught.value)
    assert "county" in message and str(path) in message
    assert "'age'" not in message.split("it has")[0]  # only the missing one is reported as missing


def test_read_metadata_duplicated_id_is_an_error(tmp_path):
    path = _write_csv(tmp_path / "MetaData.csv", "id,county\n1,Shenxhen\n1 ,Montgomery\n")
    with pytest.raises(DataError, match="more than once"):
        read_metadata(path, ["1"], ["county"])


def test_read_metadata_without_a_file_fills_empty_strings():
    table = read_metadata(None, ["1", "2"], ["county", "ptb"])
    assert list(table.columns) == ["id", "county", "ptb", "ptb_raw"]
    assert table["county"].tolist() == ["", ""]
    assert table["ptb"].tolist() == ["", ""]


def test_flat_kaggle_layout_and_metadata_beside_the_pairs(tmp_path):
    root = tmp_path / "data"
    for sub in ("image", "mask"):
        (root / "Chest-X-Ray" / sub).mkdir(parents=True)
        Image.new("L", (8, 8)).save(root / "Chest-X-Ray" / sub / "1.png")
    (root / "Chest-X-Ray" / "MetaData.csv").write_text("id,county\n1,Shenxhen\n")
    layout = find_layout(root)
    assert layout.kind == "kaggle-flat"
    assert layout.image_dir == root / "Chest-X-Ray" / "image"
    assert layout.metadata_path == root / "Chest-X-Ray" / "MetaData.csv"
    assert list_pairs(layout)["id"].tolist() == ["1"]


def test_data_error_lists_at_most_20_problems_and_counts_the_rest(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    for i in range(25):
        (tmp_path / "image" / f"{i}.png").write_bytes(b"")
    with pytest.raises(DataError) as caught:
        list_pairs(find_layout(tmp_path))
    assert len(caught.value.problems) == 25
    assert str(caught.value).count("\n  - ") == 20
    assert "... and 5 more" in str(caught.value)


def test_tiff_and_bmp_pair_with_png_masks(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "image" / "1.tif")
    Image.new("L", (8, 8)).save(tmp_path / "image" / "2.BMP", format="BMP")
    Image.new("L", (8, 8)).save(tmp_path / "image" / "3.tiff")
    for i in (1, 2, 3):
        Image.new("L", (8, 8)).save(tmp_path / "mask" / f"{i}.png")
    pairs = list_pairs(find_layout(tmp_path))
    assert pairs["id"].tolist() == ["1", "2", "3"]


def test_skipped_files_are_listed_but_do_not_block_pairing(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2)
    readme, resource_fork, thumbs = folder.image_dir / "README.txt", folder.image_dir / "._1.png", folder.mask_dir / "Thumbs.db"
    for path in (readme, resource_fork, thumbs):
        path.write_bytes(b"")
    subfolder = folder.image_dir / "subfolder"
    subfolder.mkdir()  # a subfolder is not read either, and check says so
    pairing = pair_files(find_layout(folder.root))
    assert pairing.problems == []
    assert pairing.pairs["id"].tolist() == ["1", "2"]
    assert sorted(pairing.skipped) == sorted([readme, resource_fork, thumbs, subfolder])
    assert skip_reason(resource_fork) == f"{resource_fork}: hidden file, not read"
    assert str(readme) in skip_reason(readme) and ".dcm" in skip_reason(readme)
    assert skip_reason(subfolder) == (f"{subfolder}: a subfolder, not read (lungseg reads the files in image/ and "
                                      "mask/, not below them)")


def test_names_differing_only_in_unicode_normalisation_pair_up(tmp_path):
    import unicodedata

    composed = "r\u00f6ntgen_1"  # 'röntgen_1' as most systems write it (NFC)
    decomposed = unicodedata.normalize("NFD", composed)  # as macOS stores it: o + combining diaeresis
    assert composed != decomposed
    for kind, name in (("image", composed), ("mask", decomposed)):
        (tmp_path / kind).mkdir()
        Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / kind / f"{name}.png")
    pairing = pair_files(find_layout(tmp_path))
    assert pairing.problems == [] and pairing.pairs["id"].tolist() == [composed]


def test_an_unpaired_mask_names_the_image_of_another_format_beside_it(tmp_path):
    for kind in ("image", "mask"):
        (tmp_path / kind).mkdir()
    (tmp_path / "image" / "x.heic").write_bytes(b"not read")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "mask" / "x.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "mask" / "y.png")
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / "image" / "z.png")
    problems = pair_files(find_layout(tmp_path)).problems
    assert f"mask without an image: {tmp_path / 'mask' / 'x.png'} ({tmp_path / 'image' / 'x.heic'} is there, but not a format lungseg reads" in problems[1]
    assert problems[2] == f"mask without an image: {tmp_path / 'mask' / 'y.png'} (no {tmp_path / 'image'}/y.* found)"


def test_image_folder_with_only_other_files_says_what_it_found(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    (tmp_path / "image" / "scan.heic").write_bytes(b"")
    with pytest.raises(DataError) as caught:
        list_pairs(find_layout(tmp_path))
    message = str(caught.value)
    assert "no images found" in message and ".tif" in message and ".dcm" in message and "scan.heic" in message

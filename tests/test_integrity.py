"""Dataset integrity: `lungseg check` and the same checks inside preprocess."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lungseg.cli import main as cli
from lungseg.core.config import PreprocessConfig
from lungseg.core.errors import DataError
from lungseg.data.integrity import errors, summary, warnings_of
from lungseg.data.metadata import normalise_age, normalise_gender, normalise_ptb, read_metadata
from lungseg.data.preprocess import preprocess_folder, scan_folder

SETTINGS = PreprocessConfig(image_size=16, workers=1, metadata_columns=("county", "ptb", "gender", "age"))


def messy_folder(tmp_path, write_pair_folder):
    """Ten pairs, nine of them broken in a different way each (plus metadata trouble)."""
    folder = write_pair_folder(tmp_path / "data", n=10, size=(40, 30))
    masks, images = folder.mask_paths, folder.image_paths
    masks["1"].unlink()                                                   # image without a mask
    images["2"].unlink()                                                  # mask without an image
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(images["3"].with_suffix(".jpg"))  # id 3 twice
    images["4"].write_bytes(images["4"].read_bytes()[:60])                # truncated
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(masks["5"])        # wrong size
    Image.fromarray(np.full((40, 30), 77, np.uint8)).save(images["6"])    # constant image
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(masks["7"])        # empty mask
    Image.fromarray(np.full((40, 30), 255, np.uint8)).save(masks["8"])    # full mask
    grey = np.zeros((40, 30), np.uint8)
    grey[5:35, 5:25] = np.linspace(60, 255, 20, dtype=np.uint8)           # many grey levels
    Image.fromarray(grey).save(masks["9"])
    with open(folder.metadata_path, "a") as handle:
        handle.write("99,Male,,Shenxhen,0,\n")                             # MetaData id without files
    rows = folder.metadata_path.read_text().splitlines()
    kept = [r for r in rows if not r.startswith("10,")]                    # id 10 without a row
    kept[1] = kept[1].replace("Female", "femal").replace(",30,", ",16month,")
    kept.append("bad,???,old,Shenxhen,maybe,")
    folder.metadata_path.write_text("\n".join(kept) + "\n")
    return folder


EXPECTED = {
    ("error", "unpaired or duplicate file"): 3,
    ("error", "unreadable file"): 1,
    ("error", "size mismatch"): 1,
    ("warning", "empty mask"): 1,
    ("warning", "almost-full mask"): 1,
    ("warning", "constant image"): 2,  # 6.png, and 3.jpg (the first of the two files with id 3)
    ("warning", "mask not binary"): 1,
    ("warning", "MetaData id without files"): 2,
    ("warning", "file without MetaData row"): 1,
    ("warning", "unreadable metadata value"): 3,
}


def test_scan_finds_every_problem_once_with_its_level(tmp_path, write_pair_folder):
    scan = scan_folder(messy_folder(tmp_path, write_pair_folder).root, SETTINGS)
    table = summary(scan.findings)
    counts = {(row.level, row.kind): row.count for row in table.itertuples()}
    assert counts == EXPECTED


def test_preprocess_lists_every_error_and_writes_nothing(tmp_path, write_pair_folder):
    folder = messy_folder(tmp_path, write_pair_folder)
    with pytest.raises(DataError) as caught:
        preprocess_folder(folder.root, SETTINGS)
    message = str(caught.value)
    assert message.startswith("5 problem(s)") and "(8 image/mask pairs found)" in message
    for name in ["1.png", "2.png", "3.jpg", "4.png", "5.png"]:
        assert name in message, name
    assert "empty mask" not in message  # warnings do not block


def test_warnings_alone_do_not_block(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", n=3)
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(folder.mask_paths["2"])
    scan = scan_folder(folder.root, SETTINGS)
    assert errors(scan.findings) == [] and [f.kind for f in warnings_of(scan.findings)] == ["empty mask"]
    images, masks, index = preprocess_folder(folder.root, SETTINGS)
    assert len(index) == 3 and masks[1].sum() == 0


def test_check_command_prints_a_summary_and_exits_1_on_errors(tmp_path, write_pair_folder, capsys):
    folder = messy_folder(tmp_path, write_pair_folder)
    assert cli(["check", str(folder.root), "--params", str(tmp_path / "none.yaml")]) == 1
    out = capsys.readouterr().out
    assert "6 usable pairs, 5 error(s), 9 warning(s)" in out  # default params: only ptb metadata is read
    assert "size mismatch" in out and "constant image" in out and "almost-full mask" in out


def test_check_command_on_clean_data_exits_0(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", n=3)
    done = subprocess.run([sys.executable, "-m", "lungseg.cli", "check", str(folder.root)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 usable pairs, 0 error(s), 0 warning(s)" in done.stdout


def test_check_command_on_a_wrong_folder_says_what_it_expected(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert cli(["check", str(tmp_path / "photos")]) == 2
    assert "expected an image/ and a mask/ folder" in capsys.readouterr().err


@pytest.mark.parametrize("raw, expected", [("Male,", "male"), ("femal", "female"), ("F", "female"), (" M ", "male"),
                                           ("", ""), ("???", "unknown")])
def test_gender_is_normalised(raw, expected):
    assert normalise_gender(raw) == expected


@pytest.mark.parametrize("raw, expected", [("39yr", "39"), ("045Y", "45"), ("16month", "1.33"), ("52", "52"),
                                           ("3 days", "0.01"), ("old", ""), ("", "")])
def test_age_is_normalised_to_years(raw, expected):
    assert normalise_age(raw) == expected


def test_ptb_is_normalised():
    assert [normalise_ptb(v) for v in ["0", "1,", " 1", "yes", "x"]] == ["0", "1", "1", "1", ""]


def test_metadata_keeps_the_raw_value_beside_the_normalised_one(tmp_path):
    path = tmp_path / "MetaData.csv"
    path.write_text('id,gender,age,county,ptb,remarks\n1,"Male,",16month,Shenxhen ,1,x\n')
    table = read_metadata(path, ["1"], ["gender", "age", "county"])
    row = table.iloc[0].to_dict()
    assert row == {"id": "1", "gender": "male", "gender_raw": "Male,", "age": "1.33", "age_raw": "16month", "county": "Shenxhen"}


# --------------------------------------------------------------------------- masks read as something else than meant


def _empty_masks(folder, ids):
    for id_ in ids:
        Image.fromarray(np.zeros((40, 30), np.uint8)).save(folder.mask_paths[id_])


def test_all_masks_empty_is_one_error_naming_a_few(tmp_path, write_pair_folder, capsys):
    folder = write_pair_folder(tmp_path / "data", n=5)
    _empty_masks(folder, folder.ids)
    scan = scan_folder(folder.root, SETTINGS)
    assert [(f.level, f.kind) for f in scan.findings] == [("error", "empty masks")]
    detail = scan.findings[0].detail
    assert detail.startswith("all 5 masks are empty")
    assert all(str(folder.mask_paths[i]) in detail for i in ["1", "2", "3"]) and str(folder.mask_paths["4"]) not in detail
    assert "palette index" in detail and "mask_threshold" in detail  # the mask format rules
    with pytest.raises(DataError, match="all 5 masks are empty"):
        preprocess_folder(folder.root, SETTINGS)
    assert cli(["check", str(folder.root), "--params", str(tmp_path / "none.yaml")]) == 1
    assert "empty masks" in capsys.readouterr().out


def test_more_than_half_empty_is_an_error_half_is_not(tmp_path, write_pair_folder):
    five = write_pair_folder(tmp_path / "five", n=5)
    _empty_masks(five, ["1", "3", "5"])
    found = errors(scan_folder(five.root, SETTINGS).findings)
    assert len(found) == 1 and found[0].detail.startswith("3 of 5 masks are empty")
    four = write_pair_folder(tmp_path / "four", n=4)
    _empty_masks(four, ["1", "2"])
    scan = scan_folder(four.root, SETTINGS)
    assert errors(scan.findings) == [] and [f.kind for f in scan.findings] == ["empty mask", "empty mask"]


def test_colour_mask_with_several_colours_is_a_warning(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", n=2)
    colours = np.zeros((40, 30, 3), np.uint8)
    colours[10:30, 3:12] = (255, 0, 0)
    colours[10:30, 18:27] = (0, 0, 255)
    Image.fromarray(colours).save(folder.mask_paths["2"])
    scan = scan_folder(folder.root, SETTINGS)
    assert [(f.level, f.kind) for f in scan.findings] == [("warning", "mask with several colours")]
    assert str(folder.mask_paths["2"]) in scan.findings[0].detail and "2 colours besides black" in scan.findings[0].detail


# --------------------------------------------------------------------------- files not read, EXIF orientation


def test_skipped_files_are_warnings_that_check_lists(tmp_path, write_pair_folder, capsys):
    folder = write_pair_folder(tmp_path / "data", n=2)
    notes, hidden = folder.image_dir / "notes.txt", folder.mask_dir / ".DS_Store"
    notes.write_text("x")
    hidden.write_bytes(b"")
    scan = scan_folder(folder.root, SETTINGS)
    assert [(f.level, f.kind) for f in scan.findings] == [("warning", "skipped file")] * 2
    assert {str(notes), str(hidden)} == {f.detail.split(": ")[0] for f in scan.findings}
    assert cli(["check", str(folder.root), "--params", str(tmp_path / "none.yaml"), "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "2 usable pairs, 0 error(s), 2 warning(s)" in out and "skipped file" in out
    assert str(notes) in out and str(hidden) in out


def test_exif_rotated_jpeg_lines_up_with_its_upright_mask(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    upright = np.full((40, 30), 30, np.uint8)
    upright[4:20, 3:12] = 230  # a bright patch at the top left, where the mask is drawn
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned anticlockwise; a viewer turns it clockwise
    Image.fromarray(np.rot90(upright, 1).copy()).save(tmp_path / "image" / "1.jpg", quality=95, exif=exif)
    mask = np.zeros((40, 30), np.uint8)
    mask[4:20, 3:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask" / "1.png")
    settings = PreprocessConfig(image_size=16, workers=1, normalize="none", metadata_columns=("ptb",))
    scan = scan_folder(tmp_path, settings)
    assert errors(scan.findings) == []  # no size mismatch: both are 30 wide, 40 high once upright
    assert [f.kind for f in warnings_of(scan.findings)] == ["orientation differs"]
    assert "EXIF orientation 1, its image" in scan.findings[0].detail and "has 6" in scan.findings[0].detail
    images, masks, _ = preprocess_folder(tmp_path, settings)
    lung = masks[0].astype(bool)
    assert images[0][lung].mean() > 200 and images[0][~lung].mean() < 80


def _outline_folder(root, real_mask, width: int, n: int = 3):
    """n pairs whose masks are the outline (`width` px wide) of a real lung mask."""
    from scipy import ndimage

    full = np.asarray(Image.open(real_mask)) > 127
    outline = full & ~ndimage.binary_erosion(full, iterations=width)
    for kind in ("image", "mask"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray((np.random.default_rng(k).random(full.shape) * 255).astype(np.uint8)).save(root / "image" / f"{k}.png")
        Image.fromarray(outline.astype(np.uint8) * 255).save(root / "mask" / f"{k}.png")
    return root


@pytest.mark.parametrize("width", [3, 8])
def test_outline_masks_drawn_from_real_masks_are_an_error_naming_each_file(kaggle_sample, tmp_path, width, capsys):
    real_mask = sorted((kaggle_sample / "Chest-X-Ray" / "Chest-X-Ray" / "mask").glob("*.png"))[0]
    folder = _outline_folder(tmp_path / "outlines", real_mask, width)
    assert cli(["check", str(folder), "--params", str(tmp_path / "absent.yaml")]) == 1
    out = capsys.readouterr().out
    for k in range(3):
        assert f"error: mask looks like an outline: {folder / 'mask' / f'{k}.png'}: " in out
    assert "binary_fill_holes" in out
    with pytest.raises(DataError, match="mask looks like an outline"):
        preprocess_folder(folder, PreprocessConfig(image_size=128, workers=1))


def test_the_real_masks_are_not_outlines(kaggle_sample, covid_sample):
    from lungseg.data.images import read_resized
    from lungseg.data.integrity import outline_finding
    from lungseg.data.preprocess import finish_mask

    settings = PreprocessConfig()
    masks = [*kaggle_sample.rglob("mask/*.png"), *covid_sample.rglob("mask/*.png")]
    assert len(masks) == 282
    flagged = [path for path in masks if outline_finding(path, finish_mask(read_resized(path, 128, is_mask=True).values, settings))]
    assert flagged == []

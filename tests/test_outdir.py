"""Tests for lungseg.inference.outdir: the --out folder rules shared by predict, evaluate and export."""

from __future__ import annotations

import os

import pytest

from lungseg.core.errors import DataError
from lungseg.inference.outdir import OutputNames, check_out, input_conflicts, remove_stale

PREDICT = OutputNames(files=("predictions.csv",), folders=("masks", "overlays"), suffix=".png")


def write(path, text: str = "x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- inputs


def test_out_may_not_be_hold_or_lie_inside_an_input_folder(tmp_path):
    data = tmp_path / "ds" / "images"
    data.mkdir(parents=True)
    assert input_conflicts(data, [data]) == [f"{data} is the input folder {data}"]
    assert input_conflicts(tmp_path / "ds", [data]) == [f"{tmp_path / 'ds'} holds the input folder {data}"]
    assert input_conflicts(data / "new" / "deeper", [data]) == [f"{data / 'new' / 'deeper'} lies inside the input folder {data}"]
    assert input_conflicts(tmp_path / "elsewhere", [data]) == []
    assert input_conflicts(tmp_path / "ds" / "masks", [data]) == []  # a sibling is fine


def test_out_may_not_be_or_hold_an_input_files_folder_but_may_lie_below_it(tmp_path):
    model = write(tmp_path / "results" / "best.pth")
    assert input_conflicts(tmp_path / "results", input_files=[model]) == [f"{tmp_path / 'results'} is the folder of the input file {model}"]
    assert input_conflicts(tmp_path, input_files=[model]) == [f"{tmp_path} holds the input file {model}"]
    assert input_conflicts(tmp_path / "results" / "preds", input_files=[model]) == []


def test_paths_are_compared_after_resolving_dots_and_links(tmp_path):
    data = tmp_path / "ds" / "images"
    data.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "ds")
    assert input_conflicts(tmp_path / "link", [data])  # the link is ds
    assert input_conflicts(data / ".." / "..", [data])
    assert input_conflicts(tmp_path / "link" / "images" / "out", [str(data)])


def test_an_input_file_given_through_a_link_protects_both_folders(tmp_path):
    real = write(tmp_path / "store" / "x.png")
    (tmp_path / "view").mkdir()
    (tmp_path / "view" / "x.png").symlink_to(real)
    assert input_conflicts(tmp_path / "view", input_files=[tmp_path / "view" / "x.png"])
    assert input_conflicts(tmp_path / "store", input_files=[tmp_path / "view" / "x.png"])


def test_every_conflict_is_listed_and_nothing_passes_even_with_overwrite(tmp_path):
    images = (tmp_path / "ds" / "images")
    images.mkdir(parents=True)
    model = write(tmp_path / "ds" / "model.pth")
    with pytest.raises(DataError) as caught:
        check_out(tmp_path / "ds", PREDICT, overwrite=True, input_folders=[images], input_files=[model])
    message = str(caught.value)
    assert "not even with --overwrite" in message
    assert f"holds the input folder {images}" in message and f"is the folder of the input file {model}" in message


# --------------------------------------------------------------------------- existing files


def test_a_new_or_empty_folder_passes(tmp_path):
    assert check_out(tmp_path / "new", PREDICT) == tmp_path / "new"
    (tmp_path / "empty" / "masks").mkdir(parents=True)  # empty folders hold nothing to lose
    check_out(tmp_path / "empty", PREDICT)


def test_hidden_files_neither_count_nor_block(tmp_path):
    write(tmp_path / "out" / ".DS_Store")
    write(tmp_path / "out" / "masks" / ".x.tmp-1-abc.png")  # a killed writer's temporary
    write(tmp_path / "out" / ".git" / "config")
    check_out(tmp_path / "out", PREDICT)


def test_a_folder_with_a_file_is_refused_without_overwrite(tmp_path):
    write(tmp_path / "out" / "deep" / "inside" / "notes.txt")
    with pytest.raises(DataError, match=r"already holds 1 file\(s\) \(.*notes.txt\).*--overwrite"):
        check_out(tmp_path / "out", PREDICT)
    check_out(tmp_path / "out", PREDICT, overwrite=True)  # another name: left alone, so no conflict


def test_a_link_counts_as_something_the_folder_holds(tmp_path):
    (tmp_path / "truth").mkdir()
    write(tmp_path / "truth" / "1.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "masks").symlink_to(tmp_path / "truth")  # writing masks/ would write into truth/
    with pytest.raises(DataError, match="already holds"):
        check_out(tmp_path / "out", PREDICT)
    with pytest.raises(DataError, match="not overwritten"):
        check_out(tmp_path / "out", PREDICT, overwrite=True)


@pytest.mark.parametrize("foreign", ["masks/readme.txt", "masks/sub/1.png", "overlays/1.jpg", "predictions.csv/x"])
def test_overwrite_refuses_files_where_only_lungseg_writes(tmp_path, foreign):
    write(tmp_path / "out" / "masks" / "1.png")
    write(tmp_path / "out" / foreign)
    with pytest.raises(DataError) as caught:
        check_out(tmp_path / "out", PREDICT, overwrite=True)
    assert str(tmp_path / "out" / foreign) in str(caught.value) and "move them away" in str(caught.value)


def test_out_that_is_a_file_is_refused(tmp_path):
    write(tmp_path / "out")
    with pytest.raises(DataError, match="exists and is not a folder"):
        check_out(tmp_path / "out", PREDICT, overwrite=True)


# --------------------------------------------------------------------------- stale outputs


def test_remove_stale_deletes_only_the_earlier_runs_outputs(tmp_path):
    out = tmp_path / "out"
    kept = [write(out / "predictions.csv"), write(out / "masks" / "a.png"), write(out / "overlays" / "a.png")]
    stale = [write(out / "masks" / "b.png"), write(out / "overlays" / "b.png")]
    untouched = [write(out / "notes.txt"), write(out / "masks" / ".hidden.png"), write(out / "mine" / "b.png")]
    removed = remove_stale(out, PREDICT, kept)
    assert sorted(removed) == sorted(stale)
    assert all(path.exists() for path in kept + untouched) and not any(path.exists() for path in stale)


def test_remove_stale_drops_output_folders_it_empties(tmp_path):
    out = tmp_path / "out"
    table = write(out / "predictions.csv")
    write(out / "overlays" / "a.png")
    remove_stale(out, PREDICT, [table])
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv"]


def test_remove_stale_recognises_a_written_file_under_another_spelling(tmp_path):
    """On a case-insensitive disk masks/X.png is masks/x.png: the same file (inode) is kept."""
    out = tmp_path / "out"
    written = write(out / "masks" / "x.png")
    os.link(written, out / "masks" / "X.png")
    remove_stale(out, PREDICT, [written])
    assert (out / "masks" / "X.png").exists() and written.exists()


def test_a_folder_that_cannot_be_written_is_refused_before_anything_is_done(tmp_path):
    # /proc refuses new entries to every user, root included (the tests may run as root, which
    # permission bits do not stop)
    with pytest.raises(DataError, match=r"--out /proc/lungseg-out: cannot write there \(.*\); nothing was written"):
        check_out("/proc/lungseg-out", PREDICT)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(DataError, match="cannot write there"):
        check_out(blocked / "new" / "out", PREDICT)  # a new folder whose parent cannot be made


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; /proc covers it above")
def test_a_read_only_folder_is_refused(tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        with pytest.raises(DataError, match="cannot write there"):
            check_out(tmp_path / "ro", PREDICT)
        with pytest.raises(DataError, match="cannot write there"):
            check_out(tmp_path / "ro" / "new", PREDICT)
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_the_write_check_leaves_no_trace(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    assert check_out(out, PREDICT) == out
    assert not (tmp_path / "a").exists()  # the folders it made to probe are gone again
    (tmp_path / "kept").mkdir()
    check_out(tmp_path / "kept", PREDICT)
    assert list((tmp_path / "kept").iterdir()) == []

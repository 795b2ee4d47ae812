import os

import numpy as np
import pandas as pd
import pytest

from lungseg.io import atomic_path, save_npy, sweep_folder, write_csv, write_json


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_file_appears_only_when_the_body_succeeds(tmp_path):
    target = tmp_path / "sub" / "plot.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".png" and tmp.name.startswith(".plot.tmp-")
        tmp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    assert leftovers(target.parent) == []


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed half-way")
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_directory_is_swapped_whole(tmp_path):
    target = tmp_path / "processed"
    target.mkdir()
    (target / "old.npy").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.npy").write_text("new")
    assert sorted(os.listdir(target)) == ["new.npy"]
    assert leftovers(tmp_path) == []


def test_failed_directory_write_keeps_the_old_directory(tmp_path):
    target = tmp_path / "processed"
    target.mkdir()
    (target / "old.npy").write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "partial.npy").write_text("partial")
            raise ValueError("bad data found late")
    assert sorted(os.listdir(target)) == ["old.npy"]
    assert leftovers(tmp_path) == []


def test_writers_round_trip(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    save_npy(array, tmp_path / "a.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    write_csv(pd.DataFrame({"id": ["7"], "dice": [0.5]}), tmp_path / "t.csv")
    assert pd.read_csv(tmp_path / "t.csv").to_dict("list") == {"id": [7], "dice": [0.5]}
    write_json({"test": {"dice": 0.9}}, tmp_path / "m.json")
    assert (tmp_path / "m.json").read_text().startswith("{\n")


def test_sweep_folder_removes_dead_writers_temporaries_only(tmp_path):
    dead = 2**22 + 7  # above the default pid_max: no process has it
    stale = tmp_path / f".a.tmp-{dead}-abc.png"
    live = tmp_path / f".b.tmp-{os.getpid()}-abc.png"
    user = tmp_path / ".hidden-notes.txt"
    for path in (stale, live, user):
        path.write_text("x")
    sweep_folder(tmp_path)
    assert not stale.exists() and live.exists() and user.exists()


def test_atomic_path_without_sweep_leaves_other_temporaries(tmp_path):
    stale = tmp_path / f".a.tmp-{2**22 + 7}-abc.png"
    stale.write_text("x")
    with atomic_path(tmp_path / "a.png", sweep=False) as tmp:
        tmp.write_text("new")
    assert stale.exists() and (tmp_path / "a.png").read_text() == "new"
    with atomic_path(tmp_path / "a.png") as tmp:
        tmp.write_text("newer")
    assert not stale.exists()

"""Tests for lungseg.training.tracking: per-epoch metrics on disk as each epoch ends, through dvclive."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from lungseg.core.errors import LungsegError
from lungseg.training.tracking import SERIES, EpochLog, epoch_line, read_history


def row(epoch: int) -> dict:
    return {"epoch": epoch, "train_loss": 1 / epoch, "val_loss": 1.5 / epoch, "val_dice": 0.5 + epoch / 10,
            "val_iou": 0.4 + epoch / 10, "lr": 1e-3 / epoch, "seconds": 3.25 * epoch}


def test_each_epoch_is_on_disk_when_it_ends(tmp_path, capsys):
    log = EpochLog(tmp_path / "live", epochs=3)
    for epoch in (1, 2):
        log(row(epoch), best_epoch=epoch, best_dice=row(epoch)["val_dice"])
        summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
        assert summary == {"best_epoch": epoch, "val_dice": row(epoch)["val_dice"], "step": epoch}
        assert read_history(tmp_path / "live")["epoch"].tolist() == list(range(1, epoch + 1))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 1/3  train_loss 1.0000  val_loss 1.5000  val_dice 0.6000  val_iou 0.5000")
    assert lines[1].endswith("6.50 s  (best: epoch 2, val_dice 0.7000)")


def test_history_reads_back_every_series_and_nothing_that_changes_between_runs(tmp_path):
    """No timestamps or seconds in the files: the same training writes the same bytes."""
    written = []
    for run in ("a", "b"):
        log = EpochLog(tmp_path / run, epochs=2)
        for epoch in (1, 2):
            log(row(epoch) | {"seconds": 1.0 if run == "a" else 9.0}, 1, 0.6)
        written.append({p.relative_to(tmp_path / run): p.read_bytes() for p in sorted((tmp_path / run).rglob("*")) if p.is_file()})
    assert written[0] == written[1]
    assert {str(p) for p in written[0]} == {"metrics.json"} | {f"plots/metrics/{name}.tsv" for name in SERIES}
    history = read_history(tmp_path / "a")
    expected = pd.DataFrame([row(1), row(2)]).drop(columns="seconds")
    pd.testing.assert_frame_equal(history, expected[["epoch", *SERIES]], check_dtype=False)


def test_a_new_log_starts_from_an_empty_history(tmp_path):
    first = EpochLog(tmp_path / "live", epochs=2)
    first(row(1), 1, 0.6)
    first(row(2), 2, 0.7)
    EpochLog(tmp_path / "live", epochs=1)(row(1), 1, 0.6)
    assert read_history(tmp_path / "live")["epoch"].tolist() == [1]


def test_in_a_git_repository_without_a_commit_no_dvc_file_is_written(tmp_path, monkeypatch):
    """dvclive's own DVC integration fails in a repository with no commit, and runs `dvc init`
    where there is no DVC project; lungseg's log only writes its files."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    EpochLog("live", epochs=1)(row(1), 1, 0.6)
    assert (tmp_path / "live" / "metrics.json").is_file()
    assert not list(tmp_path.rglob("dvc.yaml")) and not (tmp_path / ".dvc").exists()


def test_missing_history_names_the_file_and_the_stage(tmp_path):
    with pytest.raises(LungsegError, match="train_loss.tsv not found: run the train stage"):
        read_history(tmp_path / "live")


def test_epoch_line_names_every_series():
    line = epoch_line(row(4), 10, 3, 0.95)
    assert line.startswith("epoch 4/10") and all(name in line for name in SERIES)

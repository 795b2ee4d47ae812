"""Per-epoch training metrics, written the moment each epoch ends, with dvclive (DVC's own logger).

While `dvc repro` or `dvc exp run` trains, `dvc exp show`, `dvc queue logs` and the VS Code
DVC extension read these files, so a run shows its progress instead of nothing until the end.
The folder holds:

- `metrics.json`: the few numbers compared between runs (the epoch reached, and the best epoch
  so far with its validation Dice); at the end, the kept epoch. dvc.yaml declares it as metrics.
- `plots/metrics/<name>.tsv`: one row per epoch (step = epoch) for each name in SERIES;
  dvc.yaml draws them. No timestamps, so a rerun with the same seed writes the same bytes.

dvc.yaml stays the one pipeline file: dvclive is told not to write one of its own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from lungseg.core.errors import LungsegError

SERIES = ("train_loss", "val_loss", "val_dice", "val_iou", "lr")


class EpochLog:
    """Record each epoch's scores in `directory` as it ends, and print one line per epoch.

    Args:
        directory: dvclive's folder (emptied of an earlier run's series when created).
        epochs: how many epochs the run will train, for the printed lines.
    """

    def __init__(self, directory: str | os.PathLike, epochs: int):
        self.live = _files_only_live(directory)
        self.epochs = epochs

    def __call__(self, row: dict, best_epoch: int, best_dice: float) -> None:
        """Log one epoch: store its series and metrics.json, and print its line.

        Args:
            row: holds 'epoch', each of SERIES and 'seconds' (printed, never stored).
            best_epoch: the best epoch so far.
            best_dice: its validation Dice.
        """
        self.live.step = row["epoch"]
        for name in SERIES:
            self.live.log_metric(name, float(row[name]))
        self.write_summary(best_epoch, best_dice)
        tqdm.write(epoch_line(row, self.epochs, best_epoch, best_dice), file=sys.stdout)
        sys.stdout.flush()  # a log file (dvc queue logs) gets the line now, not at exit

    def write_summary(self, best_epoch: int, best_dice: float) -> None:
        """Write metrics.json: the epoch reached ('step'), and the best epoch with its validation Dice.

        Args:
            best_epoch: the best epoch so far (at the end: the kept one).
            best_dice: its validation Dice.
        """
        self.live.summary = {"best_epoch": best_epoch, "val_dice": best_dice}
        self.live.make_summary()


def _files_only_live(directory: str | os.PathLike):
    """A dvclive Live that only writes files. Its DVC integration is skipped: dvc.yaml already
    declares every file it writes, and that integration opens the repository on each run, runs
    `dvc init` where there is none, and fails in a git repository without a commit."""
    from dvclive import Live  # imported here: only the train stage needs it

    class FilesOnlyLive(Live):
        def _init_dvc(self):
            self._dvc_file = "dvc.yaml"  # never written: dvcyaml=None

    return FilesOnlyLive(str(directory), dvcyaml=None, save_dvc_exp=False, report=None)


def epoch_line(row: dict, epochs: int, best_epoch: int, best_dice: float) -> str:
    """The line printed for one epoch.

    Args:
        row: holds 'epoch', each of SERIES and 'seconds'.
        epochs: how many epochs the run will train.
        best_epoch: the best epoch so far.
        best_dice: its validation Dice.

    Returns:
        the epoch, its scores, learning rate and seconds, and the best epoch so far, on one line.
    """
    scores = "  ".join(f"{name} {row[name]:.4f}" for name in SERIES if name != "lr")
    return (f"epoch {row['epoch']}/{epochs}  {scores}  lr {row['lr']:.2e}  {row['seconds']:.2f} s  "
            f"(best: epoch {best_epoch}, val_dice {best_dice:.4f})")


def read_history(directory: str | os.PathLike) -> pd.DataFrame:
    """The series EpochLog wrote, as one table.

    Args:
        directory: EpochLog's folder.

    Returns:
        one row per epoch: epoch, then one column per name in SERIES.

    Raises:
        LungsegError: when a series' file is missing (the train stage has not run).
    """
    folder = Path(directory) / "plots" / "metrics"
    tables = []
    for name in SERIES:
        path = folder / f"{name}.tsv"
        if not path.is_file():
            raise LungsegError(f"{path} not found: run the train stage first (dvc repro train)")
        tables.append(pd.read_csv(path, sep="\t").set_index("step")[[name]])
    return pd.concat(tables, axis=1).rename_axis("epoch").reset_index()

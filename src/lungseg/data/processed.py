"""The files the data stages hand on: the processed set (preprocess) and the split (split).

Every later stage reads its data through this module only, never through the readers of the
user's files, so an edit to a reader reruns preprocessing but not training (dvc.yaml's train
stage depends on this file alone of lungseg.data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.core.io import atomic_path, save_npy, write_csv, write_json

PARTS = ("train", "val", "test")


@dataclass
class ProcessedSet:
    """The processed set preprocess wrote (fields: see comments)."""

    images: np.ndarray  # uint8 N x S x S
    masks: np.ndarray  # uint8 N x S x S, 0/1
    index: pd.DataFrame  # one row per image, same order; ids as strings
    settings: dict  # how the arrays were made (lungseg.data.preprocess.preparation: image_size, normalize, mask_threshold, ...)

    def subset(self, ids) -> "ProcessedSet":
        """The rows whose id is in `ids`, in the order of `ids`.

        Args:
            ids: ids of this set.

        Returns:
            A new set of those rows, with the same settings.
        """
        position = pd.Series(np.arange(len(self.index)), index=self.index["id"])
        rows = position.loc[list(ids)].to_numpy()
        return ProcessedSet(self.images[rows], self.masks[rows], self.index.iloc[rows].reset_index(drop=True), self.settings)


def load_processed(folder: str | Path) -> ProcessedSet:
    """Read what save_processed wrote.

    Args:
        folder: the folder save_processed wrote.

    Returns:
        The set; index values are text, but height and width are integers.
    """
    folder = Path(folder)
    index = pd.read_csv(folder / "index.csv", dtype=str, keep_default_na=False)  # ids and metadata stay text
    index[["height", "width"]] = index[["height", "width"]].astype(int)
    settings = json.loads((folder / "settings.json").read_text())
    return ProcessedSet(np.load(folder / "images.npy"), np.load(folder / "masks.npy"), index, settings)


def save_processed(images: np.ndarray, masks: np.ndarray, index: pd.DataFrame, settings: dict, out_dir: str | Path) -> None:
    """Write arrays, index and the settings that made them into `out_dir`, as one atomic directory swap.

    The settings travel with the arrays so that a checkpoint can record how its inputs were made
    without the train stage depending on the preprocess params.

    Args:
        images: uint8 N x S x S.
        masks: uint8 N x S x S, 0/1.
        index: one row per image, same order.
        settings: how the arrays were made (lungseg.data.preprocess.preparation).
        out_dir: the folder to write (replaced whole).
    """
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_npy(images, tmp / "images.npy")
        save_npy(masks, tmp / "masks.npy")
        write_csv(index, tmp / "index.csv")
        write_json(settings, tmp / "settings.json")


def index_root(folders) -> Path:
    """The folder the index's image_file and mask_file paths are relative to (assemble_sources).

    Args:
        folders: one data folder, or DataConfig.dirs.

    Returns:
        The data folder itself when there is one, the project folder (".") when there are several.
    """
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    return Path(folders[0]) if len(folders) == 1 else Path(".")


def ids_in(split_table: pd.DataFrame, part: str) -> list[str]:
    """The ids assigned to `part`, in table order.

    Args:
        split_table: read_split's table.
        part: 'train', 'val' or 'test'.

    Returns:
        The ids, as text.

    Raises:
        ValueError: `part` is none of PARTS.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    return split_table.loc[split_table["split"] == part, "id"].astype(str).tolist()


def read_split(path: str | Path) -> pd.DataFrame:
    """The split table (id, split) the split stage wrote, every value as text.

    Args:
        path: the split CSV file.

    Returns:
        The table.
    """
    return pd.read_csv(path, dtype=str, keep_default_na=False)

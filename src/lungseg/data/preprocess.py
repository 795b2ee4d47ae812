"""Turn a data folder into compact training arrays.

Output (one folder): images.npy (uint8 N x S x S, greyscale scaled to 0..255), masks.npy
(uint8 N x S x S, values 0/1) and index.csv (id, source files, original size, metadata).
Images are stored as uint8 to keep the arrays small (a 128 px set of 704 images is 12 MB);
the training code divides by 255 to get the [0, 1] range the model sees.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.config import PreprocessConfig
from lungseg.data.images import ImageReadError, read_resized
from lungseg.data.layout import DataError, find_layout, list_pairs
from lungseg.data.metadata import read_metadata
from lungseg.io import atomic_path, save_npy, write_csv, write_json

@dataclass
class PreparedPair:
    image: np.ndarray  # uint8 S x S
    mask: np.ndarray  # uint8 S x S, 0/1
    original_size: tuple[int, int]  # (height, width)


def finish_image(small: np.ndarray, settings: PreprocessConfig) -> np.ndarray:
    """A resized float image in [0, 1] -> the uint8 array the model is trained on."""
    small = np.clip(small, 0.0, 1.0)  # Lanczos overshoots slightly at sharp edges
    if settings.normalize == "minmax":
        low, high = small.min(), small.max()
        small = (small - low) / max(high - low, 1e-6)
    return np.round(small * 255).astype(np.uint8)


def finish_mask(small: np.ndarray, settings: PreprocessConfig) -> np.ndarray:
    """A resized mask in [0, 1] -> 0/1 uint8, lung where above mask_threshold (0..255 scale)."""
    return (small * 255 > settings.mask_threshold).astype(np.uint8)


def prepare_pair(paths: tuple[Path, Path], settings: PreprocessConfig) -> PreparedPair | str:
    """Read and shrink one image and its mask; return an error message instead of raising,
    so that one pass over the data can report every bad file at once."""
    image_path, mask_path = paths
    try:
        image, image_size = read_resized(image_path, settings.image_size)
        mask, mask_size = read_resized(mask_path, settings.image_size, is_mask=True)
    except ImageReadError as error:
        return str(error)
    if image_size != mask_size:
        return (f"{mask_path}: mask size {mask_size[1]}x{mask_size[0]} differs from its image's "
                f"{image_size[1]}x{image_size[0]} ({image_path})")
    return PreparedPair(finish_image(image, settings), finish_mask(mask, settings), image_size)


def _map_pairs(pairs: pd.DataFrame, settings: PreprocessConfig) -> list[PreparedPair | str]:
    work = list(zip(pairs["image_path"], pairs["mask_path"]))
    task = partial(prepare_pair, settings=settings)
    workers = min(settings.workers or os.cpu_count() or 1, len(work))
    if workers <= 1:
        return [task(item) for item in work]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(task, work, chunksize=max(1, len(work) // (4 * workers))))


def preprocess_folder(data_dir: str | Path, settings: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Read every pair under `data_dir`; return (images, masks, index) or raise DataError listing every bad file."""
    layout = find_layout(data_dir)
    pairs = list_pairs(layout)
    results = _map_pairs(pairs, settings)
    problems = [r for r in results if isinstance(r, str)]
    if problems:
        raise DataError(f"{len(problems)} of {len(results)} pair(s) under {data_dir} could not be used:", problems)
    index = pd.DataFrame({
        "id": pairs["id"],
        "image_file": [str(p.relative_to(data_dir)) for p in pairs["image_path"]],
        "mask_file": [str(p.relative_to(data_dir)) for p in pairs["mask_path"]],
        "height": [r.original_size[0] for r in results],
        "width": [r.original_size[1] for r in results],
    })
    metadata = read_metadata(layout.metadata_path, list(pairs["id"]), list(settings.metadata_columns))
    index = index.merge(metadata, on="id", how="left")
    return np.stack([r.image for r in results]), np.stack([r.mask for r in results]), index


def save_processed(images: np.ndarray, masks: np.ndarray, index: pd.DataFrame, settings: PreprocessConfig, out_dir: str | Path) -> None:
    """Write arrays, index and the settings that made them into `out_dir`, as one atomic directory swap.

    The settings travel with the arrays so that a checkpoint can record how its inputs were made
    without the train stage depending on the preprocess params.
    """
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_npy(images, tmp / "images.npy")
        save_npy(masks, tmp / "masks.npy")
        write_csv(index, tmp / "index.csv")
        recipe = {"image_size": settings.image_size, "normalize": settings.normalize, "mask_threshold": settings.mask_threshold}
        write_json(recipe, tmp / "settings.json")


@dataclass
class ProcessedSet:
    images: np.ndarray  # uint8 N x S x S
    masks: np.ndarray  # uint8 N x S x S, 0/1
    index: pd.DataFrame  # one row per image, same order; ids as strings
    settings: dict  # how the arrays were made (image_size, normalize, mask_threshold)

    def subset(self, ids) -> "ProcessedSet":
        """The rows whose id is in `ids`, in the order of `ids`."""
        position = pd.Series(np.arange(len(self.index)), index=self.index["id"])
        rows = position.loc[list(ids)].to_numpy()
        return ProcessedSet(self.images[rows], self.masks[rows], self.index.iloc[rows].reset_index(drop=True), self.settings)


def load_processed(folder: str | Path) -> ProcessedSet:
    """Read what save_processed wrote."""
    folder = Path(folder)
    index = pd.read_csv(folder / "index.csv", dtype=str, keep_default_na=False)  # ids and metadata stay text
    index[["height", "width"]] = index[["height", "width"]].astype(int)
    settings = json.loads((folder / "settings.json").read_text())
    return ProcessedSet(np.load(folder / "images.npy"), np.load(folder / "masks.npy"), index, settings)

"""What a model was trained on, stored in its checkpoint, and the warning a user needs when a
model trained on the synthetic phantoms meets real X-rays (its masks look plausible and are wrong).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from lungseg import paths

SYNTHETIC_COUNTIES = ("PhantomA", "PhantomB")  # what the synthesize stage writes in MetaData.csv


def training_data(folders, index: pd.DataFrame) -> dict:
    """The record kept in the checkpoint: the data folder's name (not its full path), the number
    of images, whether they are the synthetic phantoms, and a fingerprint of the index (ids, files
    and sizes) that tells two data sets apart.

    Args:
        folders: the data folders (DataConfig.dirs; several: their names joined).
        index: the preprocessed index (lungseg.data.preprocess.ProcessedSet.index).
    """
    rows = index[["id", "image_file", "mask_file", "height", "width"]].astype(str)
    fingerprint = hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()[:16]
    return {"data": ", ".join(Path(folder).name for folder in folders), "n_images": len(index),
            "synthetic": all(is_synthetic(folder, index) for folder in folders),
            "fingerprint": fingerprint}


def is_synthetic(data_dir: str | Path, index: pd.DataFrame) -> bool:
    """True for the synthesize stage's folder, or for phantoms copied elsewhere (their counties)."""
    if Path(data_dir).resolve() == paths.SYNTHETIC_DIR.resolve():
        return True
    counties = index["county"] if "county" in index else pd.Series(dtype=str)
    # a plain bool: checkpoints are loaded weights_only, which refuses numpy scalars
    return bool(len(counties) > 0 and counties.isin(SYNTHETIC_COUNTIES).all())


def synthetic_warning(model_path: str | Path, info: dict) -> str | None:
    """The warning for a model trained on phantoms, or None (also for models older than this record).

    Args:
        model_path: the model file, named in the warning.
        info: the checkpoint's (or export's) `info`.
    """
    trained_on = info.get("training_data") or {}
    if not trained_on.get("synthetic"):
        return None
    return (f"warning: {model_path} was trained on synthetic phantoms ({trained_on.get('data')}, "
            f"{trained_on.get('n_images')} images), not on X-rays: on real X-rays its masks look plausible "
            "but are not to be trusted; train on real data first (data.dir in params.yaml)")

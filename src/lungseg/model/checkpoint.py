"""Save and load a trained model with everything needed to rebuild it and feed it.

A checkpoint is a plain dict of tensors, numbers and strings, so it loads with
torch.load(weights_only=True): a downloaded file cannot run code when opened.

Its `info` records what the model was trained on (`training_data`), so that `synthetic_warning`
can warn a user when a model trained on the synthetic phantoms meets real X-rays (its masks
look plausible and are wrong).
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from lungseg.core import paths
from lungseg.core.errors import CheckpointError
from lungseg.core.io import atomic_path
from lungseg.model.unet import UNet

FORMAT = "lungseg-checkpoint"
VERSION = 1
NOT_A_MODEL = ("not a lungseg model (expected a checkpoint written by the train stage (.pth), "
               "or a TorchScript (.ts) or ONNX (.onnx) export from `lungseg export`)")
# What torch.load raises for an archive that looks like torch's but whose contents are not a
# weights-only checkpoint: UnpicklingError for refused or corrupt pickles (with EOFError,
# IndexError and KeyError, which pickle documents for truncated or garbled streams), and
# RuntimeError from torch's zip reader for a damaged member.
UNLOADABLE = (pickle.UnpicklingError, EOFError, IndexError, KeyError, RuntimeError)


def not_a_model(path: str | Path) -> CheckpointError:
    """The error for a model file that lungseg did not write.

    Args:
        path: the file, named in the message.

    Returns:
        the CheckpointError for the caller to raise.
    """
    return CheckpointError(f"{path}: {NOT_A_MODEL}")


def zip_names(path: str | Path) -> list[str] | None:
    """The member names of a zip archive (lungseg.inference.formats uses it too).

    Args:
        path: the file to read.

    Returns:
        the names of the archive's members, or None for a file that is not a zip archive (or whose directory is
        damaged).

    Raises:
        OSError: when the file cannot be read.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except zipfile.BadZipFile:  # not a zip, or an end record but a damaged directory
        return None


def is_torch_archive(path: str | Path) -> bool:
    """Whether a file is a zip archive laid out as torch.save writes one.

    That is: every entry inside one top folder, which holds data.pkl. Anything else (text, a truncated file, another
    zip, a bare pickle) is refused before torch.load, whose errors for such files say nothing useful (e.g.
    "KeyError: 101" for a text file).

    Args:
        path: an existing file.

    Returns:
        True for torch.save's layout, False for anything else.

    Raises:
        OSError: when the file cannot be read.
    """
    names = zip_names(path)
    if names is None:
        return False
    root = names[0].split("/", 1)[0] if names else ""
    return f"{root}/data.pkl" in names and all(name.startswith(f"{root}/") for name in names)


def make_checkpoint(model: UNet, model_args: dict, preprocess: dict, threshold: float, postprocess: str = "none",
                    dice_estimator: dict | None = None, **info) -> dict:
    """Bundle a model's weights with everything needed to rebuild it, feed it and turn its output into a mask.

    Args:
        model: the trained network; its weights are copied to CPU.
        model_args: the architecture: UNet's keyword arguments (build_model rebuilds the model from them).
        preprocess: the preprocessing settings the model's inputs need.
        threshold: the probability threshold that turns the model's output into a mask.
        postprocess: the post-processing applied after the threshold (an option of lungseg.postprocessing.postprocess;
            default "none").
        dice_estimator: the calibration of its Dice estimate (lungseg.postprocessing.quality.DiceEstimator.to_dict);
            None: none (the key is then left out).
        **info: kept as the checkpoint's `info`, e.g. training_data (what the model was trained on).

    Returns:
        the checkpoint: a plain dict of tensors, numbers and strings, for save_checkpoint.
    """
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    checkpoint = {"format": FORMAT, "version": VERSION, "model": dict(model_args), "preprocess": dict(preprocess),
                  "threshold": float(threshold), "postprocess": postprocess, "info": info, "state_dict": state}
    return checkpoint | ({"dice_estimator": dice_estimator} if dice_estimator else {})


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    """Write a checkpoint atomically (lungseg.core.io.atomic_path): `path` holds the old file or the whole new one.

    Args:
        checkpoint: make_checkpoint's dict.
        path: the file to write (replaced if it exists).
    """
    # through a handle: given a path, torch names the archive's inner folder after the (temporary,
    # random) file name, and the same checkpoint would differ in bytes from run to run
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(checkpoint, handle)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely (no pickled code) and check that it is one of ours.

    Args:
        path: the model file (.pth) written by the train stage.

    Returns:
        the checkpoint dict, its preprocessing settings completed by with_normalize.

    Raises:
        CheckpointError: naming the file, for anything else: a missing or unreadable file, a file lungseg did not
            write (not_a_model's message), or a checkpoint version this lungseg does not support.
    """
    if not Path(path).exists():
        raise CheckpointError(f"{path}: checkpoint not found (run the train stage first: dvc repro train)")
    try:
        archive = is_torch_archive(path)
    except OSError as error:  # unreadable: permissions, a folder, a disk error
        raise CheckpointError(f"{path}: cannot read the model file ({error.strerror or error})") from error
    if not archive:
        raise not_a_model(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except UNLOADABLE as error:
        raise not_a_model(path) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise not_a_model(path)
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {checkpoint.get('version')} is not supported (expected {VERSION})")
    return {**checkpoint, "preprocess": with_normalize(checkpoint.get("preprocess", {}))}


def with_normalize(preprocess: dict) -> dict:
    """A checkpoint's (or export's) preprocessing settings with the normalisation spelled out.

    Models written before preprocess.normalize existed were trained on min-max images, whatever the default is now.

    Args:
        preprocess: the stored settings (not changed).

    Returns:
        a copy of them, with normalize "minmax" where they name none.
    """
    return {"normalize": "minmax", **preprocess}


def build_model(checkpoint: dict) -> UNet:
    """The model described by a checkpoint, with its weights loaded (on CPU).

    Args:
        checkpoint: load_checkpoint's (or make_checkpoint's) dict.

    Returns:
        the UNet, on CPU.

    Raises:
        CheckpointError: when the checkpoint describes a model lungseg cannot build, or its weights do not fit it
            (load_weights).
    """
    try:
        model = UNet(**checkpoint["model"])
    except (TypeError, ValueError) as problem:
        raise CheckpointError(f"checkpoint describes a model lungseg cannot build ({checkpoint.get('model')}): {problem}") from None
    load_weights(model, checkpoint["state_dict"], checkpoint["model"])
    return model


def load_weights(model: UNet, state: dict, described_as: dict | None = None) -> None:
    """Load `state` into `model`, or say exactly which weights do not fit instead of PyTorch's wall of text.

    Args:
        model: the network to load into (changed in place).
        state: a state_dict, e.g. a checkpoint's "state_dict".
        described_as: the architecture the checkpoint records (its "model"), named in the error; None: not named.

    Raises:
        CheckpointError: listing the weights that are missing, unexpected, or of another shape.
    """
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    reshaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                for k in sorted(expected.keys() & state.keys()) if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        lines = [f"missing: {_listed(missing)}" if missing else "", f"unexpected: {_listed(unexpected)}" if unexpected else "",
                 f"different shape: {_listed(reshaped)}" if reshaped else ""]
        hint = f"\n  the checkpoint describes its model as {described_as}" if described_as else ""
        raise CheckpointError("checkpoint weights do not match the model (check model.depth and model.base_width):\n  "
                              + "\n  ".join(line for line in lines if line) + hint)
    model.load_state_dict(state)


def _listed(keys: list[str], most: int = 6) -> str:
    return ", ".join(keys[:most]) + (f" ... and {len(keys) - most} more" if len(keys) > most else "")


# --------------------------------------------------------------------------- what a model was trained on


SYNTHETIC_COUNTIES = ("PhantomA", "PhantomB")  # what the synthesize stage writes in MetaData.csv


def training_data(folders: Sequence[str | Path], index: pd.DataFrame) -> dict:
    """The record of what a model was trained on, kept in the checkpoint's `info`.

    Args:
        folders: the data folders (DataConfig.dirs; several: their names joined).
        index: the preprocessed index (lungseg.data.processed.ProcessedSet.index).

    Returns:
        the data folder's name (not its full path) as "data", the number of images as "n_images", whether they are
        the synthetic phantoms as "synthetic", and a fingerprint of the index (ids, files and sizes) that tells two
        data sets apart as "fingerprint".
    """
    rows = index[["id", "image_file", "mask_file", "height", "width"]].astype(str)
    fingerprint = hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()[:16]
    return {"data": ", ".join(Path(folder).name for folder in folders), "n_images": len(index),
            "synthetic": all(is_synthetic(folder, index) for folder in folders),
            "fingerprint": fingerprint}


def is_synthetic(data_dir: str | Path, index: pd.DataFrame) -> bool:
    """Whether a data folder holds the synthetic phantoms.

    Args:
        data_dir: the data folder.
        index: its preprocessed index (its "county" column, if any, is read).

    Returns:
        True for the synthesize stage's folder, or for phantoms copied elsewhere (all their counties are
        SYNTHETIC_COUNTIES).
    """
    if Path(data_dir).resolve() == paths.SYNTHETIC_DIR.resolve():
        return True
    counties = index["county"] if "county" in index else pd.Series(dtype=str)
    # a plain bool: checkpoints are loaded weights_only, which refuses numpy scalars
    return bool(len(counties) > 0 and counties.isin(SYNTHETIC_COUNTIES).all())


def synthetic_warning(model_path: str | Path, info: dict) -> str | None:
    """The warning for a model trained on the synthetic phantoms.

    Args:
        model_path: the model file, named in the warning.
        info: the checkpoint's (or export's) `info`.

    Returns:
        the warning, or None for a model not trained on phantoms (also for models older than this record).
    """
    trained_on = info.get("training_data") or {}
    if not trained_on.get("synthetic"):
        return None
    return (f"warning: {model_path} was trained on synthetic phantoms ({trained_on.get('data')}, "
            f"{trained_on.get('n_images')} images), not on X-rays: on real X-rays its masks look plausible "
            "but are not to be trusted; train on real data first (data.dir in params.yaml)")

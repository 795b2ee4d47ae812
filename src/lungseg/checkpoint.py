"""Save and load a trained model with everything needed to rebuild it and feed it.

A checkpoint is a plain dict of tensors, numbers and strings, so it loads with
torch.load(weights_only=True): a downloaded file cannot run code when opened.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lungseg.io import atomic_path
from lungseg.model import UNet

FORMAT = "lungseg-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or not a lungseg model."""


def make_checkpoint(model: UNet, model_args: dict, preprocess: dict, threshold: float, **info) -> dict:
    """Bundle the weights (copied to CPU) with the architecture and preprocessing they need."""
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return {"format": FORMAT, "version": VERSION, "model": dict(model_args), "preprocess": dict(preprocess),
            "threshold": float(threshold), "info": info, "state_dict": state}


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely (no pickled code) and check that it is one of ours."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found (run the train stage first: dvc repro train)") from None
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise CheckpointError(f"{path}: not a loadable lungseg checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a lungseg checkpoint (no '{FORMAT}' marker)")
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {checkpoint.get('version')} is not supported (expected {VERSION})")
    return checkpoint


def build_model(checkpoint: dict) -> UNet:
    """The model described by a checkpoint, with its weights loaded (on CPU)."""
    model = UNet(**checkpoint["model"])
    model.load_state_dict(checkpoint["state_dict"])
    return model

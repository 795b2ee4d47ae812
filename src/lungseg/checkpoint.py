"""Save and load a trained model with everything needed to rebuild it and feed it.

A checkpoint is a plain dict of tensors, numbers and strings, so it loads with
torch.load(weights_only=True): a downloaded file cannot run code when opened.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lungseg.errors import CheckpointError
from lungseg.io import atomic_path
from lungseg.model import UNet

FORMAT = "lungseg-checkpoint"
VERSION = 1


def make_checkpoint(model: UNet, model_args: dict, preprocess: dict, threshold: float, postprocess: str = "none", **info) -> dict:
    """Bundle the weights (copied to CPU) with the architecture and preprocessing they need, and
    the threshold and post-processing (lungseg.postprocess) that turn their output into a mask."""
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return {"format": FORMAT, "version": VERSION, "model": dict(model_args), "preprocess": dict(preprocess),
            "threshold": float(threshold), "postprocess": postprocess, "info": info, "state_dict": state}


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    # through a handle: given a path, torch names the archive's inner folder after the (temporary,
    # random) file name, and the same checkpoint would differ in bytes from run to run
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(checkpoint, handle)


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
    try:
        model = UNet(**checkpoint["model"])
    except (TypeError, ValueError) as problem:
        raise CheckpointError(f"checkpoint describes a model lungseg cannot build ({checkpoint.get('model')}): {problem}") from None
    load_weights(model, checkpoint["state_dict"], checkpoint["model"])
    return model


def load_weights(model: UNet, state: dict, described_as: dict | None = None) -> None:
    """Load `state` into `model`, or say exactly which weights do not fit (missing, unexpected,
    or of another shape) instead of PyTorch's wall of text."""
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

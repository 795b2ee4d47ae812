"""The exported-model formats, in one place: what a lungseg export carries besides its graph,
how an export is recognised, and how each format is read back.

Both formats carry the same JSON document (`metadata`): the checkpoint's threshold,
post-processing, preprocessing settings and model arguments. TorchScript keeps it as the
extra file TORCHSCRIPT_EXTRA inside its archive, ONNX as the metadata_props entry
METADATA_KEY. The writer (lungseg.export) puts it there with `torchscript_extra_files` and
`onnx_properties`; the reader (lungseg.inference) gets it back, checked, from
`load_torchscript` and `load_onnx`. An ONNX export is recognised by its suffix, a TorchScript
export by its content (`is_torchscript`), so a .pt TorchScript file still loads.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from lungseg.checkpoint import not_a_model, with_normalize, zip_names
from lungseg.errors import CheckpointError
from lungseg.onnx_model import OnnxModel

FORMAT = "lungseg-export"
VERSION = 1
METADATA_KEY = "lungseg"  # the ONNX metadata_props entry holding our JSON
TORCHSCRIPT_EXTRA = f"{METADATA_KEY}.json"  # the extra file in a TorchScript archive holding it
NEEDED = ("threshold", "postprocess", "preprocess", "model")  # what inference reads; preprocess.image_size too


# --------------------------------------------------------------------------- the metadata


def metadata(checkpoint: dict) -> dict:
    """What inference needs besides the graph, as both export formats carry it.

    checkpoint: a checkpoint as lungseg.checkpoint.load_checkpoint returns it.
    """
    size = int(checkpoint["preprocess"]["image_size"])
    return {"format": FORMAT, "version": VERSION, "model": dict(checkpoint["model"]),
            "preprocess": dict(checkpoint["preprocess"]), "threshold": float(checkpoint["threshold"]),
            "postprocess": checkpoint.get("postprocess", "none"), "info": _jsonable(checkpoint.get("info", {})),
            "input": {"shape": ["batch", 1, size, size], "dtype": "float32", "range": [0.0, 1.0]},
            "output": "logits", "torch": torch.__version__}


def torchscript_extra_files(checkpoint: dict) -> dict[str, str]:
    """The `_extra_files` for torch.jit.save that make a TorchScript file a lungseg export."""
    return {TORCHSCRIPT_EXTRA: json.dumps(metadata(checkpoint))}


def onnx_properties(checkpoint: dict) -> dict[str, str]:
    """The metadata_props entries that make an ONNX file a lungseg export."""
    return {METADATA_KEY: json.dumps(metadata(checkpoint))}


def parse_metadata(text: str, path: str | Path) -> dict:
    """The JSON metadata of an exported model, checked for the keys inference needs.

    text: the JSON as stored in the file. path: the file, named in the CheckpointError raised
    for text that is not JSON or lacks a needed key.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: the '{METADATA_KEY}' metadata is not valid JSON ({error})") from None
    missing = [key for key in NEEDED if key not in document]
    if missing or "image_size" not in document.get("preprocess", {}):
        raise CheckpointError(f"{path}: the '{METADATA_KEY}' metadata lacks {', '.join(missing) or 'preprocess.image_size'}")
    return {**document, "preprocess": with_normalize(document["preprocess"])}


# --------------------------------------------------------------------------- recognising an export


def is_onnx(path: str | Path) -> bool:
    """True for a file that should be read as ONNX: by suffix, as `lungseg export` names them."""
    return Path(path).suffix == ".onnx"


def is_torchscript(path: str | Path) -> bool:
    """True for a TorchScript archive. torch.save checkpoints are zip files too, but only
    TorchScript archives hold compiled code (a `code/` folder)."""
    if not Path(path).is_file():
        return False
    try:
        names = zip_names(path)
    except OSError:  # unreadable: load_checkpoint, tried next, says so
        return False
    return names is not None and any("/code/" in name for name in names)


def is_exported(path: str | Path) -> bool:
    """True for a file `lungseg export` could have written (ONNX or TorchScript), not a checkpoint."""
    return is_onnx(path) or is_torchscript(path)


# --------------------------------------------------------------------------- the loaders


def load_torchscript(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """An exported TorchScript model on `device`, in eval mode, and its metadata.

    path: the archive. device: where its weights go. Raises CheckpointError for a missing file,
    and not_a_model's error for an archive torch cannot read or one without lungseg's metadata.
    """
    extra = {TORCHSCRIPT_EXTRA: ""}
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: TorchScript model not found (write one with lungseg export)")
    try:
        with warnings.catch_warnings():  # torch 2.13 marks torch.jit deprecated; loading still works
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except RuntimeError as error:  # torch's archive reader: a damaged or foreign file
        raise not_a_model(path) from error
    if not extra[TORCHSCRIPT_EXTRA]:  # someone else's TorchScript: no threshold or preprocessing to go with it
        raise not_a_model(path)
    return module.eval(), parse_metadata(extra[TORCHSCRIPT_EXTRA], path)


def load_onnx(path: str | Path, device: str = "cpu") -> tuple[OnnxModel, dict]:
    """An exported ONNX model run by onnxruntime, and its metadata.

    path: the .onnx file. device: 'cpu', 'cuda' or 'auto' (lungseg.onnx_model.providers).
    Raises CheckpointError for a missing or unloadable file and for one without lungseg's
    metadata; RuntimeError when 'cuda' is asked for and this onnxruntime has none.
    """
    model = OnnxModel(path, device)
    properties = model.properties()
    if METADATA_KEY not in properties:
        raise CheckpointError(f"{path}: ONNX model has no '{METADATA_KEY}' metadata: it was not written by lungseg export")
    return model, parse_metadata(properties[METADATA_KEY], path)


def load_exported(path: str | Path) -> torch.nn.Module:
    """Either export's model on the CPU, chosen as inference chooses (for parity checks)."""
    return load_onnx(path)[0] if is_onnx(path) else load_torchscript(path)[0]


# --------------------------------------------------------------------------- helpers


def _jsonable(value):
    """Checkpoint info made JSON-safe: tensors and numpy scalars become numbers, the rest text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)

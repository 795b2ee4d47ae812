"""Export a trained checkpoint to TorchScript and ONNX, each checked against eager PyTorch.

Both files are self-describing: they carry the checkpoint's threshold, post-processing,
preprocessing settings and model arguments as JSON (TorchScript: an extra file in the archive;
ONNX: the model's metadata_props), so `lungseg.inference.load_predictor` can run them alone.

An export is written to a temporary file, its logits are compared with the checkpoint's eager
fp32 model on random inputs, and only if they agree within PARITY_TOLERANCE is it renamed into
place: a failed export leaves no file behind.
"""

from __future__ import annotations

import json
import logging
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

from lungseg.checkpoint import build_model, load_checkpoint, not_a_model
from lungseg.errors import CheckpointError, ExportError
from lungseg.io import atomic_path
from lungseg.onnx_model import METADATA_KEY, OnnxModel, parse_metadata, require

FORMAT = "lungseg-export"
VERSION = 1
PARITY_TOLERANCE = 1e-4  # max |logit difference|; fp32 re-orderings give ~1e-8 here, a wrong graph gives >1e-2
ONNX_OPSET = 18  # the dynamo exporter's native opset (no version conversion); onnxruntime >= 1.14 runs it
SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx"}
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
TORCHSCRIPT_EXTRA = f"{METADATA_KEY}.json"


def export_model(checkpoint_path: str | Path, out_dir: str | Path, formats: tuple[str, ...] = ("torchscript", "onnx")) -> dict:
    """Write `<checkpoint stem>.ts` and/or `.onnx` into `out_dir`.

    Returns {format: {"path": str, "max_abs_diff": float}} with each file's measured parity."""
    unknown = [f for f in formats if f not in SUFFIXES]
    if unknown:
        raise ExportError(f"unknown export format(s) {', '.join(map(repr, unknown))}; expected {', '.join(SUFFIXES)}")
    if "onnx" in formats:
        require(*ONNX_PACKAGES)  # before writing anything, so a missing package never leaves half a set
    exporters = {"torchscript": export_torchscript, "onnx": export_onnx}
    checkpoint_path = Path(checkpoint_path)
    if checkpoint_path.suffix == ".onnx" or is_torchscript(checkpoint_path):
        raise ExportError(f"{checkpoint_path}: lungseg export takes the checkpoint written by the train stage (.pth), "
                          "e.g. results/best_unet.pth, not an exported model (.ts, .onnx)")
    results = {}
    for name in formats:
        path = Path(out_dir) / f"{checkpoint_path.stem}{SUFFIXES[name]}"
        results[name] = {"path": str(path), "max_abs_diff": exporters[name](checkpoint_path, path)}
    return results


def export_torchscript(checkpoint_path: str | Path, out_path: str | Path) -> float:
    """Trace the eval-mode model to TorchScript; returns the measured max |logit difference|.

    Traced, not scripted: the U-Net has no data-dependent control flow, so a trace records it
    exactly, while torch.jit.script rejects model.py's Python-only input-size check. The trace
    freezes that check, which is harmless because the export's input size is fixed (metadata)."""
    checkpoint = load_checkpoint(checkpoint_path)
    model, example = _eager(checkpoint)
    with warnings.catch_warnings():
        # TracerWarning: the frozen size check above; DeprecationWarning: TorchScript is in
        # maintenance in torch 2.x but still the one format that loads without Python model code
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # check_trace off: it re-runs the model to compare, which our parity check on the saved
        # file (at another batch size) already does; it cost 1-3 s of a 4 s export
        traced = torch.jit.trace(model, example, check_trace=False)
        with atomic_path(out_path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata(checkpoint))})
            return _checked_parity(model, tmp, checkpoint)


def export_onnx(checkpoint_path: str | Path, out_path: str | Path, opset: int = ONNX_OPSET) -> float:
    """Export to ONNX with a dynamic batch dimension; returns the measured max |logit difference|.

    Uses torch.onnx's dynamo (torch.export) exporter, the default since torch 2.9: the legacy
    TorchScript-based exporter warns that it will be removed. The spatial size stays fixed at the
    training size S: Predictor only ever feeds S x S images (native sizes are handled by resizing
    probabilities), and fixed shapes keep model.py's divisibility check static and let the
    exporter fold every shape computation."""
    require(*ONNX_PACKAGES)
    import onnx

    checkpoint = load_checkpoint(checkpoint_path)
    model, example = _eager(checkpoint)
    with _quiet_exporter():
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, verbose=False, input_names=["image"],
                                    output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    proto = program.model_proto
    properties = {entry.key: entry.value for entry in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**properties, METADATA_KEY: json.dumps(metadata(checkpoint))})
    onnx.checker.check_model(proto)
    with atomic_path(out_path) as tmp:
        onnx.save_model(proto, str(tmp))  # one file: weights inline (far below protobuf's 2 GB limit)
        return _checked_parity(model, tmp, checkpoint)


def check_parity(checkpoint_path: str | Path, exported_path: str | Path, n: int = 4, seed: int = 0) -> float:
    """Max |logit difference| between an exported model and the checkpoint's eager fp32 model
    on CPU, over one batch of `n` seeded random images in [0, 1]."""
    checkpoint = load_checkpoint(checkpoint_path)
    model, _ = _eager(checkpoint)
    return _parity(model, exported_path, int(checkpoint["preprocess"]["image_size"]), n, seed)


def metadata(checkpoint: dict) -> dict:
    """What inference needs besides the graph: the JSON both export formats carry."""
    size = int(checkpoint["preprocess"]["image_size"])
    return {"format": FORMAT, "version": VERSION, "model": dict(checkpoint["model"]),
            "preprocess": dict(checkpoint["preprocess"]), "threshold": float(checkpoint["threshold"]),
            "postprocess": checkpoint.get("postprocess", "none"), "info": _jsonable(checkpoint.get("info", {})),
            "input": {"shape": ["batch", 1, size, size], "dtype": "float32", "range": [0.0, 1.0]},
            "output": "logits", "torch": torch.__version__}


def load_torchscript(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """An exported TorchScript model on `device`, in eval mode, and its metadata."""
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


def is_torchscript(path: str | Path) -> bool:
    """True for a TorchScript archive. torch.save checkpoints are zip files too, but only
    TorchScript archives hold compiled code (a `code/` folder)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except zipfile.BadZipFile:  # an end record but a damaged directory: not an archive lungseg wrote
        return False


# --------------------------------------------------------------------------- helpers


def _eager(checkpoint: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """The checkpoint's model in fp32 eval mode on CPU, and an example input of batch 2
    (not 1: torch.export would specialise a batch dimension of size 1 to a constant)."""
    model = build_model(checkpoint).eval()
    size = int(checkpoint["preprocess"]["image_size"])
    return model, torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))


def _checked_parity(model: torch.nn.Module, exported_path: Path, checkpoint: dict) -> float:
    difference = _parity(model, exported_path, int(checkpoint["preprocess"]["image_size"]))
    if not difference <= PARITY_TOLERANCE:  # written so that NaN fails too
        raise ExportError(f"exported model disagrees with PyTorch: max |logit difference| {difference:.3g} "
                          f"exceeds {PARITY_TOLERANCE:g} (nothing was written)")
    return difference


@torch.inference_mode()
def _parity(model: torch.nn.Module, exported_path: str | Path, image_size: int, n: int = 4, seed: int = 0) -> float:
    images = torch.rand(n, 1, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    exported = OnnxModel(exported_path) if Path(exported_path).suffix == ".onnx" else load_torchscript(exported_path)[0]
    return float((exported(images) - model.eval()(images)).abs().max())


@contextmanager
def _quiet_exporter():
    """Silence the dynamo exporter's chatter that is no concern of ours (no torchvision, pytree
    deprecations inside torch); errors still surface."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


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

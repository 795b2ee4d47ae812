"""The exported-model formats, in one place: what a lungseg export carries besides its graph,
how an export is recognised, and how each format is read back.

Both formats carry the same JSON document (`metadata`): the checkpoint's threshold,
post-processing, preprocessing settings and model arguments. TorchScript keeps it as the
extra file TORCHSCRIPT_EXTRA inside its archive, ONNX as the metadata_props entry
METADATA_KEY. The writer (lungseg.inference.export) puts it there with `torchscript_extra_files` and
`onnx_properties`; the readers here get it back, checked (`load_torchscript`, `load_onnx`), and `load_predictor`
turns any model file, checkpoint or export, into a Predictor. An ONNX export is recognised by its suffix, a TorchScript
export by its content (`is_torchscript`), so a .pt TorchScript file still loads.

An ONNX model runs as if it were the PyTorch one (`OnnxModel`: a module that takes and returns
torch tensors), so `lungseg.inference.predictor.Predictor` and `runtime.forward_in_batches` use it
unchanged. onnx, onnxruntime and onnxscript are optional (the `onnx` extra); they are imported
only when needed, and their absence is a clear ExportError instead of an ImportError deep in a call.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from lungseg.core.errors import CheckpointError, ExportError, LungsegError
from lungseg.core.runtime import configure, resolve_device
from lungseg.inference.predictor import Predictor
from lungseg.model.checkpoint import not_a_model, with_normalize, zip_names
from lungseg.postprocessing.quality import DiceEstimator

FORMAT = "lungseg-export"
VERSION = 1
METADATA_KEY = "lungseg"  # the ONNX metadata_props entry holding our JSON
TORCHSCRIPT_EXTRA = f"{METADATA_KEY}.json"  # the extra file in a TorchScript archive holding it
NEEDED = ("threshold", "postprocess", "preprocess", "model")  # what inference reads; preprocess.image_size too


# --------------------------------------------------------------------------- the metadata


def metadata(checkpoint: dict) -> dict:
    """What inference needs besides the graph, as both export formats carry it.

    Args:
        checkpoint: a checkpoint as lungseg.model.checkpoint.load_checkpoint returns it.

    Returns:
        The JSON-safe metadata document.
    """
    size = int(checkpoint["preprocess"]["image_size"])
    return {"format": FORMAT, "version": VERSION, "model": dict(checkpoint["model"]),
            "preprocess": dict(checkpoint["preprocess"]), "threshold": float(checkpoint["threshold"]),
            "postprocess": checkpoint.get("postprocess", "none"), "info": _jsonable(checkpoint.get("info", {})),
            "dice_estimator": checkpoint.get("dice_estimator"),
            "input": {"shape": ["batch", 1, size, size], "dtype": "float32", "range": [0.0, 1.0]},
            "output": "logits", "torch": torch.__version__}


def torchscript_extra_files(checkpoint: dict) -> dict[str, str]:
    """The `_extra_files` for torch.jit.save that make a TorchScript file a lungseg export.

    Args:
        checkpoint: a checkpoint as lungseg.model.checkpoint.load_checkpoint returns it.

    Returns:
        {TORCHSCRIPT_EXTRA: the metadata as JSON}.
    """
    return {TORCHSCRIPT_EXTRA: json.dumps(metadata(checkpoint))}


def onnx_properties(checkpoint: dict) -> dict[str, str]:
    """The metadata_props entries that make an ONNX file a lungseg export.

    Args:
        checkpoint: a checkpoint as lungseg.model.checkpoint.load_checkpoint returns it.

    Returns:
        {METADATA_KEY: the metadata as JSON}.
    """
    return {METADATA_KEY: json.dumps(metadata(checkpoint))}


def parse_metadata(text: str, path: str | Path) -> dict:
    """The JSON metadata of an exported model, checked for the keys inference needs.

    Args:
        text: the JSON as stored in the file.
        path: the file, named in the error.

    Returns:
        The metadata, its preprocess settings completed by with_normalize.

    Raises:
        CheckpointError: for text that is not JSON or lacks a needed key.
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
    """Whether a file should be read as ONNX: by suffix, as `lungseg export` names them.

    Args:
        path: the model file.

    Returns:
        True for a .onnx file.
    """
    return Path(path).suffix == ".onnx"


def is_torchscript(path: str | Path) -> bool:
    """Whether a file is a TorchScript archive.

    torch.save checkpoints are zip files too, but only TorchScript archives hold compiled code (a `code/` folder).

    Args:
        path: the model file.

    Returns:
        True for a TorchScript archive; False for anything else, a missing or unreadable file included.
    """
    if not Path(path).is_file():
        return False
    try:
        names = zip_names(path)
    except OSError:  # unreadable: load_checkpoint, tried next, says so
        return False
    return names is not None and any("/code/" in name for name in names)


def is_exported(path: str | Path) -> bool:
    """Whether a file is one `lungseg export` could have written (ONNX or TorchScript), not a checkpoint.

    Args:
        path: the model file.

    Returns:
        True for an ONNX or TorchScript export.
    """
    return is_onnx(path) or is_torchscript(path)


# --------------------------------------------------------------------------- the loaders


def load_torchscript(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """An exported TorchScript model on `device`, in eval mode, and its metadata.

    Args:
        path: the archive.
        device: where its weights go.

    Returns:
        The module and its checked metadata (parse_metadata).

    Raises:
        CheckpointError: for a missing file, and (not_a_model's error) for an archive torch cannot read or
            one without lungseg's metadata.
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

    Args:
        path: the .onnx file.
        device: 'cpu', 'cuda' or 'auto' (providers).

    Returns:
        The model and its checked metadata (parse_metadata).

    Raises:
        CheckpointError: for a missing or unloadable file and for one without lungseg's metadata.
        RuntimeError: when 'cuda' is asked for and this onnxruntime has none.
        ExportError: when onnxruntime is not installed.
    """
    model = OnnxModel(path, device)
    properties = model.properties()
    if METADATA_KEY not in properties:
        raise CheckpointError(f"{path}: ONNX model has no '{METADATA_KEY}' metadata: it was not written by lungseg export")
    return model, parse_metadata(properties[METADATA_KEY], path)


def load_exported(path: str | Path) -> torch.nn.Module:
    """Either export's model on the CPU, chosen as inference chooses (for parity checks).

    Args:
        path: the export (.onnx by suffix, else TorchScript).

    Returns:
        The model, metadata left out.

    Raises:
        CheckpointError: as load_onnx and load_torchscript raise it.
    """
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


# --------------------------------------------------------------------------- onnxruntime behind nn.Module


INSTALL_HINT = "install the onnx extra: pip install -e '.[onnx]'"


def require(*packages: str) -> None:
    """Import each optional package or raise one error naming all that are missing.

    Args:
        packages: the importable names, e.g. "onnx", "onnxruntime".

    Raises:
        ExportError: naming every missing package and how to install them.
    """
    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"ONNX support needs the package(s) {', '.join(missing)}, which are not installed; {INSTALL_HINT}")


def providers(device: str = "cpu") -> list[str]:
    """onnxruntime execution providers for a device name.

    Args:
        device: 'cpu', 'cuda', or 'auto' (CUDA when this onnxruntime build has it).

    Returns:
        The providers in order of preference; the CPU provider always comes last as the fallback.

    Raises:
        RuntimeError: for a device this onnxruntime cannot use (load_predictor reports it as a LungsegError
            naming the model and the device).
    """
    import onnxruntime

    available = onnxruntime.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise RuntimeError(f"device 'cuda' was asked for but this onnxruntime has no CUDAExecutionProvider "
                           f"(available: {', '.join(available)}); install onnxruntime-gpu or use device cpu")
    if device not in ("auto", "cpu", "cuda"):  # e.g. 'mps', which torch has and onnxruntime lacks
        raise RuntimeError(f"ONNX models run on device 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and has_cuda)
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]


class OnnxModel(torch.nn.Module):
    """An onnxruntime session behind the nn.Module interface.

    N x 1 x S x S float tensor in, N x 1 x S x S logits out, on the input's device.

    It has no parameters, so eval()/train()/to() (which forward_in_batches and prepare_model
    call) are harmless no-ops; the session itself always runs in inference mode.

    Args:
        path: the .onnx file.
        device: 'cpu', 'cuda' or 'auto' (see providers).

    Raises:
        CheckpointError: for a missing file or one onnxruntime cannot load.
        ExportError: when onnxruntime is not installed.
        RuntimeError: for a device this onnxruntime cannot use (providers).
    """

    def __init__(self, path: str | Path, device: str = "cpu"):
        super().__init__()
        require("onnxruntime")
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: ONNX model not found (write one with lungseg export)")
        chosen = providers(device)
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=chosen)
        except Exception as error:
            # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...) that derive from Exception only
            raise CheckpointError(f"{path}: not a loadable ONNX model ({type(error).__name__}: {error})") from error
        self.path = path
        self.input_name = self.session.get_inputs()[0].name

    def properties(self) -> dict[str, str]:
        """The model's metadata_props (where an exporter keeps its own notes).

        Returns:
            {key: value}.
        """
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Run the session on a batch.

        Args:
            images: N x 1 x S x S float tensor, on any device.

        Returns:
            N x 1 x S x S logits on the input's device.
        """
        # onnxruntime reads host memory: one contiguous float32 copy, whatever the torch layout
        array = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits).to(images.device)


# --------------------------------------------------------------------------- any model file -> a Predictor


def load_predictor(path: str | Path, device: str = "auto", threshold: float | None = None, precision: str = "auto") -> Predictor:
    """A Predictor for any model file lungseg writes.

    An ONNX export (by suffix), a TorchScript export (by content: a .ts or .pt archive holding compiled
    code), or else a checkpoint.

    Args:
        path: the model file.
        device: 'auto', 'cpu', 'cuda' or 'mps' ('mps' not for ONNX).
        threshold: overrides the model's (None keeps it).
        precision: for checkpoints only ('auto' or 'fp32'); exports run in fp32, the precision they were
            checked in.

    Returns:
        The Predictor.

    Raises:
        CheckpointError: for a missing file or one lungseg did not write (one message, whatever the format).
        LungsegError: for a device that is not available.
    """
    try:
        if is_onnx(path):
            return _from_onnx_file(path, device, threshold)
        if is_torchscript(path):
            return torchscript_predictor(path, device, threshold)
        return Predictor.from_checkpoint(path, device, threshold, precision)
    except RuntimeError as problem:  # e.g. --device cuda or mps for an onnxruntime without them
        raise LungsegError(f"{path}: cannot load the model on device {device!r}: {problem}") from None


def _from_onnx_file(path: str | Path, device: str, threshold: float | None) -> Predictor:
    """onnx_predictor, with a file onnxruntime cannot parse or that lacks lungseg's
    metadata reported as not a lungseg model, as for checkpoints and TorchScript."""
    try:
        return onnx_predictor(path, device, threshold)
    except CheckpointError as error:
        if not Path(path).is_file():
            raise  # "not found" says it better
        raise not_a_model(path) from error


def _exported_predictor(model: torch.nn.Module, device: torch.device, metadata: dict, threshold: float | None) -> Predictor:
    """A Predictor from an exported model and the metadata it carries (lungseg.inference.formats.metadata)."""
    chosen = metadata["threshold"] if threshold is None else threshold
    return Predictor(model, device, float(chosen), int(metadata["preprocess"]["image_size"]), None,
                     torch.contiguous_format, metadata["postprocess"], dict(metadata["preprocess"]),
                     dict(metadata.get("info", {})), DiceEstimator.from_dict(metadata.get("dice_estimator")))


def onnx_predictor(path: str | Path, device: str = "cpu", threshold: float | None = None) -> Predictor:
    """A Predictor for an exported ONNX model (lungseg export) run by onnxruntime.

    onnxruntime reads and writes host memory, so Predictor's tensors stay on the CPU whichever provider
    runs the graph; fp32 throughout, as the export's parity was checked.

    Args:
        path: the .onnx file.
        device: 'cpu', 'cuda' or 'auto'.
        threshold: overrides the one the export carries (None keeps it).

    Returns:
        The Predictor.

    Raises:
        CheckpointError: as load_onnx raises it.
        RuntimeError: for a device this onnxruntime cannot use.
    """
    model, metadata = load_onnx(path, device)
    return _exported_predictor(model, torch.device("cpu"), metadata, threshold)


def torchscript_predictor(path: str | Path, device: str = "auto", threshold: float | None = None) -> Predictor:
    """A Predictor for an exported TorchScript model (lungseg export), in fp32 as the export's parity was checked.

    Args:
        path: the TorchScript archive.
        device: 'auto', 'cpu', 'cuda' or 'mps'.
        threshold: overrides the one the export carries (None keeps it).

    Returns:
        The Predictor.

    Raises:
        CheckpointError: as load_torchscript raises it.
        ParamsError: for an unknown device or one that is not available (resolve_device).
    """
    torch_device = resolve_device(device)
    configure(torch_device)
    module, metadata = load_torchscript(path, torch_device)
    return _exported_predictor(module, torch_device, metadata, threshold)

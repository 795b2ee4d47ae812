"""Run an ONNX model as if it were the PyTorch one: a module that takes and returns torch
tensors, so `lungseg.inference.Predictor` and `runtime.forward_in_batches` use it unchanged.

This is onnxruntime and nothing else; what lungseg writes into its ONNX files, and how a
lungseg export is recognised and read, is lungseg.exported's business.

onnx, onnxruntime and onnxscript are optional (the `onnx` extra); they are imported only when
needed, and their absence is a clear ExportError instead of an ImportError deep in a call.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from lungseg.errors import CheckpointError, ExportError

INSTALL_HINT = "install the onnx extra: pip install -e '.[onnx]'"


def require(*packages: str) -> None:
    """Import each optional package or raise one ExportError naming all that are missing."""
    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"ONNX support needs the package(s) {', '.join(missing)}, which are not installed; {INSTALL_HINT}")


def providers(device: str = "cpu") -> list[str]:
    """onnxruntime execution providers for a device name: 'cpu', 'cuda', or 'auto' (CUDA when
    this onnxruntime build has it). The CPU provider always comes last as the fallback.
    RuntimeError for a device this onnxruntime cannot use (lungseg.inference.load_predictor
    reports it as a LungsegError naming the model and the device)."""
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
    """An onnxruntime session behind the nn.Module interface: N x 1 x S x S float tensor in,
    N x 1 x S x S logits out, on the input's device.

    It has no parameters, so eval()/train()/to() (which forward_in_batches and prepare_model
    call) are harmless no-ops; the session itself always runs in inference mode.
    """

    def __init__(self, path: str | Path, device: str = "cpu"):
        """path: the .onnx file. device: 'cpu', 'cuda' or 'auto' (see providers).
        Raises CheckpointError for a missing file or one onnxruntime cannot load."""
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
        """The model's metadata_props as {key: value} (where an exporter keeps its own notes)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # onnxruntime reads host memory: one contiguous float32 copy, whatever the torch layout
        array = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits).to(images.device)


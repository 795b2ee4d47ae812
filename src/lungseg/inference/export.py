"""Export a trained checkpoint to TorchScript and ONNX, each checked against eager PyTorch.

Both files are self-describing: they carry the checkpoint's threshold, post-processing,
preprocessing settings and model arguments (lungseg.inference.formats, which also reads them back), so
`lungseg.inference.formats.load_predictor` can run them alone.

An export is written to a temporary file, its logits are compared with the checkpoint's eager
fp32 model on random inputs, and only if they agree within PARITY_TOLERANCE is it renamed into
place: a failed export leaves no file behind.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from lungseg.core.errors import ExportError
from lungseg.core.io import atomic_path
from lungseg.inference.formats import is_exported, load_exported, onnx_properties, require, torchscript_extra_files
from lungseg.model.checkpoint import build_model, load_checkpoint

PARITY_TOLERANCE = 1e-4  # max |logit difference|; fp32 re-orderings give ~1e-8 here, a wrong graph gives >1e-2
ONNX_OPSET = 18  # the dynamo exporter's native opset (no version conversion); onnxruntime >= 1.14 runs it
SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx"}
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def export_model(checkpoint_path: str | Path, out_dir: str | Path, formats: tuple[str, ...] = ("torchscript", "onnx")) -> dict:
    """Write `<checkpoint stem>.ts` and/or `.onnx` into `out_dir`.

    Args:
        checkpoint_path: the checkpoint written by the train stage (.pth), not an export.
        out_dir: the folder the exports are written into.
        formats: which exports to write: "torchscript", "onnx" or both (default both).

    Returns:
        {format: {"path": str, "max_abs_diff": float}} with each file's measured parity.

    Raises:
        ExportError: for an unknown format, missing ONNX packages (before anything is written), an exported
            model given as the checkpoint, or an export that fails the parity check.
    """
    unknown = [f for f in formats if f not in SUFFIXES]
    if unknown:
        raise ExportError(f"unknown export format(s) {', '.join(map(repr, unknown))}; expected {', '.join(SUFFIXES)}")
    if "onnx" in formats:
        require(*ONNX_PACKAGES)  # before writing anything, so a missing package never leaves half a set
    exporters = {"torchscript": export_torchscript, "onnx": export_onnx}
    checkpoint_path = Path(checkpoint_path)
    if is_exported(checkpoint_path):
        raise ExportError(f"{checkpoint_path}: lungseg export takes the checkpoint written by the train stage (.pth), "
                          "e.g. results/best_unet.pth, not an exported model (.ts, .onnx)")
    results = {}
    for name in formats:
        path = Path(out_dir) / f"{checkpoint_path.stem}{SUFFIXES[name]}"
        results[name] = {"path": str(path), "max_abs_diff": exporters[name](checkpoint_path, path)}
    return results


def export_torchscript(checkpoint_path: str | Path, out_path: str | Path) -> float:
    """Trace the eval-mode model to TorchScript, checked against eager PyTorch.

    Traced, not scripted: the U-Net has no data-dependent control flow, so a trace records it
    exactly, while torch.jit.script rejects model.py's Python-only input-size check. The trace
    freezes that check, which is harmless because the export's input size is fixed (metadata).

    Args:
        checkpoint_path: the checkpoint (.pth).
        out_path: the TorchScript file to write.

    Returns:
        The measured max |logit difference|.

    Raises:
        ExportError: when the export disagrees with PyTorch beyond PARITY_TOLERANCE (nothing is written).
    """
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
            torch.jit.save(traced, str(tmp), _extra_files=torchscript_extra_files(checkpoint))
            return _checked_parity(model, tmp, checkpoint)


def export_onnx(checkpoint_path: str | Path, out_path: str | Path, opset: int = ONNX_OPSET) -> float:
    """Export to ONNX with a dynamic batch dimension, checked against eager PyTorch.

    Uses torch.onnx's dynamo (torch.export) exporter, the default since torch 2.9: the legacy
    TorchScript-based exporter warns that it will be removed. The spatial size stays fixed at the
    training size S: Predictor only ever feeds S x S images (native sizes are handled by resizing
    probabilities), and fixed shapes keep model.py's divisibility check static and let the
    exporter fold every shape computation.

    Args:
        checkpoint_path: the checkpoint (.pth).
        out_path: the .onnx file to write.
        opset: the ONNX opset (default ONNX_OPSET).

    Returns:
        The measured max |logit difference|.

    Raises:
        ExportError: when onnx, onnxruntime or onnxscript is missing, or the export disagrees with PyTorch
            beyond PARITY_TOLERANCE (nothing is written).
    """
    require(*ONNX_PACKAGES)
    import onnx

    checkpoint = load_checkpoint(checkpoint_path)
    model, example = _eager(checkpoint)
    with _quiet_exporter():
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, verbose=False, input_names=["image"],
                                    output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    proto = program.model_proto
    properties = {entry.key: entry.value for entry in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**properties, **onnx_properties(checkpoint)})
    onnx.checker.check_model(proto)
    with atomic_path(out_path) as tmp:
        onnx.save_model(proto, str(tmp))  # one file: weights inline (far below protobuf's 2 GB limit)
        return _checked_parity(model, tmp, checkpoint)


def check_parity(checkpoint_path: str | Path, exported_path: str | Path, n: int = 4, seed: int = 0) -> float:
    """Max |logit difference| between an exported model and the checkpoint's eager fp32 model on CPU.

    Args:
        checkpoint_path: the checkpoint the export was made from.
        exported_path: the export (.ts or .onnx).
        n: how many random images in [0, 1] the one batch holds.
        seed: the seed of those images.

    Returns:
        The max |logit difference| over the batch.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    model, _ = _eager(checkpoint)
    return _parity(model, exported_path, int(checkpoint["preprocess"]["image_size"]), n, seed)


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
    return float((load_exported(exported_path)(images) - model.eval()(images)).abs().max())


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


"""Where and how tensors run: device choice, mixed precision, and batched forward passes.

Shared by training (validation) and inference, so that both score a model the same way.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from lungseg.core.config import DEVICES
from lungseg.core.errors import ParamsError


def resolve_device(name: str = "auto", setting: str = "train.device, infer.device or --device") -> torch.device:
    """The torch device `name` asks for: 'auto' picks CUDA, then Apple MPS, then CPU.

    Args:
        name: 'auto', or a torch device name ('cpu', 'cuda', 'cuda:1', 'mps'), which must be available.
        setting: where the name came from, for the error message.

    Returns:
        The device.

    Raises:
        ParamsError: the name is unknown or its device is not available; it names `setting` and the devices usable here.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    usable = ["auto", "cpu"] + [kind for kind, ok in (("cuda", torch.cuda.is_available()),
                                                      ("mps", torch.backends.mps.is_available())) if ok]
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ParamsError(f"{setting}: unknown device {name!r}; use one of {list(DEVICES)} (here: {usable})") from None
    missing = {"cuda": "PyTorch sees no CUDA GPU", "mps": "Apple MPS is not available"}
    if device.type in missing and device.type not in usable:
        raise ParamsError(f"{setting}: device {name!r} was asked for but {missing[device.type]}; "
                          f"use one of {usable} (auto picks the best one here)")
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (Intel AMX or AVX512-BF16).

    Elsewhere bf16 is emulated and measured 10x slower than fp32 (an AVX2 EPYC: 1.26 vs 13.0 images/s,
    BENCHMARKS.md), so it must stay off.

    Returns:
        True on CPUs with AMX or AVX512-BF16.
    """
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype to autocast to, or None for plain fp32.

    'auto' uses bf16 where the hardware runs it natively: CUDA cards with bf16 (Ampere and newer)
    and CPUs with AMX or AVX512-BF16. Weights stay fp32, so accuracy holds (tested: same-seed
    bf16 and fp32 runs end within 0.01 validation Dice); elsewhere fp32 is the fast choice.

    Args:
        device: where the model runs.
        precision: 'auto', 'fp32' or 'bf16' (train.precision).

    Returns:
        torch.bfloat16, or None for plain fp32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def should_compile(device: torch.device, setting: str = "auto") -> bool:
    """Whether to torch.compile the model.

    torch.compile pays off on CUDA (fused kernels, ~30% faster at base width 64) but not on CPU,
    where it measured no faster after a 60-75 s compile; 'auto' therefore means CUDA only.

    Args:
        device: where the model runs.
        setting: 'auto', 'always' or 'never' (train.compile).

    Returns:
        True to compile.
    """
    return setting == "always" or (setting == "auto" and device.type == "cuda")


def configure(device: torch.device) -> None:
    """Set process-wide switches for speed on CUDA (nothing elsewhere).

    Lets cuDNN pick the fastest convolution for our fixed input size, and allows TF32 for whatever stays in fp32
    on Ampere and newer.

    Args:
        device: where the model runs.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def memory_format(device: torch.device, dtype: torch.dtype | None) -> torch.memory_format:
    """The layout to train in: channels_last where the kernels prefer it (cuDNN, oneDNN's bf16 path).

    In fp32 training on CPU it measured 14-30% slower than NCHW at base widths 32-64
    (BENCHMARKS.md); inference, which has no backward pass, always uses channels_last.

    Args:
        device: where the model trains.
        dtype: the autocast dtype (autocast_dtype), None for fp32.

    Returns:
        torch.channels_last on CUDA or with autocast, else torch.contiguous_format.
    """
    return torch.channels_last if device.type == "cuda" or dtype is not None else torch.contiguous_format


def prepare_model(model: torch.nn.Module, device: torch.device, layout: torch.memory_format = torch.contiguous_format) -> torch.nn.Module:
    """Move `model` to `device` in the given memory layout.

    Args:
        model: the model, moved in place.
        device: where it runs.
        layout: its memory format (memory_format).

    Returns:
        The same model.
    """
    return model.to(device=device, memory_format=layout)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A context in which the operations on `device` autocast to `dtype`.

    Args:
        device: where the operations run.
        dtype: the autocast dtype (autocast_dtype); None: plain fp32, a context that does nothing.

    Returns:
        The context manager.
    """
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def images_to_tensor(images: np.ndarray, device: torch.device, layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 N x H x W (0..255) -> float32 N x 1 x H x W in [0, 1] on `device`.

    The uint8 array crosses to the device first (4x less to copy), then becomes float there.

    Args:
        images: uint8 N x H x W, 0..255.
        device: where the tensor goes.
        layout: its memory format (memory_format).

    Returns:
        float32 N x 1 x H x W in [0, 1].
    """
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device).unsqueeze(1).float().div_(255)
    return tensor.contiguous(memory_format=layout)


def masks_to_tensor(masks: np.ndarray, device: torch.device, layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 N x H x W (0/1) -> float32 N x 1 x H x W on `device`.

    Args:
        masks: uint8 N x H x W, 0/1.
        device: where the tensor goes.
        layout: its memory format (memory_format).

    Returns:
        float32 N x 1 x H x W, 0/1.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(masks)).to(device).unsqueeze(1).float()
    return tensor.contiguous(memory_format=layout)


@torch.inference_mode()
def forward_in_batches(model: torch.nn.Module, images: torch.Tensor, batch_size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits of `model` for N x 1 x H x W `images`, in eval mode, batch by batch (fp32 result).

    Args:
        model: the model; put in eval mode.
        images: N x 1 x H x W on the model's device.
        batch_size: images per forward pass.
        dtype: the autocast dtype (autocast_dtype); None: plain fp32.

    Returns:
        float32 N x 1 x H x W logits.
    """
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        with autocast(images.device, dtype):
            outputs.append(model(images[start : start + batch_size]).float())
    return torch.cat(outputs)

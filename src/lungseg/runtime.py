"""Where and how tensors run: device choice, mixed precision, and batched forward passes.

Shared by training (validation) and inference, so that both score a model the same way.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use device: auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' was asked for but Apple MPS is not available; use device: auto or cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype to autocast to, or None for plain fp32.

    'auto' uses bf16 only on CUDA cards with native bf16 (Ampere and newer): there it is both
    faster and, with fp32 weights, as accurate for this task; elsewhere fp32 is the safe choice.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def images_to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N x H x W (0..255) -> float32 N x 1 x H x W in [0, 1] on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).unsqueeze(1).float().div_(255)


def masks_to_tensor(masks: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N x H x W (0/1) -> float32 N x 1 x H x W on `device`."""
    return torch.from_numpy(np.ascontiguousarray(masks)).to(device).unsqueeze(1).float()


@torch.inference_mode()
def forward_in_batches(model: torch.nn.Module, images: torch.Tensor, batch_size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits of `model` for N x 1 x H x W `images`, in eval mode, batch by batch (fp32 result)."""
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        with autocast(images.device, dtype):
            outputs.append(model(images[start : start + batch_size]).float())
    return torch.cat(outputs)

"""The one path from a checkpoint to masks, used by evaluate and visualize (and later predict)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lungseg.checkpoint import build_model, load_checkpoint
from lungseg.runtime import autocast_dtype, configure, forward_in_batches, images_to_tensor, prepare_model, resolve_device


@dataclass
class Predictor:
    """A trained model on its device, with the threshold and input size it was trained for."""

    model: torch.nn.Module
    device: torch.device
    threshold: float
    image_size: int
    dtype: torch.dtype | None = None
    layout: torch.memory_format = torch.contiguous_format

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", threshold: float | None = None, precision: str = "auto") -> "Predictor":
        checkpoint = load_checkpoint(path)
        torch_device = resolve_device(device)
        configure(torch_device)
        dtype = autocast_dtype(torch_device, precision)
        # channels_last for inference everywhere: measured 1.4-1.7x faster on CPU too (no backward pass)
        layout = torch.channels_last
        model = prepare_model(build_model(checkpoint), torch_device, layout).eval()
        chosen = checkpoint["threshold"] if threshold is None else threshold
        return cls(model, torch_device, chosen, int(checkpoint["preprocess"]["image_size"]), dtype, layout)

    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Lung probability per pixel for preprocessed uint8 images (N x S x S) -> float32 N x S x S."""
        if images.dtype != np.uint8:
            raise ValueError(f"expected preprocessed uint8 images (0..255), got dtype {images.dtype}")
        if images.ndim != 3 or images.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(f"expected preprocessed images of shape (N, {self.image_size}, {self.image_size}), got {images.shape}")
        logits = forward_in_batches(self.model, images_to_tensor(images, self.device, self.layout), batch_size, self.dtype)
        return torch.sigmoid(logits)[:, 0].cpu().numpy()

    def masks(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Binary masks (uint8 0/1, N x S x S) at the model's threshold."""
        return (self.probabilities(images, batch_size) > self.threshold).astype(np.uint8)

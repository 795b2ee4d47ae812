"""The baseline every benchmark compares against: training as the classic notebook does it.

fp32, NCHW, batch 2, a per-item Dataset that turns one image at a time into a tensor, a
shuffling DataLoader, and a loss read back with .item() after every step. Same U-Net and
same loss as lungseg, so differences come from the training loop alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lungseg.model.losses import BceDiceLoss


class ArrayDataset(Dataset):
    """One (image, mask) pair per __getitem__, converted to float tensors on the fly."""

    def __init__(self, images: np.ndarray, masks: np.ndarray):
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        image = torch.from_numpy(self.images[i].astype(np.float32) / 255.0).unsqueeze(0)
        mask = torch.from_numpy(self.masks[i].astype(np.float32)).unsqueeze(0)
        return image, mask


def seed_loader(images: np.ndarray, masks: np.ndarray, batch_size: int = 2, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(ArrayDataset(images, masks), batch_size=batch_size, shuffle=True, generator=generator)


def seed_epoch(model, optimizer, loader, device, max_steps: int | None = None) -> tuple[float, int]:
    """One notebook-style epoch; returns (mean loss, images seen)."""
    loss_fn = BceDiceLoss(0.5, 0.5)
    model.train()
    total, seen = 0.0, 0
    for step, (image, mask) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        image, mask = image.to(device), mask.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(image), mask)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(image)  # the per-step host sync notebooks do
        seen += len(image)
    return total / max(seen, 1), seen

"""A tiny U-Net whose weights are not what a fresh one starts with, for the tests that save,
load or export a model (test_checkpoint.py, test_export.py). Not a test module."""

from __future__ import annotations

import torch

from lungseg.model import UNet


def perturbed_unet(model_args: dict, size: int, seed: int = 0) -> UNet:
    """UNet(**model_args) in eval mode with weights moved off their initial values and BatchNorm
    running statistics moved by two train-mode passes over shifted inputs, so a save, load or
    export that dropped or mis-folded any of them would change the output."""
    torch.manual_seed(seed)
    model = UNet(**model_args)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        model.train()
        for _ in range(2):
            model(torch.rand(4, 1, size, size) * 2 + 0.5)
    return model.eval()

"""A tiny U-Net whose weights are not what a fresh one starts with, for the tests that save,
load or export a model (test_checkpoint.py, test_export.py). Not a test module."""

from __future__ import annotations

import torch

from lungseg.model.unet import UNet


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


def tiny_estimator(size: int = 16, seed: int = 0):
    """A DiceEstimator fitted on made-up measures of two-blob masks (size x size), whose Dice
    falls as the soft Dice does: enough for the plumbing that stores and applies one."""
    import numpy as np

    from lungseg.postprocessing.quality import FEATURES, DiceEstimator, ShapeModel

    rng = np.random.default_rng(seed)
    masks = np.zeros((6, size, size), np.uint8)
    for i, mask in enumerate(masks):
        mask[2:size - 2 - i % 3, 1:size // 2 - 1] = 1
        mask[2 + i % 2:size - 2, size // 2 + 1:size - 1] = 1
    values = rng.uniform(0.05, 0.95, (40, len(FEATURES)))
    values[:, 0] = rng.uniform(0.7, 0.999, 40)  # soft Dice
    dice = np.clip(values[:, 0] - 0.02, 0, 1)
    return DiceEstimator.fit(values, dice, ShapeModel.fit(masks, components=3), {"images": 5, "draws": 7})

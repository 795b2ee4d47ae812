"""Random changes to training batches that a chest X-ray can plausibly show, run on the device.

Geometry: small rotations, zooms and shifts (patient position and distance to the detector
vary); one affine warp moves the image and its mask together. Intensity: brightness,
contrast, gamma and noise (exposure and detector differ between sites). No left-right flips:
the heart sits on the patient's left, and a flipped X-ray is not an X-ray anyone will see.

Everything is drawn from one seeded generator on the data's device, so a run is repeatable
and no batch waits for the CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lungseg.config import AugmentConfig


class Augmenter:
    """Callable (images, masks) -> (images, masks) for N x 1 x H x W batches in [0, 1]."""

    def __init__(self, config: AugmentConfig, seed: int, device: torch.device):
        self.config = config
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.uniform(len(images), 0, 1) < self.config.probability  # which images change at all
        images, masks = self.warp(images, masks, chosen)
        images = self.adjust_intensity(images, chosen)
        # one channel: NCHW and channels_last are the same bytes, so no layout to restore
        return images, masks

    def uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        device = self.generator.device
        return torch.rand(n, generator=self.generator, device=device) * (high - low) + low

    def warp(self, images, masks, chosen):
        """One random affine map per image, applied with the same grid to image and mask."""
        c, n = self.config, len(images)
        angle = torch.deg2rad(self.uniform(n, -c.rotate_degrees, c.rotate_degrees)) * chosen
        zoom = torch.where(chosen, self.uniform(n, 1 - c.scale, 1 + c.scale), torch.ones(n, device=images.device))
        shift = self.uniform(2 * n, -2 * c.shift, 2 * c.shift).view(n, 2) * chosen[:, None]  # grid units: 2 = the image
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        # border padding: a shifted X-ray shows more of the body's edge, not a black band
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        masks = (F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).to(masks.dtype)
        return images, masks

    def adjust_intensity(self, images, chosen):
        """Contrast around each image's mean, brightness, gamma, then Gaussian noise; clamped to [0, 1]."""
        c, n = self.config, len(images)
        per_image = (n, 1, 1, 1)
        on = chosen.view(per_image).to(images.dtype)
        contrast = 1 + on * self.uniform(n, -c.contrast, c.contrast).view(per_image)
        brightness = on * self.uniform(n, -c.brightness, c.brightness).view(per_image)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = ((images - mean) * contrast + mean + brightness).clamp(0, 1)
        # gamma drawn log-uniformly, so darkening and brightening are equally likely
        log_gamma = on * self.uniform(n, math.log(1 - c.gamma), math.log(1 + c.gamma)).view(per_image)
        images = images.clamp_min(1e-6).pow(torch.exp(log_gamma))
        noise_std = on * self.uniform(n, 0, c.noise).view(per_image)
        noise = torch.randn(images.shape, generator=self.generator, device=images.device, dtype=images.dtype)
        return (images + noise * noise_std).clamp(0, 1)

"""Random changes to training batches that a chest X-ray can plausibly show, run on the device.

Geometry: small rotations, zooms and shifts (patient position and distance to the detector
vary); one affine warp moves the image and its mask together. Intensity: brightness,
contrast, gamma and noise (exposure and detector differ between sites). No left-right flips:
the heart sits on the patient's left, and a flipped X-ray is not an X-ray anyone will see.

Site appearance (what differs between hospitals, each off when its key is 0): blur or
sharpening (detector and post-processing), collimation bands at the borders (a dark or bright
frame, an off-centre field) and burned-in text and markers (bright letters such as L/R, label
boxes). These change only the image: the lungs are where they were, so the mask is untouched.

Disease (off at 0): a dense opacity over part of a lung (consolidation, effusion, the white lung
of ARDS). It too changes only the image: an opaque lung is still lung, which a model that has
seen only clear lungs gets wrong.

Everything is drawn from one seeded generator on the data's device, so a run is repeatable
and no batch waits for the CPU. An op whose keys are 0 draws nothing, so turning it off leaves
the random stream, and so the run, exactly as without it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lungseg.core.config import AugmentConfig

# 5 x 7 bitmaps of what is burned into radiographs: side markers, letters of labels, a label box
# (lungseg.data.synthetic draws the L and R too: a shared module would be one more dependency
# column in `dvc exp show`, which is at the edge of a 160-column terminal)
_GLYPHS = (
    ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),  # L
    ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),  # R
    (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),  # A
    ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),  # P
    ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),  # 1
    ("#####", "#####", "#####", "#####", "#####", "#####", "#####"),  # box
)
MARK_VALUE = (0.85, 1.0)  # burned-in marks are near white
BAND_DARK, BAND_BRIGHT = (0.0, 0.1), (0.9, 1.0)  # collimated edges: unexposed (dark) or shuttered (bright)
OPACITY_VALUE = (0.6, 0.9)  # the grey an opacity lightens toward: soft tissue to dense consolidation
OPACITY_STRENGTH = (0.5, 1.0)  # how far toward it (1: the lung is no longer seen there)
OPACITY_EDGE = 0.4  # share of the radius over which an opacity fades out


class Augmenter:
    """Callable (images, masks) -> (images, masks) for N x 1 x H x W batches in [0, 1].

    Args:
        config: the augment section.
        seed: of this augmenter's generator.
        device: where batches live (and the generator draws).
    """

    def __init__(self, config: AugmentConfig, seed: int, device: torch.device):
        self.config = config
        self.generator = torch.Generator(device=device).manual_seed(seed)
        glyphs = [[[float(c == "#") for c in row] for row in glyph] for glyph in _GLYPHS]
        self.glyphs = torch.tensor(glyphs, device=device)[:, None]  # G x 1 x 7 x 5

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Change a share (config.probability) of a batch's images, and their masks where the geometry moves.

        Args:
            images: N x 1 x H x W in [0, 1], on the augmenter's device.
            masks: N x 1 x H x W, 0/1.

        Returns:
            the changed images (in [0, 1]) and masks, shaped as given.
        """
        chosen = self.uniform(len(images), 0, 1) < self.config.probability  # which images change at all
        images, masks = self.warp(images, masks, chosen)
        images = self.opacify(images, masks, chosen)  # anatomy first: exposure and detector act on it
        images = self.adjust_intensity(images, chosen)
        images = self.change_detail(images, chosen)
        images = self.collimate(images, chosen)
        images = self.burn_in_marks(images, chosen)
        # one channel: NCHW and channels_last are the same bytes, so no layout to restore
        return images, masks

    def uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        """n draws uniform in [low, high) from this augmenter's generator.

        Args:
            n: how many.
            low: the lower bound (included).
            high: the upper bound (excluded).

        Returns:
            a tensor of n floats on the generator's device.
        """
        device = self.generator.device
        return torch.rand(n, generator=self.generator, device=device) * (high - low) + low

    def coin(self, n: int, p: float, chosen: torch.Tensor) -> torch.Tensor:
        """Which of n images (only those `chosen`) an op with probability p applies to.

        Args:
            n: the batch size.
            p: the op's probability.
            chosen: boolean (n,), the images changed at all.

        Returns:
            boolean (n,).
        """
        return (self.uniform(n, 0, 1) < p) & chosen

    def warp(self, images, masks, chosen):
        """One random affine map per image, applied with the same grid to image and mask.

        Args:
            images: N x 1 x H x W in [0, 1].
            masks: N x 1 x H x W, 0/1.
            chosen: boolean (N,), the images to change (the others are left as they are).

        Returns:
            the warped images and masks (masks stay 0/1).
        """
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

    def opacify(self, images, masks, chosen):
        """With probability opacity_probability, a dense opacity on an image with lung: a soft disc
        centred on a random lung pixel, radius in [opacity_size / 3, opacity_size] of the side,
        lightens the image toward a grey of OPACITY_VALUE. The disc may overrun the lung's edge,
        so that edge is no cue to where the lung ends.

        Args:
            images: N x 1 x H x W in [0, 1].
            masks: N x 1 x H x W, 0/1 (not changed: an opaque lung is still lung).
            chosen: boolean (N,), the images that may change.

        Returns:
            the images.
        """
        c, (n, _, height, width) = self.config, images.shape
        if c.opacity_probability == 0:
            return images
        lung = masks.flatten(1)
        on = self.coin(n, c.opacity_probability, chosen) & (lung.sum(1) > 0)
        centre = torch.multinomial(lung.float() + 1e-12, 1, generator=self.generator)[:, 0]  # a lung pixel
        cy, cx = (centre // width + 0.5) / height, (centre % width + 0.5) / width
        radius = self.uniform(n, c.opacity_size / 3, c.opacity_size)
        y = _centres(height, images).view(1, height, 1)
        x = _centres(width, images).view(1, 1, width)
        distance = ((y - cy.view(n, 1, 1)) ** 2 + (x - cx.view(n, 1, 1)) ** 2).sqrt() / radius.view(n, 1, 1)
        fade = ((1 - distance) / OPACITY_EDGE).clamp(0, 1)  # 1 inside, falling to 0 at the radius
        alpha = (fade * (self.uniform(n, *OPACITY_STRENGTH) * on).view(n, 1, 1)).unsqueeze(1).to(images.dtype)
        value = self.uniform(n, *OPACITY_VALUE).view(n, 1, 1, 1).to(images.dtype)
        return images + alpha * (value - images)

    def adjust_intensity(self, images, chosen):
        """Contrast around each image's mean, brightness, gamma, then Gaussian noise; clamped to [0, 1].

        Args:
            images: N x 1 x H x W in [0, 1].
            chosen: boolean (N,), the images to change.

        Returns:
            the images.
        """
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

    def change_detail(self, images, chosen):
        """Blur or sharpen: image + w * (Gaussian_sigma(image) - image), sigma in [0, blur] px and
        w in [-sharpen, 1]; w > 0 blurs (1: fully), w < 0 is an unsharp mask at the same scale.

        Args:
            images: N x 1 x H x W in [0, 1].
            chosen: boolean (N,), the images to change.

        Returns:
            the images, clamped to [0, 1].
        """
        c, n = self.config, len(images)
        if c.blur == 0:
            return images
        sigma = self.uniform(n, 0, c.blur).clamp_min(1e-3)
        weight = self.uniform(n, -c.sharpen, 1) * chosen
        smooth = _gaussian_blur(images, sigma, radius=math.ceil(3 * c.blur))
        return (images + weight.view(n, 1, 1, 1).to(images.dtype) * (smooth - images)).clamp(0, 1)

    def collimate(self, images, chosen):
        """With probability border_probability, a band up to border_width of the side on each edge
        (independently, so the field may sit off-centre) becomes one dark or bright value.

        Args:
            images: N x 1 x H x W in [0, 1].
            chosen: boolean (N,), the images that may change.

        Returns:
            the images.
        """
        c, (n, _, height, width) = self.config, images.shape
        if c.border_probability == 0 or c.border_width == 0:
            return images
        on = self.coin(n, c.border_probability, chosen)
        left, right, top, bottom = self.uniform(4 * n, 0, c.border_width).view(4, n, 1, 1, 1)
        bright = self.uniform(n, 0, 1) < 0.5
        value = torch.where(bright, self.uniform(n, *BAND_BRIGHT), self.uniform(n, *BAND_DARK)).view(n, 1, 1, 1)
        x = _centres(width, images).view(1, 1, 1, width)
        y = _centres(height, images).view(1, 1, height, 1)
        field = (x >= left) & (x <= 1 - right) & (y >= top) & (y <= 1 - bottom)
        field |= ~on.view(n, 1, 1, 1)
        return torch.where(field, images, value.to(images.dtype))

    def burn_in_marks(self, images, chosen):
        """With probability text_probability, 1 to text_count near-white glyphs (letters, boxes),
        each up to text_size of the side tall, anywhere in the image, lerped over it (lungs too).

        Args:
            images: N x 1 x H x W in [0, 1].
            chosen: boolean (N,), the images that may change.

        Returns:
            the images.
        """
        c, (n, _, height, width) = self.config, images.shape
        if c.text_probability == 0:
            return images
        k = c.text_count
        on = self.coin(n, c.text_probability, chosen)
        count = 1 + (self.uniform(n, 0, 1) * k).long().clamp_max(k - 1)  # marks on each image
        active = (torch.arange(k, device=images.device)[None, :] < count[:, None]) & on[:, None]  # n x k
        glyph = (self.uniform(n * k, 0, 1) * len(self.glyphs)).long().clamp_max(len(self.glyphs) - 1)
        tall = self.uniform(n * k, c.text_size / 2, c.text_size)  # fractions of the side
        wide = tall * 5 / 7 * self.uniform(n * k, 1, 2) * height / width  # glyph aspect, stretched up to 2x
        top, left = self.uniform(n * k, 0, 1) * (1 - tall), self.uniform(n * k, 0, 1) * (1 - wide)
        rows = _glyph_weights(_centres(height, images), top, tall, self.glyphs.shape[2])  # nk x H x 7
        cols = _glyph_weights(_centres(width, images), left, wide, self.glyphs.shape[3])  # nk x W x 5
        # a glyph scaled bilinearly is separable: rows @ bitmap @ cols^T, a small batched matmul
        stamps = rows @ self.glyphs[glyph, 0].to(images.dtype) @ cols.transpose(1, 2)
        alpha = (stamps.view(n, k, height, width) * active[:, :, None, None]).amax(dim=1, keepdim=True)
        value = self.uniform(n, *MARK_VALUE).view(n, 1, 1, 1).to(images.dtype)
        return images + alpha * (value - images)


def _centres(size: int, like: torch.Tensor) -> torch.Tensor:
    """Pixel-centre coordinates in [0, 1] along one side."""
    return (torch.arange(size, device=like.device, dtype=like.dtype) + 0.5) / size


def _glyph_weights(coords: torch.Tensor, start: torch.Tensor, length: torch.Tensor, cells: int) -> torch.Tensor:
    """Bilinear weights (marks x len(coords) x cells) of a glyph's `cells` pixels spanning
    [start, start + length] of a side, at pixel centres `coords` (all in [0, 1]); 0 outside."""
    position = (coords[None, :] - start[:, None]) / length[:, None] * cells  # in glyph pixels
    return (1 - (position[:, :, None] - torch.arange(cells, device=coords.device) - 0.5).abs()).clamp_min(0)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Each image blurred with its own Gaussian (sigma per image, in pixels), edges replicated so a
    border does not darken. Separable, as weighted sums of shifted views: at these kernel sizes
    several times faster on a CPU than grouped convolutions."""
    n, _, height, width = images.shape
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernels = torch.exp(-0.5 * (taps[None, :] / sigma[:, None].to(images.dtype)) ** 2)
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).view(n, 1, 1, 1, -1)
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    across = sum(kernels[..., j] * padded[..., j:j + width] for j in range(2 * radius + 1))
    return sum(kernels[..., j] * across[..., j:j + height, :] for j in range(2 * radius + 1))

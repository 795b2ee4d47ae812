"""The U-Net: building blocks first, then their assembly.

Pure torch.nn: no files, no params.yaml. The network returns logits; turning them into a
mask (sigmoid, threshold) is the job of `lungseg.inference.predictor`.
"""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Module):
    """(3x3 conv -> BatchNorm -> ReLU) twice: the unit every U-Net level is made of.

    Args:
        in_channels: channels of the input.
        out_channels: channels of both convolutions' output.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            # bias is redundant right before BatchNorm, which adds its own shift
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: N x in_channels x H x W.

        Returns:
            N x out_channels x H x W.
        """
        return self.block(x)


class Down(nn.Module):
    """Halve the resolution, then widen: one encoder level.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool, then convolve.

        Args:
            x: N x in_channels x H x W, H and W even.

        Returns:
            N x out_channels x H/2 x W/2.
        """
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Double the resolution, concatenate the encoder's skip features, then narrow.

    Args:
        in_channels: channels of the input from the level below.
        out_channels: channels of the skip features and of the output.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        # after concatenation: out_channels from below + out_channels from the skip
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample `x`, concatenate `skip` before it, then convolve.

        Args:
            x: N x in_channels x H x W, from the level below.
            skip: N x out_channels x 2H x 2W, the encoder's features at this level.

        Returns:
            N x out_channels x 2H x 2W.
        """
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with `depth` poolings and `base_width` channels at the top.

    Level i has base_width * 2**i channels. Input height and width must be divisible by
    2**depth so that every skip connection lines up with its decoder level.

    Args:
        in_channels: channels of the input image.
        out_channels: channels of the output (one logit map per class).
        depth: number of 2x poolings.
        base_width: channels at full resolution; doubles at each level.

    Raises:
        ValueError: when depth or base_width is below 1.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, depth: int = 4, base_width: int = 16):
        super().__init__()
        if depth < 1 or base_width < 1:
            raise ValueError(f"UNet needs depth >= 1 and base_width >= 1, got depth={depth}, base_width={base_width}")
        self.depth = depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a batch of images.

        Args:
            x: N x in_channels x H x W, H and W divisible by 2**depth.

        Returns:
            logits (not probabilities), N x out_channels x H x W.

        Raises:
            ValueError: when H or W is not divisible by 2**depth.
        """
        factor = 2**self.depth
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"UNet of depth {self.depth} needs height and width divisible by {factor}, got {tuple(x.shape[-2:])}")
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)

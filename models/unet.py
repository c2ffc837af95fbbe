"""The GVSL backbone: a 3D U-Net with 4 down and 4 up stages and configurable widths."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import DoubleConv, Down, Up

PAPER_WIDTHS: tuple[int, ...] = (32, 64, 128, 256, 512, 256, 128, 64, 32)
DEMO_WIDTHS: tuple[int, ...] = (8, 16, 32, 64, 128, 64, 32, 16, 8)


def widths_from_base(base: int) -> tuple[int, ...]:
    """The paper's width pattern scaled to a base width (32 gives the paper's widths)."""
    return tuple(base * m for m in (1, 2, 4, 8, 16, 8, 4, 2, 1))


class UNet3D(nn.Module):
    """3D U-Net returning ``(global_features, local_features)``.

    Global features are the bottleneck (``widths[4]`` channels at 1/16 resolution), local
    features the last decoder level (``widths[8]`` channels at full resolution). Inputs
    of any size >= 16 per side work; sizes need not be multiples of 16 or cubes.
    """

    def __init__(self, widths: Sequence[int] = PAPER_WIDTHS, in_channels: int = 1):
        super().__init__()
        w = tuple(int(v) for v in widths)
        if len(w) != 9:
            raise ValueError(f"widths must have 9 entries (4 down, bottleneck, 4 up), got {len(w)}: {w}")
        self.widths = w
        self.inc = DoubleConv(in_channels, w[0])
        self.down1 = Down(w[0], w[1])
        self.down2 = Down(w[1], w[2])
        self.down3 = Down(w[2], w[3])
        self.down4 = Down(w[3], w[4])
        self.up1 = Up(w[4], w[3], w[5])
        self.up2 = Up(w[5], w[2], w[6])
        self.up3 = Up(w[6], w[1], w[7])
        self.up4 = Up(w[7], w[0], w[8])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bottleneck (global) and last decoder level (local) features of ``x``."""
        if min(x.shape[2:]) < 16:
            raise ValueError(f"each spatial side must be >= 16 voxels for 4 poolings, got {tuple(x.shape[2:])}")
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        y = self.up1(x5, x4)
        y = self.up2(y, x3)
        y = self.up3(y, x2)
        y = self.up4(y, x1)
        return x5, y

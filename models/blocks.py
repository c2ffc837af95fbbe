"""Convolution blocks of the GVSL 3D U-Net: DoubleConv, encoder and decoder stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_count(channels: int, max_groups: int = 8) -> int:
    """Largest number of GroupNorm groups <= ``max_groups`` that divides ``channels``.

    Width-agnostic: the paper's widths (multiples of 32) get 8 groups, a width-8 demo
    model gets 8 groups at its first level and 4 in a 4-channel head.
    """
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


NORMS = ("default", "authors")
"""GroupNorm grouping: ``default`` (:func:`group_count`: 8 groups, any width) or ``authors``
(the authors' network: 8 channels per group, 4 in the restoration head's one norm)."""


def use_norm(model: nn.Module, norm: str) -> None:
    """Regroup every GroupNorm of ``model`` as ``norm`` says (no parameter changes shape).

    The authors' released checkpoint was trained with ``GroupNorm(channels // 8)`` (so 4
    groups at the first level, 64 at the bottleneck) and ``GroupNorm(4, 16)`` in its
    restoration head; the same tensors normalised in 8 groups compute other features, so a
    network that loads that checkpoint must be grouped as it was trained.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    for name, m in model.named_modules():
        if isinstance(m, nn.GroupNorm):
            if norm == "default":
                m.num_groups = group_count(m.num_channels)
            else:
                per = 4 if "restoration_head" in name else 8
                m.num_groups = max(1, m.num_channels // per)


class DoubleConv(nn.Module):
    """(conv3 -> GroupNorm -> LeakyReLU 0.2) x 2, the U-Net's basic block."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        # Sub-module named ``double_conv`` so the official release's keys map one to one.
        self.double_conv = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(group_count(out_channels), out_channels),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1),
            nn.GroupNorm(group_count(out_channels), out_channels),
            nn.LeakyReLU(0.2, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two conv-norm-activation layers."""
        return self.double_conv(x)


class Down(nn.Module):
    """Max-pool by 2 then DoubleConv (floor for odd sizes; the decoder restores them)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool3d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve the grid, then two convolutions."""
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Trilinear upsampling to the skip connection's exact size, concatenation, DoubleConv.

    Upsampling to the skip's size (not by a fixed factor of 2) is what lets the network
    take volumes whose sides are not multiples of 16.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` to ``skip``'s grid, concatenate ``skip`` and convolve."""
        x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=True)
        return self.conv(torch.cat([skip, x], dim=1))

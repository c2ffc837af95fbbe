"""Downstream networks built on the GVSL backbone: segmentation and classification."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import use_norm
from .unet import PAPER_WIDTHS, UNet3D


class SegmentationNet(nn.Module):
    """U-Net backbone + a 1x1x1 convolution on the local features to class logits.

    With a frozen backbone (``freeze_backbone()``) this is a true linear probe: the only
    trainable layer is one linear map per voxel (the authors' "linear" evaluation used a
    3x3x3 convolution instead).
    """

    def __init__(
        self, n_classes: int, widths: Sequence[int] = PAPER_WIDTHS, in_channels: int = 1, norm: str = "default"
    ):
        super().__init__()
        self.unet = UNet3D(widths, in_channels)
        self.head = nn.Conv3d(self.unet.widths[8], n_classes, 1)
        self.n_classes = n_classes
        self.norm = norm  # "authors" for a backbone from the authors' checkpoint (models.blocks.use_norm)
        use_norm(self, norm)

    @property
    def widths(self) -> tuple[int, ...]:
        """The backbone's channel widths per level."""
        return self.unet.widths

    def config(self) -> dict:
        """What rebuilds this network: classes, widths and normalisation."""
        return {"n_classes": self.n_classes, "widths": list(self.widths), **_norm_entry(self.norm)}

    def freeze_backbone(self) -> None:
        """Freeze every backbone parameter (linear evaluation)."""
        for p in self.unet.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, n_classes, D, H, W)`` from the backbone's local features."""
        _, local = self.unet(x)
        return self.head(local)


class ClassificationNet(nn.Module):
    """U-Net encoder's global (bottleneck) features -> global average pool -> linear layer.

    Only the encoder is evaluated (the decoder's parameters exist so that checkpoints load
    unchanged but receive no gradient).
    """

    def __init__(
        self, n_outputs: int = 1, widths: Sequence[int] = PAPER_WIDTHS, in_channels: int = 1, norm: str = "default"
    ):
        super().__init__()
        self.unet = UNet3D(widths, in_channels)
        self.head = nn.Linear(self.unet.widths[4], n_outputs)
        self.n_outputs = n_outputs
        self.norm = norm
        use_norm(self, norm)

    @property
    def widths(self) -> tuple[int, ...]:
        """The backbone's channel widths per level."""
        return self.unet.widths

    def config(self) -> dict:
        """What rebuilds this network: outputs, widths and normalisation."""
        return {"n_outputs": self.n_outputs, "widths": list(self.widths), **_norm_entry(self.norm)}

    def freeze_backbone(self) -> None:
        """Freeze every backbone parameter (linear evaluation)."""
        for p in self.unet.parameters():
            p.requires_grad_(False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck features, averaged over space: ``(B, C)``."""
        u = self.unet
        h = u.down4(u.down3(u.down2(u.down1(u.inc(x)))))
        return h.mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_outputs)``."""
        return self.head(self.encode(x))


def _norm_entry(norm: str) -> dict:
    """The ``norm`` key of a model configuration, only where it is not the default (so the
    configurations of every checkpoint written before the option are unchanged).
    """
    return {"norm": norm} if norm != "default" else {}

"""Losses of GVSL pre-training: local NCC, displacement smoothness, restoration MSE."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """Local normalised cross-correlation loss (the negative mean squared local correlation).

    Computed in fp32 with autocast off (sums of squares overflow in half precision), with
    box means over a ``window^3`` neighbourhood. The squared correlation lies in [0, 1), so
    the loss lies in (-1, 0]; an image against itself gives the minimum wherever it has
    local contrast. ``eps`` keeps flat regions finite instead of dividing by zero.
    """
    with torch.autocast(device_type=a.device.type, enabled=False):
        a, b = a.float(), b.float()
        pad = window // 2

        def mean(x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool3d(x, window, stride=1, padding=pad, count_include_pad=False)

        mu_a, mu_b = mean(a), mean(b)
        var_a = (mean(a * a) - mu_a * mu_a).clamp_min(0)
        var_b = (mean(b * b) - mu_b * mu_b).clamp_min(0)
        cov = mean(a * b) - mu_a * mu_b
        cc = cov * cov / (var_a * var_b + eps)
        return -cc.mean()


def smoothness(displacement: torch.Tensor) -> torch.Tensor:
    """Mean squared forward differences of a displacement ``(B, 3, D, H, W)`` along each axis."""
    d = displacement.float()
    dz = d[:, :, 1:] - d[:, :, :-1]
    dy = d[:, :, :, 1:] - d[:, :, :, :-1]
    dx = d[:, :, :, :, 1:] - d[:, :, :, :, :-1]
    return (dz.pow(2).mean() + dy.pow(2).mean() + dx.pow(2).mean()) / 3.0


def restoration_mse(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the restoration head, in fp32."""
    return F.mse_loss(restored.float(), target.float())

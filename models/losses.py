"""Losses of GVSL pre-training: local NCC, displacement smoothness, restoration MSE."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def local_ncc(
    a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-5, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Local normalised cross-correlation loss (the negative mean squared local correlation).

    Computed in fp32 with autocast off (sums of squares overflow in half precision), with
    box means over a ``window^3`` neighbourhood. The squared correlation lies in [0, 1), so
    the loss lies in (-1, 0]; an image against itself gives the minimum wherever it has
    local contrast. ``eps`` keeps flat regions finite instead of dividing by zero.
    ``weight`` (B, 1, D, H, W), 1 where the voxels are to be compared and 0 where not (where
    a moving scan has no data), restricts both the window statistics and the mean to those
    voxels, so that the edge of a partial field of view is not taken for an edge of the anatomy.
    """
    with torch.autocast(device_type=a.device.type, enabled=False):
        a, b = a.float(), b.float()
        c = a.shape[1]
        if weight is None:
            stack = torch.cat([a, b, a * a, b * b, a * b], dim=1)
            ones = torch.ones(1, 1, *a.shape[2:], device=a.device, dtype=a.dtype)
        else:
            w = weight.float()
            stack = torch.cat([w * a, w * b, w * a * a, w * b * b, w * a * b], dim=1)
            ones = w
        # Box means as running sums along each axis (a few operations per voxel whatever the
        # window); zero padding with an explicit count keeps borders and small sides exact.
        sums, count = _box_sum(stack, window), _box_sum(ones, window)
        mu_a, mu_b, m_aa, m_bb, m_ab = (sums / count.clamp_min(1e-6)).split(c, dim=1)
        var_a = (m_aa - mu_a * mu_a).clamp_min(0)
        var_b = (m_bb - mu_b * mu_b).clamp_min(0)
        cov = m_ab - mu_a * mu_b
        cc = cov * cov / (var_a * var_b + eps)
        return -cc.mean() if weight is None else -masked_mean(cc, weight)


def masked_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` (B, C, D, H, W) weighted by ``weight`` (B, 1, D, H, W) over voxels and channels (0 if none)."""
    w = weight.float().expand_as(x)
    return (x * w).sum() / w.sum().clamp_min(1e-6)


def _box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over a ``window^3`` neighbourhood (zero padded), as running sums along each axis.

    A cumulative sum and one difference per axis cost the same at any window and, forward
    and backward, about a third of separable 1D convolutions on a CPU (oneDNN's grouped 3D
    convolutions with thin kernels are slow); in fp32 the sums stay exact to ~1e-6 relative.
    """
    pad = window // 2
    for axis in (2, 3, 4):
        n = x.shape[axis]
        widths = [0] * 6
        i = 2 * (4 - axis)  # F.pad lists the last axis first
        widths[i], widths[i + 1] = pad + 1, pad
        running = F.pad(x, widths).cumsum(axis)
        x = running.narrow(axis, window, n) - running.narrow(axis, 0, n)
    return x


def _forward_differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward differences of ``(B, C, D, H, W)`` along z, y and x (each one shorter on its axis)."""
    return x.diff(dim=2), x.diff(dim=3), x.diff(dim=4)


def smoothness(displacement: torch.Tensor) -> torch.Tensor:
    """Mean squared forward differences of a displacement ``(B, 3, D, H, W)`` along each axis."""
    dz, dy, dx = _forward_differences(displacement.float())
    return (dz.pow(2).mean() + dy.pow(2).mean() + dx.pow(2).mean()) / 3.0


def bending_energy(displacement: torch.Tensor) -> torch.Tensor:
    """Mean squared second differences of a displacement ``(B, 3, D, H, W)`` (thin-plate bending energy).

    The three pure and three mixed (counted twice) second differences, averaged like
    :func:`smoothness`. Unlike squared first differences it is zero for any affine field, so
    it leaves a large but smooth deformation alone and penalises only its curvature.
    """
    dz, dy, dx = _forward_differences(displacement.float())
    zz, zy, zx = _forward_differences(dz)
    yy, yx = dy.diff(dim=3), dy.diff(dim=4)
    xx = dx.diff(dim=4)
    pure = zz.pow(2).mean() + yy.pow(2).mean() + xx.pow(2).mean()
    mixed = zy.pow(2).mean() + zx.pow(2).mean() + yx.pow(2).mean()
    return (pure + 2.0 * mixed) / 9.0


def restoration_mse(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the restoration head, in fp32."""
    return F.mse_loss(restored.float(), target.float())


def multiscale_ncc(
    a: torch.Tensor, b: torch.Tensor, window: int = 9, scales: tuple[int, ...] = (1, 2, 4), eps: float = 1e-5
) -> torch.Tensor:
    """Local NCC loss averaged over image scales (average-pooled by each factor in ``scales``).

    At full resolution a 9^3 window only "sees" a misalignment of a few voxels, so the
    gradient of :func:`local_ncc` cannot pull structures that are further apart; at 1/4
    resolution the same window spans a quarter of the volume. The coarse terms give the
    network (or an optimiser) a wide capture range, the full-resolution term the detail
    (the same reason classical registration runs coarse to fine). Same range as
    :func:`local_ncc`, (-1, 0]; pooling lowers local contrast, so ``eps`` weighs more at
    the coarse scales and flat or noisy images score less than -1 against themselves.
    """
    total = a.new_zeros(())
    for s in scales:
        if s > 1:
            a_s, b_s = F.avg_pool3d(a, s, ceil_mode=True), F.avg_pool3d(b, s, ceil_mode=True)
        else:
            a_s, b_s = a, b
        total = total + local_ncc(a_s, b_s, window=window, eps=eps)
    return total / len(scales)

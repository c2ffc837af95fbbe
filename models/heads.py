"""Heads on top of the backbone: Z-Matching (affine + deformable) and self-restoration."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DoubleConv, group_count


class AffineHead(nn.Module):
    """Global matching: both scans' bottleneck features -> 15 unbounded affine parameters.

    DoubleConv on the concatenated features, global average pooling, then four linear
    heads (rotation 3, translation 3, scaling 3, shearing 6). The linear heads start with
    tiny weights and zero bias, so the first prediction is the identity to ~1e-5 while
    every parameter of the branch still receives a gradient from the first step.
    """

    def __init__(self, global_channels: int):
        super().__init__()
        hidden = max(global_channels // 2, 1)
        self.conv = DoubleConv(2 * global_channels, hidden)
        self.rotation = nn.Linear(hidden, 3)
        self.translation = nn.Linear(hidden, 3)
        self.scaling = nn.Linear(hidden, 3)
        self.shearing = nn.Linear(hidden, 6)
        for lin in (self.rotation, self.translation, self.scaling, self.shearing):
            nn.init.normal_(lin.weight, std=1e-5)
            nn.init.zeros_(lin.bias)

    def forward(self, g_moving: torch.Tensor, g_fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        """The 15 affine parameters (rotation, translation, scaling, shearing) of a moving/fixed pair."""
        h = self.conv(torch.cat([g_moving, g_fixed], dim=1)).mean(dim=(2, 3, 4))
        return {
            "rotation": self.rotation(h).float(),
            "translation": self.translation(h).float(),
            "scaling": self.scaling(h).float(),
            "shearing": self.shearing(h).float(),
        }


class DeformableHead(nn.Module):
    """Local matching: affine-aligned local features of the moving scan and the fixed
    scan's local features -> displacement ``(B, 3, D, H, W)`` in voxels (dz, dy, dx).

    The last convolution starts with tiny weights and zero bias (VoxelMorph's choice), so
    the initial displacement is ~0 while gradients reach the whole branch.
    """

    def __init__(self, local_channels: int, extra_channels: int = 0, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(local_channels // 2, 1)
        self.conv = DoubleConv(2 * local_channels + extra_channels, hidden)
        self.flow = nn.Conv3d(hidden, 3, 3, padding=1)
        nn.init.normal_(self.flow.weight, std=1e-5)
        assert self.flow.bias is not None  # Conv3d's default bias=True
        nn.init.zeros_(self.flow.bias)

    def forward(
        self, f_moving_aligned: torch.Tensor, f_fixed: torch.Tensor, extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A displacement field ``(B, 3, D, H, W)`` from aligned moving and fixed features."""
        parts = [f_moving_aligned, f_fixed] + ([extra.to(f_fixed.dtype)] if extra is not None else [])
        return self.flow(self.conv(torch.cat(parts, dim=1))).float()


class RestorationHead(nn.Module):
    """Self-restoration: conv3 -> GroupNorm -> LeakyReLU -> conv1 to one channel.

    The last convolution starts at zero, so every seed starts from the same restoration
    (a constant 0, MSE ~0.16 on [0, 1] intensities). PyTorch's default init gave a width-8
    head an initial MSE anywhere from 0.14 to 1.87 depending on the seed, and the unlucky
    seeds spent the short schedules undoing it. Zeros draw no random numbers, so every
    other parameter is initialised exactly as before.
    """

    def __init__(self, local_channels: int):
        super().__init__()
        hidden = max(local_channels // 2, 1)
        self.layers = nn.Sequential(
            nn.Conv3d(local_channels, hidden, 3, padding=1),
            nn.GroupNorm(group_count(hidden), hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv3d(hidden, 1, 1),
        )
        last = self.layers[-1]
        assert isinstance(last, nn.Conv3d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, f_local: torch.Tensor) -> torch.Tensor:
        """The restored image, one channel, from the local features."""
        return self.layers(f_local)


class KeypointAffineHead(nn.Module):
    """Position-aware global matching: soft keypoints in both scans, affine by least squares.

    A small convolution turns each scan's full-resolution local features into ``keypoints``
    heat maps; a spatial softmax and its centroid (soft-argmax) give one point per map, the
    same map in both scans being the same (learned) landmark. The affine that carries the
    fixed scan's points onto the moving scan's points is solved in closed form (weighted
    least squares, shrunk towards the identity by ``ridge``), so the head never has to learn
    geometry from a pooled vector: a shift of the moving scan shifts its heat maps and hence
    the answer from the first step (a convolutional network is translation-equivariant),
    and rotations and scalings follow once the points spread out.

    Why not the paper's head: it averages a 2^3-3^3 bottleneck over space, which throws
    position away; in our measurements (``benchmarks/affine_probe.py``) it does not learn
    a pure shift in 1000 steps, this head does in well under 200. Idea from KeyMorph
    (Yu et al., 2022), here driven by the same unsupervised NCC loss as the rest of GVSL.
    """

    def __init__(self, local_channels: int, keypoints: int = 32, ridge: float = 0.01, pool: int = 2):
        super().__init__()
        hidden = max(2 * local_channels, 8)
        self.keypoints, self.ridge, self.pool = int(keypoints), float(ridge), int(pool)
        self.heatmaps = nn.Sequential(
            nn.Conv3d(local_channels, hidden, 3, padding=1),
            nn.GroupNorm(group_count(hidden), hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv3d(hidden, self.keypoints, 3, padding=1),
        )
        # PyTorch's default init on purpose: near-uniform maps (tiny logits) put every point at
        # the centre and Adam needs hundreds of steps to sharpen them; random filters already
        # give peaked maps whose points move with the image (faster in affine_probe.py).

    def locate(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft-argmax points ``(B, K, 3)`` in full-resolution voxels (z, y, x) and weights ``(B, K)``."""
        full = features.shape[2:]
        f = self.pool
        if f > 1:
            features = F.avg_pool3d(features, f, ceil_mode=True)
        logits = self.heatmaps(features).float().flatten(2)
        prob = torch.softmax(logits, dim=-1)
        # each pooled cell sits at the centre of the full-resolution voxels it averages
        axes = [
            (
                torch.arange(n, device=features.device, dtype=torch.float32) * f
                + (torch.clamp(torch.arange(n, device=features.device) * f + f, max=m) - 1).float()
            )
            / 2
            for n, m in zip(features.shape[2:], full)
        ]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        with torch.autocast(device_type=prob.device.type, enabled=False):
            points = prob @ grid  # coordinates: fp32 even in a bf16 pass (0.5 voxel steps near 100)
        # A peaked map is a confident landmark: weight by the map's largest probability
        # relative to a uniform map (1 = uniform), detached so it cannot be gamed by the loss.
        weights = (prob.amax(dim=-1) * prob.shape[-1]).detach().clamp(1.0, 1e3).log1p()
        return points, weights

    def forward(self, f_moving: torch.Tensor, f_fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        """The affine fitted to matched keypoints of both scans, and those keypoints."""
        q, w_m = self.locate(f_moving)
        p, w_f = self.locate(f_fixed)
        affine = fit_affine(p, q, torch.minimum(w_m, w_f), self.ridge)
        return {"affine": affine, "fixed_points": p, "moving_points": q}


def fit_affine(
    p: torch.Tensor, q: torch.Tensor, weights: torch.Tensor | None = None, ridge: float = 0.01
) -> torch.Tensor:
    """The ``(B, 3, 4)`` affine ``A`` minimising ``sum_k w_k |A [p_k; 1] - q_k|^2``.

    ``p`` and ``q`` are ``(B, K, 3)`` corresponding points. The linear part is shrunk
    towards the identity by ``ridge`` times the points' own spread (plus one voxel^2), so a
    degenerate configuration (all points together, as at initialisation, or fewer than four)
    gives a pure translation instead of a singular solve. Differentiable in ``p`` and ``q``;
    solved in float64 for a well-conditioned 3x3 system.
    """
    p64, q64 = p.double(), q.double()
    w = torch.ones_like(p64[..., 0]) if weights is None else weights.double()
    w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    p_bar = (w.unsqueeze(-1) * p64).sum(1, keepdim=True)
    q_bar = (w.unsqueeze(-1) * q64).sum(1, keepdim=True)
    pc, qc = p64 - p_bar, q64 - q_bar
    wp = w.unsqueeze(-1) * pc
    cov_pp = wp.transpose(1, 2) @ pc  # (B, 3, 3)
    cov_pq = wp.transpose(1, 2) @ qc
    eye = torch.eye(3, dtype=torch.float64, device=p.device).expand_as(cov_pp)
    spread = cov_pp.diagonal(dim1=1, dim2=2).sum(-1) / 3.0
    lam = (ridge * spread + 1.0).view(-1, 1, 1)
    lin_t = torch.linalg.solve(cov_pp + lam * eye, cov_pq + lam * eye)  # L^T
    lin = lin_t.transpose(1, 2)
    offset = q_bar.transpose(1, 2) - lin @ p_bar.transpose(1, 2)
    # at least fp32: an affine rounded to bf16 moves a far voxel by half a voxel
    return torch.cat([lin, offset], dim=-1).to(torch.promote_types(p.dtype, torch.float32))


class PyramidDeformableHead(nn.Module):
    """Local matching coarse to fine: one paper-style deformable head per scale.

    The affine-aligned moving features and the fixed features are average-pooled by each
    factor in ``levels`` (coarsest first); each level's head sees the moving features
    already warped by the displacement of the coarser levels and adds a residual
    displacement, upsampled to full resolution in full-resolution voxels. A 3-layer head at
    1/4 resolution sees ~28 voxels instead of 7, which is what lets the deformable part
    capture displacements of several voxels. The default stops at 1/2 resolution: the
    field is then smooth by construction, like the control grid of a B-spline
    registration; a full-resolution level (``levels=(4, 2, 1)``) raised the training NCC by
    aligning texture but moved the structures less (lower held-out Dice, docs/results/matching.md).
    Every level's last convolution starts near zero, so the first output is ~0.
    """

    def __init__(
        self,
        local_channels: int,
        levels: tuple[int, ...] = (4, 2),
        radii: tuple[int, ...] | None = None,
        hidden: int | None = None,
    ):
        super().__init__()
        self.levels = tuple(int(f) for f in levels)
        self.radii = tuple(int(r) for r in radii) if radii is not None else (0,) * len(self.levels)
        if len(self.radii) != len(self.levels):
            raise ValueError(f"one correlation radius per level: levels {self.levels}, radii {self.radii}")
        self.heads = nn.ModuleList(
            DeformableHead(local_channels, extra_channels=(2 * r + 1) ** 3 if r else 0, hidden=hidden)
            for r in self.radii
        )

    def forward(self, f_moving_aligned: torch.Tensor, f_fixed: torch.Tensor) -> torch.Tensor:
        """A displacement field refined coarse to fine over the pyramid's levels."""
        from .spatial import sampling_coordinates, warp

        shape = tuple(f_fixed.shape[2:])
        flow: torch.Tensor | None = None
        for factor, radius, head in zip(self.levels, self.radii, self.heads):
            moving = f_moving_aligned
            if flow is not None:
                moving = warp(f_moving_aligned, sampling_coordinates(shape, displacement=flow)).to(f_fixed.dtype)
            fixed = f_fixed
            if factor > 1:
                moving = F.avg_pool3d(moving, factor, ceil_mode=True)
                fixed = F.avg_pool3d(f_fixed, factor, ceil_mode=True)
            extra = local_correlation(fixed, moving, radius) if radius else None
            residual = head(moving, fixed, extra)
            if factor > 1:
                residual = _upsample_displacement(residual, shape)
            flow = residual if flow is None else flow + residual
        assert flow is not None
        return flow


def local_correlation(f_fixed: torch.Tensor, f_moving: torch.Tensor, radius: int) -> torch.Tensor:
    """Cost volume: cosine similarity of each fixed feature vector with the moving ones within
    ``radius`` voxels, ``(B, (2r+1)^3, D, H, W)`` (offsets in z, y, x order, zero outside).

    It hands the head the comparison a Siamese backbone leaves to it: a 3-layer head on
    concatenated features must learn to correlate; here the best offset is already a peak.
    """
    f = F.normalize(f_fixed.float(), dim=1)
    m = F.pad(F.normalize(f_moving.float(), dim=1), [radius] * 6)
    d, h, w = f.shape[2:]
    side = 2 * radius + 1
    out = [
        (f * m[:, :, i : i + d, j : j + h, k : k + w]).sum(1)
        for i in range(side)
        for j in range(side)
        for k in range(side)
    ]
    return torch.stack(out, dim=1)


def _upsample_displacement(flow: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A displacement on a coarse grid -> the full grid, in full-grid voxels.

    With ``align_corners=True`` the coarse grid's end voxels sit on the full grid's, so one
    coarse voxel is ``(N - 1) / (n - 1)`` full voxels along each axis.
    """
    coarse = flow.shape[2:]
    scale = torch.tensor([(n - 1) / max(c - 1, 1) for n, c in zip(shape, coarse)], device=flow.device, dtype=flow.dtype)
    up = F.interpolate(flow, size=shape, mode="trilinear", align_corners=True)
    return up * scale.view(1, 3, 1, 1, 1)

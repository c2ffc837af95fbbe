"""Spatial augmentations whose one draw can warp several tensors.

:class:`RandomAffine`, :class:`RandomElastic` and :class:`SpatialAugment` produce voxel
sampling coordinates through :mod:`models.spatial` (the composed map ``p -> A(p + u(p))``,
``align_corners=True``), so the *same* draw can be applied to several tensors: both scans
of a pair, and label maps with nearest-neighbour sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from gvsl_app.data.transforms import _blend, _per_axis, _rand, _resolve_generator, _sample_mask
from models.spatial import affine_from_parameters, affine_points, identity_affine, sampling_coordinates, warp


def _pair(value, name: str) -> tuple[float, float]:
    """A symmetric scalar ``v`` -> ``(-v, v)``; a pair is taken as ``(lo, hi)``."""
    if isinstance(value, (int, float)):
        return -float(value), float(value)
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name}: range ({lo}, {hi}) is empty")
    return lo, hi


def _uniform(lo_hi: tuple[float, float], shape, g, device) -> torch.Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * _rand(shape, g, device)


class RandomAffine:
    """Random voxel-space affine about the grid centre (rotation, scaling, shearing, translation).

    ``rotation_deg``: +-degrees about each axis (or ``(lo, hi)``); ``scale``: +-relative change
    (0.1 -> factors in [0.9, 1.1]) or a ``(lo, hi)`` factor range; ``shear_deg``: +-shear
    angle per off-diagonal pair; ``translation``: +-fraction of each axis' extent.
    ``isotropic_scale`` uses one factor for the three axes. ``prob``: per-sample chance of
    applying it (identity otherwise).
    """

    def __init__(
        self,
        rotation_deg=15.0,
        scale=0.1,
        shear_deg=5.0,
        translation=0.05,
        isotropic_scale: bool = False,
        prob: float = 1.0,
    ) -> None:
        self.rotation = _pair(rotation_deg, "rotation_deg")
        self.scale = (1 - float(scale), 1 + float(scale)) if isinstance(scale, (int, float)) else _pair(scale, "scale")
        if self.scale[0] <= 0:
            raise ValueError(f"scale factors must stay positive, got {self.scale}")
        self.shear = _pair(shear_deg, "shear_deg")
        self.translation = _pair(translation, "translation")
        self.isotropic_scale, self.prob = bool(isotropic_scale), float(prob)

    def sample(self, shape: Sequence[int], batch: int, g: torch.Generator, device) -> torch.Tensor:
        """``(B, 3, 4)`` voxel-space matrices for a grid of ``shape``."""
        shape = tuple(int(n) for n in shape)
        rot = torch.deg2rad(_uniform(self.rotation, (batch, 3), g, device))
        extent = torch.tensor([n - 1 for n in shape], device=device, dtype=torch.float32)
        trans = _uniform(self.translation, (batch, 3), g, device) * extent
        scale = _uniform(self.scale, (batch, 1 if self.isotropic_scale else 3), g, device).expand(batch, 3)
        shear = torch.tan(torch.deg2rad(_uniform(self.shear, (batch, 6), g, device)))
        aff = affine_from_parameters(rot, trans, scale.contiguous(), shear, shape)
        if self.prob < 1.0:
            keep = _sample_mask(self.prob, batch, g, device)
            aff = _blend(keep, aff, identity_affine(batch, device=device))
        return aff

    def __repr__(self) -> str:
        return f"RandomAffine({vars(self)})"


class RandomElastic:
    """Smooth random displacement: a coarse random grid upsampled trilinearly.

    ``grid``: control points per axis (int or triple, at least 2); ``magnitude``: largest
    control-point displacement as a fraction of each axis' extent (uniform in
    ``[-magnitude, magnitude]``). The displacement gradient is at most about
    ``2 * magnitude * (grid - 1)``, so the map does not fold while that stays below 1
    (default 0.02 * 2 * 4 = 0.16). ``prob``: per-sample chance (zero field otherwise).
    """

    def __init__(self, grid=5, magnitude: float = 0.02, prob: float = 1.0) -> None:
        self.grid, self.magnitude, self.prob = grid, float(magnitude), float(prob)

    def sample_coarse(self, shape: Sequence[int], batch: int, g: torch.Generator, device) -> torch.Tensor:
        """Control-point displacements ``(B, 3, gz, gy, gx)`` in voxels of the grid ``shape``."""
        shape = tuple(int(n) for n in shape)
        coarse_shape = [max(2, v) for v in _per_axis(self.grid, shape, lambda n: 5)]
        coarse = (2 * _rand((batch, 3, *coarse_shape), g, device) - 1) * self.magnitude
        extent = torch.tensor([max(n - 1, 0) for n in shape], device=device, dtype=torch.float32)
        coarse = coarse * extent.view(1, 3, 1, 1, 1)
        if self.prob < 1.0:
            keep = _sample_mask(self.prob, batch, g, device)
            coarse = coarse * keep.view(-1, 1, 1, 1, 1).to(coarse.dtype)
        return coarse

    def sample(self, shape: Sequence[int], batch: int, g: torch.Generator, device) -> torch.Tensor:
        """``(B, 3, D, H, W)`` displacement in voxels, channels (dz, dy, dx)."""
        coarse = self.sample_coarse(shape, batch, g, device)
        return F.interpolate(coarse, size=tuple(int(n) for n in shape), mode="trilinear", align_corners=True)

    def __repr__(self) -> str:
        return f"RandomElastic({vars(self)})"


def _coarse_positions(shape: Sequence[int], coarse_shape: Sequence[int], device) -> torch.Tensor:
    """Voxel positions ``(3, gz, gy, gx)`` of a coarse grid spanning ``shape`` corner to corner."""
    axes = [torch.linspace(0.0, float(n - 1), int(k), device=device) for n, k in zip(shape, coarse_shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


class SpatialAugment:
    """Affine + elastic spatial augmentation whose draw can be applied to several tensors.

    ``coords = aug.coordinates(shape, batch, generator)`` returns voxel sampling coordinates
    ``(B, 3, D, H, W)`` of the composed map ``p -> A(p + u(p))``; ``aug.apply(t, coords)``
    warps any tensor with them (images trilinear, integer label maps nearest with exact
    label values). ``aug(a, b, ..., generator=g)`` draws once and warps all.
    """

    def __init__(
        self,
        affine: RandomAffine | bool = True,
        elastic: RandomElastic | bool = True,
        generator: torch.Generator | int | None = None,
        padding_mode: str = "zeros",
    ) -> None:
        # True: the default draw; False/None: that part switched off.
        self.affine = RandomAffine() if affine is True else (affine or None)
        self.elastic = RandomElastic() if elastic is True else (elastic or None)
        self.generator, self.padding_mode = generator, padding_mode

    def coordinates(
        self, shape: Sequence[int], batch: int = 1, generator: torch.Generator | int | None = None, device=None
    ) -> torch.Tensor:
        """Random sampling coordinates ``(batch, 3, *shape)``: an affine draw, then the elastic one."""
        g = _resolve_generator(generator, self.generator, "SpatialAugment")
        device = torch.device(device) if device is not None else g.device
        shape = tuple(int(n) for n in shape)
        aff = (
            self.affine.sample(shape, batch, g, device)
            if self.affine is not None
            else identity_affine(batch, device=device)
        )
        if self.elastic is None:
            return sampling_coordinates(shape, affine=aff, batch=batch)
        coarse = self.elastic.sample_coarse(shape, batch, g, device)
        # p -> A(p + u(p)) with u the trilinear upsampling of a coarse grid: A is affine and the
        # identity map is reproduced exactly by trilinear interpolation (align_corners=True), so
        # the composed coordinates are the upsampling of A(p_c + u_c) on the coarse grid: one
        # interpolation of 3 channels instead of a full-size grid, displacement and matrix product.
        # (Equal to models.spatial.sampling_coordinates(shape, aff, upsampled u); see the tests.)
        pc = _coarse_positions(shape, coarse.shape[2:], device)
        coarse_coords = affine_points(aff, pc.unsqueeze(0) + coarse)
        return F.interpolate(coarse_coords, size=shape, mode="trilinear", align_corners=True)

    def apply(self, x: torch.Tensor, coords: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Warp ``x`` (B, C, D, H, W) with ``coords``; integer tensors use nearest and keep their dtype."""
        if x.dim() != 5:
            raise ValueError(f"SpatialAugment.apply: expected (B, C, D, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            out = warp(x.float(), coords.to(x.device), mode="nearest", padding_mode="zeros")
            return out.round().to(x.dtype)
        return warp(x, coords.to(x.device), mode=mode or "bilinear", padding_mode=self.padding_mode).to(x.dtype)

    def __call__(
        self,
        *tensors: torch.Tensor,
        generator: torch.Generator | int | None = None,
        modes: Sequence[str | None] | None = None,
    ):
        """Warp every tensor with one random draw (the first's shape); one tensor in, one out."""
        if not tensors:
            raise ValueError("SpatialAugment: nothing to warp")
        ref = tensors[0]
        coords = self.coordinates(ref.shape[2:], ref.shape[0], generator, device=ref.device)
        modes = list(modes) if modes is not None else [None] * len(tensors)
        out = tuple(self.apply(t, coords, m) for t, m in zip(tensors, modes))
        return out[0] if len(out) == 1 else out

    def __repr__(self) -> str:
        return f"SpatialAugment(affine={self.affine!r}, elastic={self.elastic!r})"

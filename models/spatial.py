"""Spatial transformer: affine matrices in voxel space, composed sampling grids, warping.

Conventions (docs/design/architecture.md): arrays are ``(z, y, x)``; a displacement has channels
``(dz, dy, dx)`` in voxels of the grid it lives on; an affine is a ``(B, 3, 4)`` matrix
acting on voxel coordinates ``q = M p + b`` of the same grids. Sampling uses
``align_corners=True`` so that voxel ``i`` sits exactly at normalised ``2 i / (n - 1) - 1``;
a zero displacement and an identity affine are then the exact identity.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F

_F = TypeVar("_F", bound=Callable)


def fp32(fn: _F) -> _F:
    """Run ``fn`` with autocast off and its tensor arguments in float32.

    Coordinates and affines are geometry, not features: in bf16 (8 bits of mantissa) a
    coordinate near 100 is rounded to a multiple of 0.5 voxel, so the sampling maps and the
    affines are built in fp32 even inside a bf16-autocast forward pass (GPU training and
    matching), as the warp itself always was.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not tensors:
            return fn(*args, **kwargs)

        def to32(a):
            low = isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != torch.float64
            return a.float() if low else a

        with torch.autocast(device_type=tensors[0].device.type, enabled=False):
            return fn(*map(to32, args), **{k: to32(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class AffineBounds:
    """Bounds that keep predicted affine transforms plausible (the paper's ranges)."""

    rotation_deg: float = 20.0
    scale_min: float = 0.75
    scale_max: float = 1.25
    shear_deg: float = 10.0
    translation: float = 0.2  # fraction of each axis' extent


def identity_affine(batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """A batch of ``(3, 4)`` identity matrices."""
    eye = torch.eye(3, 4, device=device, dtype=dtype)
    return eye.unsqueeze(0).repeat(batch, 1, 1)


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(B, 3, 3)`` from angles (radians) about array axes 0, 1, 2."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def mat(rows):
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    r0 = mat([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
    r1 = mat([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
    r2 = mat([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return r0 @ r1 @ r2


@fp32
def affine_from_parameters(
    rotation: torch.Tensor,
    translation: torch.Tensor,
    scaling: torch.Tensor,
    shearing: torch.Tensor,
    shape: tuple[int, ...],
    spacing: tuple[float, float, float] | None = None,
) -> torch.Tensor:
    """Compose a batched ``(B, 3, 4)`` voxel-space affine from its 15 parameters.

    ``rotation`` (B, 3) radians about array axes (z, y, x); ``translation`` (B, 3) in voxels;
    ``scaling`` (B, 3) factors; ``shearing`` (B, 6) shear coefficients for the off-diagonal
    pairs (01, 02, 10, 12, 20, 21). The linear part ``R @ Sh @ S`` acts about the grid's
    centre in millimetres when ``spacing`` is given (so a rotation stays rigid on an
    anisotropic grid), otherwise in voxels. Pure torch ops: gradients flow to every input.
    """
    b = rotation.shape[0]
    dev, dt = rotation.device, rotation.dtype
    lin = _rotation(rotation)
    sh = torch.eye(3, device=dev, dtype=dt).unsqueeze(0).repeat(b, 1, 1)
    idx = [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    rows = torch.tensor([i for i, _ in idx], device=dev)
    cols = torch.tensor([j for _, j in idx], device=dev)
    sh = sh.index_put(
        (torch.arange(b, device=dev).repeat_interleave(6), rows.repeat(b), cols.repeat(b)),
        shearing.reshape(-1),
        accumulate=True,
    )
    lin = lin @ sh @ torch.diag_embed(scaling)
    if spacing is not None:
        d = torch.tensor(spacing, device=dev, dtype=dt)
        lin = torch.diag(1.0 / d) @ lin @ torch.diag(d)
    centre = torch.tensor([(n - 1) / 2.0 for n in shape], device=dev, dtype=dt)
    offset = centre + translation - lin @ centre
    return torch.cat([lin, offset.unsqueeze(-1)], dim=-1)


def bounded_affine(
    raw: dict[str, torch.Tensor], shape: tuple[int, ...], bounds: AffineBounds = AffineBounds()
) -> torch.Tensor:
    """Map unbounded head outputs (zero = identity) to a bounded ``(B, 3, 4)`` affine.

    ``raw`` holds ``rotation`` (B, 3), ``translation`` (B, 3), ``scaling`` (B, 3) and
    ``shearing`` (B, 6); each goes through ``tanh`` and is scaled into its bound, so a zero
    output is exactly the identity and gradients never vanish at the start.
    """
    raw = {k: v.float() for k, v in raw.items()}  # geometry in fp32 (see fp32)
    rot = torch.tanh(raw["rotation"]) * math.radians(bounds.rotation_deg)
    extent = torch.tensor([n - 1 for n in shape], device=rot.device, dtype=rot.dtype)
    trans = torch.tanh(raw["translation"]) * bounds.translation * extent
    log_lo, log_hi = math.log(bounds.scale_min), math.log(bounds.scale_max)
    t = torch.tanh(raw["scaling"])
    # Symmetric in log-space around 1 on each side so that zero maps to scale 1 exactly.
    scale = torch.exp(torch.where(t >= 0, t * log_hi, -t * log_lo))
    shear = torch.tan(torch.tanh(raw["shearing"]) * math.radians(bounds.shear_deg))
    return affine_from_parameters(rot, trans, scale, shear, shape)


def voxel_grid(shape: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates ``(3, D, H, W)`` of a grid, channel order (z, y, x)."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


@fp32
def affine_points(affine: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply ``(B, 3, 4)`` affines to voxel coordinates ``(B, 3, D, H, W)``."""
    b = points.shape[0]
    flat = points.reshape(b, 3, -1)
    out = affine[:, :, :3] @ flat + affine[:, :, 3:]
    return out.reshape(points.shape)


@fp32
def sampling_coordinates(
    shape: tuple[int, ...],
    affine: torch.Tensor | None = None,
    displacement: torch.Tensor | None = None,
    batch: int | None = None,
) -> torch.Tensor:
    """Voxel coordinates ``(B, 3, D, H, W)`` of the composed map ``p -> A(p + u(p))``.

    One map for affine and deformable parts together, so the moving image is resampled
    once (no double interpolation blur).
    """
    ref = displacement if displacement is not None else affine
    if ref is None:
        raise ValueError("need an affine, a displacement or both")
    b = ref.shape[0] if batch is None else batch
    p = voxel_grid(shape, device=ref.device, dtype=torch.float32).unsqueeze(0).expand(b, -1, -1, -1, -1)
    if displacement is not None:
        p = p + displacement.float()
    if affine is not None:
        p = affine_points(affine.float(), p)
    return p


def coordinates_to_grid(coords: torch.Tensor, source_shape: tuple[int, ...]) -> torch.Tensor:
    """Voxel coordinates ``(B, 3, D, H, W)`` in a source grid -> ``grid_sample`` grid ``(B, D, H, W, 3)``."""
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in source_shape], device=coords.device, dtype=coords.dtype)
    norm = coords * scale.view(1, 3, 1, 1, 1) - 1.0
    return norm.flip(1).permute(0, 2, 3, 4, 1)  # grid_sample wants (x, y, z) last


def warp(
    image: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros"
) -> torch.Tensor:
    """Sample ``image`` (B, C, d, h, w) at voxel coordinates ``coords`` (B, 3, D, H, W).

    Always in fp32 (autocast off) so that warping is exact under bf16 training.
    """
    with torch.autocast(device_type=image.device.type, enabled=False):
        grid = coordinates_to_grid(coords.float(), tuple(image.shape[2:]))
        out = F.grid_sample(image.float(), grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    return out


@fp32
def compose_affines(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The ``(..., 3, 4)`` voxel affine ``p -> outer(inner(p))``."""
    return torch.cat([outer[..., :3] @ inner[..., :3], outer[..., :3] @ inner[..., 3:] + outer[..., 3:]], dim=-1)


def compose_coordinates(first: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """The sampling map ``p -> first(then(p))`` of two voxel maps ``(B, 3, D, H, W)`` on one grid.

    The displacement ``first - p`` is sampled at ``then``'s points (border values outside,
    where it is smooth), so an image warped with the result is interpolated once.
    """
    grid = voxel_grid(tuple(then.shape[2:]), device=then.device).unsqueeze(0)
    return then + warp(first - grid, then, padding_mode="border")


def jacobian_determinant(coords: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of a voxel map ``(B, 3, D, H, W)`` -> ``(B, 1, D, H, W)``.

    Central differences inside, one-sided at the borders (``torch.gradient``); values
    <= 0 mark folding.
    """
    grads = [torch.gradient(coords[:, i], dim=(1, 2, 3)) for i in range(3)]
    (a, b, c), (d, e, f), (g, h, i) = grads  # row = component, column = derivative axis
    # Explicit cofactor expansion: several times faster than batched linalg.det on CPU.
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return det.unsqueeze(1)

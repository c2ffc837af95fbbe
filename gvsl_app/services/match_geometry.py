"""From the working cube back to the scans: the map on the fixed grid in millimetres, its
physical affine, and the moving image and labels warped through it at full resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gvsl_app.io.volume import Volume
from gvsl_app.services.match_map import NetworkMap
from gvsl_app.services.match_result import MatchResult
from models.spatial import voxel_grid

SLAB = 16
"""Slices of the fixed grid computed at a time at full resolution (the map, its Jacobian, the
warp): the values are those of the whole grid at once, and a 512 x 512 x 300 map then never
holds more than a few hundred MB of temporaries (its nine gradients alone are 11 GB)."""


def _index_matrix(v: Volume) -> np.ndarray:
    """3x3 map from (z, y, x) voxel steps to physical (x, y, z) millimetres."""
    return v.index_to_physical_matrix()[:3, :3]


def _working_to_fixed_scale(fixed_shape, size) -> np.ndarray:
    """Per-axis factor from working-cube voxels to fixed-grid voxels (align_corners)."""
    return np.array([(n - 1) / max(s - 1, 1) for n, s in zip(fixed_shape, size)], dtype=np.float64)


def upsampled_slab(disp: torch.Tensor, shape: tuple[int, int, int], z0: int, z1: int) -> torch.Tensor:
    """Slices ``z0:z1`` of ``disp`` (3, d, h, w) resized to ``shape`` (trilinear, corners
    aligned), as ``F.interpolate`` of the whole would give them: linear in z between the two
    nearest working slices, then bilinear in y and x (trilinear interpolation is separable).
    """
    d = disp.shape[1]
    z = torch.arange(z0, z1, dtype=torch.float64) * ((d - 1) / max(shape[0] - 1, 1))
    i0 = z.floor().long().clamp(max=d - 1)
    i1 = (i0 + 1).clamp(max=d - 1)
    w = (z - i0).float().view(1, -1, 1, 1)
    planes = disp[:, i0] * (1 - w) + disp[:, i1] * w  # (3, n, h, w)
    out = F.interpolate(planes.transpose(0, 1), size=tuple(shape[1:]), mode="bilinear", align_corners=True)
    return out.transpose(0, 1)


def _affine_terms(linear: np.ndarray, offset: np.ndarray, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine function ``linear @ (z, y, x) + offset`` of a grid's voxel indices, split
    into its (y, x) part (H, W, 3; computed in float64, once) and its per-slice z step (3,):
    added to a slab by broadcasting, no index grid is built.
    """
    lin = torch.from_numpy(np.asarray(linear, np.float64))
    y = torch.arange(shape[1], dtype=torch.float64).view(-1, 1, 1)
    x = torch.arange(shape[2], dtype=torch.float64).view(1, -1, 1)
    yx = y * lin[:, 1] + x * lin[:, 2] + torch.from_numpy(np.asarray(offset, np.float64))
    return yx.float(), lin[:, 0].float()


def _slab_determinant(u: torch.Tensor, start: int, n: int) -> torch.Tensor:
    """The Jacobian determinant of the map ``x + u(x)`` (``u``: (3, m, H, W) voxels) on slices
    ``start:start + n`` of ``u``: central differences inside, one-sided at the edges of ``u``
    (``torch.gradient``'s, so a slab with its neighbouring slices gives the whole grid's values).
    """
    m = u.shape[1]
    if start >= 1 and start + n < m:  # neighbours on both sides: plain slices, no gather
        dz = (u[:, start + 1 : start + n + 1] - u[:, start - 1 : start + n - 1]).mul_(0.5)
    else:
        idx = torch.arange(start, start + n)
        lo, hi = (idx - 1).clamp(min=0), (idx + 1).clamp(max=m - 1)
        dz = (u[:, hi] - u[:, lo]) / (hi - lo).clamp(min=1).view(1, -1, 1, 1).float()
    v = u[:, start : start + n]
    dy = torch.gradient(v, dim=2)[0] if v.shape[2] > 1 else torch.zeros_like(v)
    dx = torch.gradient(v, dim=3)[0] if v.shape[3] > 1 else torch.zeros_like(v)
    dz[0] += 1
    dy[1] += 1
    dx[2] += 1
    return (
        dz[0] * (dy[1] * dx[2] - dx[1] * dy[2])
        - dy[0] * (dz[1] * dx[2] - dx[1] * dz[2])
        + dx[0] * (dz[1] * dy[2] - dy[1] * dz[2])
    )


def map_on_fixed_grid(
    net: NetworkMap, fixed: Volume, init: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The working-grid map on the fixed grid: displacement in mm, Jacobian, physical affine.

    ``init`` (4x4, fixed point -> moving point) is the initial alignment the network's input
    was placed by; the map returned is the whole one, ``T(x + d(x))``, so that one
    resampling of the original moving scan reproduces the match: displacement
    ``A P u + (A - I) x + t`` for the fixed voxel ``u``'s displacement in voxels and ``x``
    its point, Jacobian times ``det A``, affine ``T`` after the map's own. Computed ``SLAB``
    slices at a time (each with one neighbouring slice on either side for the Jacobian's
    central differences), straight into the arrays returned.
    """
    shape = fixed.shape
    disp_w = (net.coordinates - voxel_grid(net.grid).unsqueeze(0))[0].float()  # working voxels (dz, dy, dx)
    scale = _working_to_fixed_scale(shape, net.grid)
    to_fixed = torch.from_numpy(scale).float().view(3, 1, 1, 1)
    total = np.eye(4) if init is None else np.asarray(init, np.float64)
    moved = not np.allclose(total, np.eye(4))
    m = fixed.index_to_physical_matrix()
    to_mm = torch.from_numpy(total[:3, :3] @ m[:3, :3]).float()  # fixed voxels -> mm, after A
    # (A - I) x + t of the point x = M (z, y, x) + o
    yx_term, z_step = _affine_terms(
        (total[:3, :3] - np.eye(3)) @ m[:3, :3], (total[:3, :3] - np.eye(3)) @ m[:3, 3] + total[:3, 3], shape
    )
    det_a = float(np.linalg.det(total[:3, :3]))
    disp_mm = np.empty((*shape, 3), np.float32)
    jac = np.empty(shape, np.float32)
    for z0 in range(0, shape[0], SLAB):
        z1 = min(shape[0], z0 + SLAB)
        lo, hi = max(0, z0 - 1), min(shape[0], z1 + 1)
        part = upsampled_slab(disp_w, shape, lo, hi) * to_fixed  # fixed voxels
        mid = part[:, z0 - lo : z0 - lo + z1 - z0]
        det = _slab_determinant(part, z0 - lo, z1 - z0) if hi - lo > 1 else torch.ones(z1 - z0, *shape[1:])
        out = torch.from_numpy(disp_mm[z0:z1])
        torch.matmul(mid.permute(1, 2, 3, 0), to_mm.T, out=out)
        if moved:
            out += yx_term
            out += torch.arange(z0, z1, dtype=torch.float32).view(-1, 1, 1, 1) * z_step
        jac[z0:z1] = det.numpy()
    if det_a != 1.0:
        jac *= det_a
    affine_phys = _affine_to_physical(net.affine[0].numpy().astype(np.float64), fixed, scale)
    return disp_mm, jac, total @ affine_phys if moved else affine_phys


def warp_volume(
    volume: Volume, fixed: Volume, disp_mm: np.ndarray, *, is_label: bool = False, fill: float | None = None
) -> np.ndarray:
    """``volume`` resampled on ``fixed``'s grid through the displacement field ``disp_mm``
    (z, y, x, 3; millimetres in (x, y, z)): the value at ``x + d(x)``, as SimpleITK's
    ``Resample`` with a ``DisplacementFieldTransform`` of the field gives it (linear, or nearest
    with half-integers rounded up for labels; points more than half a voxel outside
    ``volume`` get ``fill``, its minimum by default, 0 for labels). Computed ``SLAB`` slices at a
    time with torch, several times faster than SimpleITK's field transform and without its
    float64 copy of the field (1.9 GB for a 512 x 512 x 300 CT).
    """
    shape = fixed.shape
    src = np.asarray(volume.array)
    if fill is None:
        fill = 0.0 if is_label else float(np.nanmin(src))
    out = np.empty(shape, src.dtype if is_label else np.float32)
    # fixed voxel -> moving continuous index (z, y, x): inv(M_m) (M_f x + o_f + d)
    m_inv = np.linalg.inv(volume.index_to_physical_matrix())
    m_f = fixed.index_to_physical_matrix()
    b = torch.from_numpy(m_inv[:3, :3]).float()
    yx_term, z_step = _affine_terms(m_inv[:3, :3] @ m_f[:3, :3], m_inv[:3, :3] @ m_f[:3, 3] + m_inv[:3, 3], shape)
    size = torch.tensor(src.shape, dtype=torch.float32)
    if is_label:
        flat = torch.from_numpy(np.ascontiguousarray(src).reshape(-1))
        strides = torch.tensor([src.shape[1] * src.shape[2], src.shape[2], 1])
    else:
        image = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32))[None, None]
    for z0 in range(0, shape[0], SLAB):
        z1 = min(shape[0], z0 + SLAB)
        q = torch.from_numpy(disp_mm[z0:z1]) @ b.T  # moving (z, y, x) continuous indices
        q += yx_term
        q += torch.arange(z0, z1, dtype=torch.float32).view(-1, 1, 1, 1) * z_step
        inside = ((q >= -0.5) & (q < size - 0.5)).all(dim=-1)
        if is_label:
            k = torch.minimum(torch.floor(q + 0.5).clamp(min=0), size - 1).long()
            values = flat[(k * strides).sum(-1)]
            values[~inside] = torch.tensor(fill).to(values.dtype)
        else:
            q *= 2 / (size - 1).clamp(min=1)
            q -= 1
            g = q.flip(-1)  # grid_sample's (x, y, z) in [-1, 1]
            values = F.grid_sample(image, g[None], mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
            values[~inside] = fill
        out[z0:z1] = values.numpy()
    return out


def warped_result(
    fixed: Volume,
    moving: Volume,
    moving_labels: Volume | None,
    disp_mm: np.ndarray,
    jac: np.ndarray,
    affine_phys: np.ndarray,
) -> MatchResult:
    """The result with the moving image (and labels) resampled through the displacement field
    (:func:`warp_volume`: what SimpleITK makes of the exported field).
    """
    result = MatchResult(
        fixed=fixed,
        warped=fixed,
        displacement_mm=disp_mm,
        jacobian=fixed.with_array(jac.astype(np.float32, copy=False)),
        affine_physical=affine_phys,
    )
    warped = warp_volume(moving, fixed, disp_mm)
    result.warped = fixed.with_array(warped, source="warped")
    if moving_labels is not None:
        wl = warp_volume(moving_labels, fixed, disp_mm, is_label=True)
        result.warped_labels = fixed.with_array(wl, source="warped labels")
    return result


def _affine_to_physical(affine_w: np.ndarray, fixed: Volume, scale: np.ndarray) -> np.ndarray:
    """Working-cube voxel affine (q = M p + b) -> physical 4x4 on the fixed volume's frame."""
    s = np.diag(scale)  # working -> fixed voxels
    s_inv = np.diag(1.0 / scale)
    m_f = s @ affine_w[:, :3] @ s_inv
    b_f = s @ affine_w[:, 3]
    idx = fixed.index_to_physical_matrix()
    p, o = idx[:3, :3], idx[:3, 3]
    p_inv = np.linalg.inv(p)
    lin = p @ m_f @ p_inv
    out = np.eye(4)
    out[:3, :3] = lin
    out[:3, 3] = p @ b_f + o - lin @ o
    return out

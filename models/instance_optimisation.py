"""Instance optimisation: refine one pair's sampling map by gradient descent on local NCC.

A network predicts a map in one forward pass; a few hundred Adam steps on that single pair
then polish it (the "+ IO" rows of Learn2Reg). Two stages, each coarse to fine: a global
affine correction applied on top of the given map, then a smooth residual displacement on
a coarse control grid (trilinear, like a B-spline mesh) regularised by its squared
differences. Everything runs in normalised coordinates ([-1, 1] per axis), so a schedule
means the same at any working size, and the images are only ever optimised at the
schedule's (small) sizes: refining a 96^3 map costs the same as a 48^3 one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import local_ncc, smoothness
from .spatial import jacobian_determinant, warp

StepFn = Callable[[float], bool]  # fraction done -> True to stop early


@dataclass(frozen=True)
class RefineSchedule:
    """Levels and weights of :func:`refine_coordinates`.

    The defaults were chosen on synthetic cardiac pairs from a handful of variants: levels
    and smoothness on ``bench_match.py``'s default seeds 1000-1005, the folding weight on
    seeds 2000-2007 (folding 1.39 % -> 0.26 % of voxels at equal Dice); ``bench_match.py
    --seed-base 3000`` checks them on pairs they never saw.

    ``affine_levels``: (image side, Adam steps) per level; ``deformable_levels``: (image
    side, control-grid side, steps). ``smoothness`` weighs the mean squared difference of
    neighbouring control points, summed over the three axes and measured in voxels of the
    last deformable level;
    ``folding`` the mean of ``relu(-det J)`` of the whole map at each level's resolution, so
    that folds a network's own displacement brings along are unfolded too.
    """

    affine_levels: tuple[tuple[int, int], ...] = ((24, 150), (48, 30))
    deformable_levels: tuple[tuple[int, int, int], ...] = ((24, 12, 80), (48, 16, 40))
    window: int = 9
    smoothness: float = 0.02
    folding: float = 10.0
    affine_lr: float = 0.01
    deformable_lr: float = 0.02

    @property
    def total_steps(self) -> int:
        return sum(n for _, n in self.affine_levels) + sum(n for _, _, n in self.deformable_levels)


def _scale(shape) -> torch.Tensor:
    return torch.tensor([(n - 1) / 2.0 for n in shape], dtype=torch.float32).view(1, 3, 1, 1, 1)


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    if tuple(x.shape[2:]) == (side,) * 3:
        return x
    return F.interpolate(x, size=(side,) * 3, mode="trilinear", align_corners=True)


def refine_coordinates(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    coords: torch.Tensor,
    schedule: RefineSchedule = RefineSchedule(),
    step: StepFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine a sampling map ``coords`` (1, 3, D, H, W) of ``moving`` onto ``fixed`` (both (1, 1, D, H, W)).

    ``coords`` are voxel coordinates (z, y, x) into ``moving`` for every ``fixed`` voxel, as
    :class:`models.GVSL` predicts them (the identity grid refines from scratch). Returns the
    refined coordinates of the same shape, ``A(coords) + u`` with ``A`` a global affine and
    ``u`` a smooth displacement fitted by Adam on the local NCC of this pair, and ``A`` itself
    as a (1, 3, 4) voxel-space matrix (``q = A[:, :3] p + A[:, 3]``). ``step`` is
    called with the fraction done after each step; returning True stops early (the map so
    far is returned). Runs under ``torch.enable_grad`` on the inputs' device, in fp32.
    """
    if moving.shape[0] != 1 or fixed.shape[0] != 1 or coords.shape[0] != 1:
        raise ValueError("refine_coordinates works on one pair (batch size 1)")
    shape = tuple(fixed.shape[2:])
    dev = fixed.device
    scale = _scale(shape).to(dev)
    base = coords.detach().float() / scale - 1.0  # normalised (z, y, x)
    m, f = moving.detach().float(), fixed.detach().float()
    clock = _Steps(schedule.total_steps, step)

    with torch.enable_grad():
        lin = torch.zeros(1, 3, 3, device=dev, requires_grad=True)
        shift = torch.zeros(1, 3, 1, device=dev, requires_grad=True)
        eye = torch.eye(3, device=dev).unsqueeze(0)

        def affine(points: torch.Tensor) -> torch.Tensor:
            flat = points.reshape(1, 3, -1)
            return ((eye + lin) @ flat + shift).reshape(points.shape)

        opt = torch.optim.Adam([lin, shift], lr=schedule.affine_lr)
        for side, steps in schedule.affine_levels:
            side = min(side, max(shape))  # never optimise above the working resolution
            mm, ff, bb = _resize(m, side), _resize(f, side), _resize(base, side)
            s = _scale((side,) * 3).to(dev)
            clock.minimise(opt, steps, lambda: local_ncc(warp(mm, (affine(bb) + 1.0) * s), ff, window=schedule.window))
        with torch.no_grad():
            aligned = affine(base)

        last_side = min(schedule.deformable_levels[-1][0], max(shape)) if schedule.deformable_levels else shape[0]
        to_voxels = (last_side - 1) / 2.0
        residual = None
        for side, grid, steps in schedule.deformable_levels:
            side = min(side, max(shape))
            mm, ff, aa = _resize(m, side), _resize(f, side), _resize(aligned, side)
            s = _scale((side,) * 3).to(dev)
            residual = (
                torch.zeros(1, 3, grid, grid, grid, device=dev)
                if residual is None
                else _resize(residual.detach(), grid)
            ).requires_grad_(True)

            def loss() -> torch.Tensor:
                mapped = (aa + _resize(residual, side) + 1.0) * s
                value = local_ncc(warp(mm, mapped), ff, window=schedule.window)
                # smoothness() averages the three axes' mean squared differences; the weight is
                # defined on their sum
                value = value + schedule.smoothness * 3.0 * smoothness(residual * to_voxels)
                if schedule.folding:
                    value = value + schedule.folding * F.relu(-jacobian_determinant(mapped)).mean()
                return value

            clock.minimise(torch.optim.Adam([residual], lr=schedule.deformable_lr), steps, loss)
        with torch.no_grad():
            out = (
                aligned
                if residual is None
                else aligned + F.interpolate(residual, size=shape, mode="trilinear", align_corners=True)
            )
            return (out + 1.0) * scale, _voxel_affine(eye + lin, shift, scale.view(3))


class _Steps:
    """Counts Adam steps across levels, reports the fraction done and remembers a stop request."""

    def __init__(self, total: int, step: StepFn | None):
        self.total, self.done, self.step, self.stopped = max(total, 1), 0, step, False

    def minimise(self, opt: torch.optim.Optimizer, steps: int, loss: Callable[[], torch.Tensor]) -> None:
        for _ in range(steps):
            if self.stopped:
                return
            value = loss()
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            self.done += 1
            if self.step is not None and self.step(self.done / self.total):
                self.stopped = True


def _voxel_affine(lin: torch.Tensor, shift: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Normalised ``q_n = L p_n + t`` -> voxel ``q = M p + b`` with ``p = s (p_n + 1)``."""
    m = s.view(1, 3, 1) * lin / s.view(1, 1, 3)
    b = s.view(1, 3, 1) * (1.0 - lin.sum(dim=2, keepdim=True) + shift)
    return torch.cat([m, b], dim=2)

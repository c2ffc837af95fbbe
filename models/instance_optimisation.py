"""Instance optimisation: refine one pair's sampling map by gradient descent on a similarity.

A network predicts a map in one forward pass; a few hundred Adam steps on that single pair
then polish it (the "+ IO" rows of Learn2Reg). Two stages, each coarse to fine: a global
affine correction applied on top of the given map, then a smooth residual displacement on
a coarse control grid (trilinear, like a B-spline mesh) regularised by its squared
differences. Everything runs in normalised coordinates ([-1, 1] per axis), so a schedule
means the same at any working size, and the images are only ever optimised at the
schedule's (small) sizes: refining a 96^3 map costs the same as a 48^3 one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import bending_energy, smoothness
from .refine_schedule import RefineSchedule
from .similarity import Similarity, data_weight
from .spatial import jacobian_determinant, sampling_coordinates, warp

StepFn = Callable[[float], bool]  # fraction done -> True to stop early


@dataclass
class LevelRecord:
    """What one level of a refinement did: its stage, image shape, steps run of those planned, seconds."""

    stage: str
    shape: tuple[int, int, int]
    steps: int
    planned: int
    seconds: float


def level_shape(shape: tuple[int, ...], side: int) -> tuple[int, int, int]:
    """The image shape of a level of longest side ``side`` for images of ``shape`` (never above it)."""
    longest = max(shape)
    if side >= longest:
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    d, h, w = (max(2, round(n * side / longest)) for n in shape)
    return (d, h, w)


def half_extent(shape: tuple[int, ...]) -> torch.Tensor:
    """(1, 3, 1, 1, 1) half extents ``(n - 1) / 2`` of a grid: voxel = (normalised + 1) * half extent."""
    return torch.tensor([(n - 1) / 2.0 for n in shape], dtype=torch.float32).view(1, 3, 1, 1, 1)


def _resize(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    return F.interpolate(x, size=tuple(shape), mode="trilinear", align_corners=True)


def _work(shape: tuple[int, ...]) -> float:
    return float(shape[0] * shape[1] * shape[2])


def refine_coordinates(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    coords: torch.Tensor,
    schedule: RefineSchedule = RefineSchedule(),
    step: StepFn | None = None,
    affine: torch.Tensor | None = None,
    record: list[LevelRecord] | None = None,
    similarity: str = "ncc",
    moving_mask: torch.Tensor | None = None,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine a sampling map ``coords`` (1, 3, D, H, W) of ``moving`` onto ``fixed`` (both (1, 1, D, H, W)).

    ``coords`` are voxel coordinates (z, y, x) into ``moving`` for every ``fixed`` voxel, as
    :class:`models.GVSL` predicts them (the identity grid refines from scratch). Returns the
    refined coordinates of the same shape, ``A(coords) + u`` with ``A`` a global affine and
    ``u`` a smooth displacement fitted by Adam on this pair's ``similarity`` (local NCC by
    default; ``mind`` or ``ngf`` across contrasts, :class:`models.similarity.Similarity`), and
    ``A`` itself as a (1, 3, 4) voxel-space matrix (``q = A[:, :3] p + A[:, 3]``). ``step`` is
    called after each step with the share of the planned work done (steps weighted by their
    level's voxel count, so that it grows like the time spent); returning True stops early
    (the map so far is returned). ``affine`` (1, 3, 4), the voxel-space affine part of
    ``coords``, lets the refinement treat the rest of ``coords`` as a displacement of its own
    (see ``RefineSchedule.whole_field``); the returned matrix then applies on top of it.
    ``record``, when given, receives one :class:`LevelRecord` per level run. ``moving_mask``
    (1, 1, D, H, W on ``moving``'s grid, 1 where the moving scan has data) restricts the
    similarity to the fixed voxels whose mapped point lies in it, so that a partial field of
    view is matched where it has data and its edge pulls on nothing. ``features``: the
    similarity's features of ``moving`` and ``fixed`` (``Similarity.prepare``, e.g. MIND's
    descriptors) when the caller has them already. Runs under ``torch.enable_grad`` on the
    inputs' device, in fp32.
    """
    if moving.shape[0] != 1 or fixed.shape[0] != 1 or coords.shape[0] != 1:
        raise ValueError("refine_coordinates works on one pair (batch size 1)")
    shape = tuple(int(n) for n in fixed.shape[2:])
    dev = fixed.device
    scale = half_extent(shape).to(dev)
    base = coords.detach().float() / scale - 1.0  # normalised (z, y, x)
    field = None  # the starting map's own displacement, when it is refined as a whole
    if affine is not None and schedule.whole_field and schedule.deformable_levels:
        linear_part = sampling_coordinates(shape, affine=affine.detach().float().to(dev)) / scale - 1.0
        base, field = linear_part, base - linear_part
    sim = Similarity(similarity, window=schedule.window)
    mask = None if moving_mask is None else sim.prepare_mask(moving_mask.to(dev))
    if features is None:
        features = (sim.prepare(moving.detach().float()), sim.prepare(fixed.detach().float()))
    pair = _Pair(features[0].to(dev), features[1].to(dev), sim, mask)
    if schedule.points and sim.pointwise:
        pair.points, pair.generator = schedule.points, torch.Generator().manual_seed(schedule.seed)
    affine_plan = _plan([(side, n) for side, n in schedule.affine_levels], shape)
    deform_plan = _plan([(side, n) for side, _, n in schedule.deformable_levels], shape)
    clock = _Clock(
        sum(_work(s) * n for s, n, _ in affine_plan) + sum(_work(s) * n for s, n, _ in deform_plan),
        step,
        schedule,
        record,
    )
    with torch.enable_grad():
        moved = _affine_stage(pair, base, field, affine_plan, schedule, clock)
        with torch.no_grad():
            aligned = moved(base)
        residual = _deformable_stage(pair, aligned, field, deform_plan, schedule, clock)
        with torch.no_grad():
            out = aligned if residual is None else aligned + _resize(residual, shape)
            return (out + 1.0) * scale, _voxel_affine(moved.matrix, moved.shift, scale.view(3))


@dataclass
class _Pair:
    """What the refinement compares: the moving and fixed features, their similarity and, for a
    partial field of view, the moving scan's data mask (None: all of it is data).
    """

    moving: torch.Tensor
    fixed: torch.Tensor
    similarity: Similarity
    mask: torch.Tensor | None = None
    points: int = 0
    generator: torch.Generator | None = None

    def at(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        mask = None if self.mask is None else _resize(self.mask, shape)
        return _resize(self.moving, shape), _resize(self.fixed, shape), mask

    def samples(self, shape: tuple[int, ...]) -> bool:
        """Whether a level of ``shape`` compares a sample of its voxels rather than all of them."""
        return bool(self.points) and _work(shape) > self.points

    def sample(self, shape: tuple[int, ...]) -> torch.Tensor | None:
        """This step's fixed voxels as flat indices into ``shape``, or None to compare all of them.

        Jittered: the grid is cut into about ``points`` blocks and one voxel is drawn in each, so
        the sample covers the scan evenly (less noise in the loss than as many voxels drawn
        anywhere) and comes in memory order (the warp reads the features nearly sequentially).
        """
        if not self.samples(shape):
            return None
        n = _work(shape)
        side = (n / self.points) ** (1.0 / 3.0)  # a block's side in voxels
        counts = [max(1, round(length / side)) for length in shape]
        flat = torch.zeros(counts, dtype=torch.long)
        stride = 1
        for axis in (2, 1, 0):
            length, blocks = shape[axis], counts[axis]
            edges = torch.div(torch.arange(blocks + 1) * length, blocks, rounding_mode="floor")
            view = [1, 1, 1]
            view[axis] = blocks
            start, width = edges[:-1].view(view), (edges[1:] - edges[:-1]).view(view)
            jitter = torch.rand(counts, generator=self.generator)  # each block its own voxel
            flat += (start + (jitter * width).long()) * stride
            stride *= length
        return flat.reshape(-1).to(self.fixed.device)

    def loss(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        mask: torch.Tensor | None,
        coords: torch.Tensor,
        points: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The similarity of ``moving`` sampled at ``coords`` (voxels) against ``fixed``, over the
        fixed voxels whose point lies where the moving scan has data (all of them without a mask);
        with ``points`` (from :meth:`sample`) ``coords`` are those voxels' points only.
        """
        if points is not None:
            fixed = _take(fixed, points)
        weight = None if mask is None else data_weight(mask, coords)
        return self.similarity.loss(warp(moving, coords), fixed, weight=weight)


def _take(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The values of ``x`` (1, C, D, H, W) at flat voxel indices ``points``, as (1, C, N, 1, 1)."""
    return x.reshape(1, x.shape[1], -1).index_select(2, points).reshape(1, x.shape[1], -1, 1, 1)


def _grid_at(field: torch.Tensor, points: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``_resize(field, shape)`` at flat voxel indices ``points`` of ``shape`` only, as (1, C, N, 1, 1):
    trilinear with aligned corners is the same interpolation as ``warp`` at those voxels.
    """
    d, h, w = shape
    index = torch.stack([points // (h * w), points // w % h, points % w]).float()
    to_field = torch.tensor([(g - 1) / max(n - 1, 1) for g, n in zip(field.shape[2:], shape, strict=True)])
    coords = (index * to_field.to(index.device).view(3, 1)).reshape(1, 3, -1, 1, 1)
    return warp(field, coords, padding_mode="border")


class _Moved:
    """The affine correction being fitted, in normalised coordinates: ``(I + lin) p + shift``."""

    def __init__(self, dev: torch.device) -> None:
        self.lin = torch.zeros(1, 3, 3, device=dev, requires_grad=True)
        self.shift = torch.zeros(1, 3, 1, device=dev, requires_grad=True)
        self.eye = torch.eye(3, device=dev).unsqueeze(0)

    @property
    def matrix(self) -> torch.Tensor:
        return self.eye + self.lin

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        flat = points.reshape(1, 3, -1)
        return (self.matrix @ flat + self.shift).reshape(points.shape)


def _affine_stage(
    pair: _Pair,
    base: torch.Tensor,
    field: torch.Tensor | None,
    plan: list[tuple[tuple[int, int, int], int, int]],
    schedule: RefineSchedule,
    clock: _Clock,
) -> _Moved:
    """The global affine correction, coarse to fine, on top of ``base`` (+ ``field``)."""
    moved = _Moved(base.device)
    opt = torch.optim.Adam([moved.lin, moved.shift], lr=schedule.affine_lr)
    for lv, steps, _ in plan:
        mm, ff, kk = pair.at(lv)
        bb = _resize(base, lv)
        uu = torch.zeros_like(bb) if field is None else _resize(field, lv)
        s = half_extent(lv).to(base.device)

        def loss() -> torch.Tensor:
            points = pair.sample(lv)
            if points is None:
                return pair.loss(mm, ff, kk, (moved(bb) + uu + 1.0) * s)
            return pair.loss(mm, ff, kk, (moved(_take(bb, points)) + _take(uu, points) + 1.0) * s, points)

        clock.minimise("affine", lv, opt, steps, loss, pair.samples(lv))
    return moved


def _deformable_stage(
    pair: _Pair,
    aligned: torch.Tensor,
    field: torch.Tensor | None,
    plan: list[tuple[tuple[int, int, int], int, int]],
    schedule: RefineSchedule,
    clock: _Clock,
) -> torch.Tensor | None:
    """The smooth residual displacement on each level's control grid, coarse to fine."""
    dev = aligned.device
    grids = {side: grid for side, grid, _ in schedule.deformable_levels}
    to_voxels = (schedule.smoothness_side - 1) / 2.0
    residual = None
    for lv, steps, side in plan:
        grid = (grids[side],) * 3
        mm, ff, kk = pair.at(lv)
        aa = _resize(aligned, lv)
        s = half_extent(lv).to(dev)
        # folds live at the control grid's scale: a coarser copy of the map finds them as
        # well, at a fraction of the cost of the Jacobian at a fine level's resolution
        fold_shape = level_shape(lv, schedule.folding_side)
        aa_fold, s_fold = _resize(aligned, fold_shape), half_extent(fold_shape).to(dev)
        if residual is None:
            residual = torch.zeros(1, 3, *grid, device=dev) if field is None else _resize(field, grid)
        residual = _resize(residual.detach(), grid).requires_grad_(True)
        # where this level starts (its correction is residual - start), or zero to weigh the whole field
        start = residual.detach().clone() if schedule.fine_residual else torch.zeros_like(residual)
        stiff = schedule.fine_smoothness if max(lv) > schedule.fine_side else 0.0

        def loss() -> torch.Tensor:
            points = pair.sample(lv)
            if points is None:
                mapped = (aa + _resize(residual, lv) + 1.0) * s
            else:
                mapped = (_take(aa, points) + _grid_at(residual, points, lv) + 1.0) * s
            value = pair.loss(mm, ff, kk, mapped, points)
            # smoothness() averages the three axes' mean squared differences; the weight is
            # defined on their sum
            value = value + schedule.smoothness * 3.0 * smoothness(residual * to_voxels)
            if stiff:
                value = value + stiff * 3.0 * smoothness((residual - start) * to_voxels)
            if schedule.bending:
                value = value + schedule.bending * 9.0 * bending_energy(residual * to_voxels)
            if schedule.folding:
                dense = fold_shape == lv and points is None
                folded = mapped if dense else (aa_fold + _resize(residual, fold_shape) + 1.0) * s_fold
                value = value + schedule.folding * F.relu(-jacobian_determinant(folded)).mean()
            return value

        lr = schedule.deformable_lr
        if schedule.lr_side and max(lv) > schedule.lr_side:
            lr *= schedule.lr_side / max(lv)  # the same step in voxels of this level's images
        clock.minimise("deformable", lv, torch.optim.Adam([residual], lr=lr), steps, loss, pair.samples(lv))
    return residual


def _plan(levels: list[tuple[int, int]], shape: tuple[int, ...]) -> list[tuple[tuple[int, int, int], int, int]]:
    """(level shape, steps, side) per level; a level capped to the same shape as the one before is dropped."""
    plan: list[tuple[tuple[int, int, int], int, int]] = []
    for side, steps in levels:
        lv = level_shape(shape, side)
        if plan and plan[-1][0] == lv:
            continue
        plan.append((lv, steps, side))
    return plan


class _Clock:
    """Runs the levels' steps, reports the share of work done, ends a level on convergence,
    remembers a stop request and records what each level did.
    """

    def __init__(self, total: float, step: StepFn | None, schedule: RefineSchedule, record: list[LevelRecord] | None):
        self.total, self.done, self.step, self.stopped = max(total, 1.0), 0.0, step, False
        self.schedule, self.record = schedule, record

    def minimise(
        self,
        stage: str,
        shape: tuple[int, int, int],
        opt: torch.optim.Optimizer,
        steps: int,
        loss: Callable[[], torch.Tensor],
        sampled: bool = False,
    ) -> None:
        """Run up to ``steps`` Adam steps of ``loss``; on a ``sampled`` level the step size falls
        linearly to ``schedule.sampled_lr_end`` of its start (and is restored afterwards).
        """
        t0, ran, history = time.perf_counter(), 0, []
        k, tol = self.schedule.patience, self.schedule.tolerance
        start_lr = [group["lr"] for group in opt.param_groups]
        end = self.schedule.sampled_lr_end if sampled else 1.0
        for i in range(steps):
            if self.stopped:
                break
            if end != 1.0:
                for group, lr in zip(opt.param_groups, start_lr, strict=True):
                    group["lr"] = lr * (1.0 - (1.0 - end) * i / max(steps - 1, 1))
            value = loss()
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            ran += 1
            self.done += _work(shape)
            if self.step is not None and self.step(self.done / self.total):
                self.stopped = True
            if tol <= 0:
                continue
            history.append(float(value.detach()))  # a device sync per step, so only when asked
            if len(history) >= 2 * k:
                if sum(history[-2 * k : -k]) / k - sum(history[-k:]) / k < tol:
                    break
        for group, lr in zip(opt.param_groups, start_lr, strict=True):
            group["lr"] = lr
        self.done += _work(shape) * (steps - ran)  # a level that converged early is work done
        if self.record is not None:
            self.record.append(LevelRecord(stage, shape, ran, steps, time.perf_counter() - t0))


def _voxel_affine(lin: torch.Tensor, shift: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Normalised ``q_n = L p_n + t`` -> voxel ``q = M p + b`` with ``p = s (p_n + 1)``."""
    m = s.view(1, 3, 1) * lin / s.view(1, 1, 3)
    b = s.view(1, 3, 1) * (1.0 - lin.sum(dim=2, keepdim=True) + shift)
    return torch.cat([m, b], dim=2)

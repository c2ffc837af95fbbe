"""The refinement stage of ``match``: the network's map polished on this pair by instance
optimisation, on images at up to the schedule's finest resolution (the scan's own, for
scans no larger than that), not only at the network's working cube."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gvsl_app.data.preprocess import resize_array
from models import RefineSchedule, local_ncc, refine_coordinates
from models.device import cpu_threads, threads_for_load
from models.instance_optimisation import LevelRecord, half_extent, level_shape
from models.spatial import compose_affines, warp

log = logging.getLogger(__name__)
ProgressFn = Callable[[str, float], None]
Shape = tuple[int, int, int]

REFINE_SPAN = (0.3, 0.6)
"""The ``match`` job's progress at the refinement's start and end; in between it moves with
the share of the refinement's work done (steps weighted by their level's voxel count)."""


def refine_shape(fixed_shape: tuple[int, ...], schedule: RefineSchedule) -> Shape:
    """The image shape the refinement's finest level works at: the fixed grid's proportions,
    its longest side capped at the schedule's largest level side."""
    sides = [side for side, _ in schedule.affine_levels] + [side for side, _, _ in schedule.deformable_levels]
    return level_shape(fixed_shape, max(sides, default=max(fixed_shape)))


def regrid_coordinates(coords: torch.Tensor, src: tuple[int, ...], dst: tuple[int, ...]) -> torch.Tensor:
    """A voxel sampling map on grid ``src`` as the same map on grid ``dst`` (both spanning the same box)."""
    if tuple(src) == tuple(dst):
        return coords
    s_src = half_extent(src)
    normalised = coords / s_src - 1.0
    resized = F.interpolate(normalised, size=tuple(dst), mode="trilinear", align_corners=True)
    return (resized + 1.0) * half_extent(dst)


def regrid_affine(affine: torch.Tensor, src: tuple[int, ...], dst: tuple[int, ...]) -> torch.Tensor:
    """A (B, 3, 4) voxel affine on grid ``src`` as the same physical map on grid ``dst``."""
    k = torch.tensor([(d - 1) / max(s - 1, 1) for s, d in zip(src, dst)], dtype=affine.dtype)
    lin = k.view(1, 3, 1) * affine[:, :, :3] / k.view(1, 1, 3)
    return torch.cat([lin, k.view(1, 3, 1) * affine[:, :, 3:]], dim=2)


def refine_map(
    out: dict,
    working: Shape,
    fixed_n: np.ndarray,
    moving_n: np.ndarray,
    cubes: tuple[torch.Tensor, torch.Tensor],
    used: torch.device,
    schedule: RefineSchedule,
    say: ProgressFn,
    should_stop: Callable[[], bool] | None,
    fallback: bool,
) -> tuple[Shape, int, list[LevelRecord], str]:
    """Polish ``out``'s map (on the ``working`` cube) in place; (its grid now, steps, levels, note).

    ``fixed_n`` / ``moving_n`` are both scans normalised on the fixed grid; the refinement
    works on them resized to :func:`refine_shape` (the working ``cubes`` when that is the
    same grid). ``out``'s map, affine and NCC values move to that grid. With ``fallback``, a
    refinement that lowers the local NCC is dropped (the note says so) and ``out`` is left
    on the working cube.
    """
    grid = refine_shape(fixed_n.shape, schedule)
    if grid == working:
        f_r, m_r = cubes[0], cubes[1]
    else:
        f_r = torch.from_numpy(resize_array(fixed_n, grid))[None, None]
        m_r = torch.from_numpy(resize_array(moving_n, grid))[None, None]
    start = regrid_coordinates(out["coordinates"], working, grid)
    start_affine = regrid_affine(out["affine"], working, grid)
    with torch.no_grad():
        ncc_before, ncc_start = float(-local_ncc(m_r, f_r)), float(-local_ncc(warp(m_r, start), f_r))
    dev = used if used.type != "mps" else torch.device("cpu")  # MPS lacks 3D grid_sample backward
    stop = should_stop or (lambda: False)
    done: list[int] = [0]
    levels: list[LevelRecord] = []

    def step(frac: float) -> bool:
        done[0] += 1
        say("refine", REFINE_SPAN[0] + (REFINE_SPAN[1] - REFINE_SPAN[0]) * frac)
        out["refine_stopped"] = bool(stop())
        return out["refine_stopped"]

    # hundreds of small steps: threads beyond the free cores would wait on each other
    out["refine_threads"] = threads_for_load() if dev.type == "cpu" else None
    with cpu_threads(out["refine_threads"]) if out["refine_threads"] else contextlib.nullcontext():
        coords, correction = refine_coordinates(
            m_r.to(dev), f_r.to(dev), start.to(dev), schedule, step=step, affine=start_affine.to(dev), record=levels
        )
    coords = coords.cpu()
    with torch.no_grad():
        refined_ncc = float(-local_ncc(warp(m_r, coords), f_r))
    if refined_ncc < ncc_start and fallback:
        note = (
            f"the refinement lowered the local NCC ({ncc_start:.4f} -> {refined_ncc:.4f}); kept the map it started from"
        )
        log.warning("gvsl match: %s", note)
        return working, done[0], levels, note
    out.update(
        coordinates=coords,
        affine=compose_affines(correction[0].cpu(), start_affine[0])[None],
        ncc_before=ncc_before,
        ncc_network=ncc_start,
        ncc_after=refined_ncc,
    )
    return grid, done[0], levels, ""


def refine_summary(
    schedule: RefineSchedule | None, steps_done: int, levels: list[LevelRecord], out: dict, preset: str | None = None
) -> dict | None:
    """The refinement's preset name (None for a schedule of one's own) and schedule, the steps
    it took, whether a stop request ended it, the CPU threads it ran on and what each level did
    (None without refinement)."""
    if schedule is None:
        return None
    return {
        "preset": preset,
        "steps": schedule.total_steps,
        "steps_done": steps_done,
        "stopped": bool(out.get("refine_stopped")),
        "cpu_threads": out.get("refine_threads"),
        "levels": [
            {**dataclasses.asdict(lv), "shape": list(lv.shape), "seconds": round(lv.seconds, 4)} for lv in levels
        ],
        **dataclasses.asdict(schedule),
    }

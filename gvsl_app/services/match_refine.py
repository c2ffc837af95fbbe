"""The refinement stage of ``match``: the network's map polished on this pair by instance
optimisation, on images at up to the schedule's finest resolution (the scan's own, for
scans no larger than that), not only at the network's working cube.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gvsl_app.data.preprocess import resize_array
from gvsl_app.services.match_map import NetworkMap, scored
from gvsl_app.services.match_result import RefineSummary
from models import RefineSchedule, refine_coordinates
from models.device import cpu_threads, threads_for_load
from models.instance_optimisation import LevelRecord, half_extent, level_shape
from models.similarity import Similarity
from models.spatial import compose_affines

log = logging.getLogger(__name__)
ProgressFn = Callable[[str, float], None]
Shape = tuple[int, int, int]

REFINE_SPAN = (0.3, 0.6)
"""The ``match`` job's progress at the refinement's start and end; in between it moves with
the share of the refinement's work done (steps weighted by their level's voxel count)."""


def refine_shape(fixed_shape: tuple[int, ...], schedule: RefineSchedule) -> Shape:
    """The image shape the refinement's finest level works at: the fixed grid's proportions,
    its longest side capped at the schedule's largest level side.
    """
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


@dataclass
class Refinement:
    """What :func:`refine_map` returns: the map (refined, or the one it started from when the
    refinement was dropped), the local NCC of the map it started from on the refinement's grid
    (``start_ncc``), the steps run, whether a stop request ended it, the CPU threads, each
    level's record, and the note on a dropped refinement ("" otherwise).
    """

    map: NetworkMap
    start_ncc: float
    steps_done: int
    stopped: bool
    threads: int | None
    levels: list[LevelRecord]
    note: str

    def summary(self, schedule: RefineSchedule, preset: str | None, reason: str = "") -> RefineSummary:
        """The report's ``refined`` entry for ``schedule`` (named ``preset``, or None, for ``reason``)."""
        return RefineSummary(
            preset=preset,
            preset_reason=reason,
            steps=schedule.total_steps,
            steps_done=self.steps_done,
            stopped=self.stopped,
            cpu_threads=self.threads,
            levels=[
                {**dataclasses.asdict(lv), "shape": list(lv.shape), "seconds": round(lv.seconds, 4)}
                for lv in self.levels
            ],
            schedule=dataclasses.asdict(schedule),
        )


def refine_map(
    start: NetworkMap,
    fixed_n: np.ndarray,
    moving_n: np.ndarray,
    cubes: tuple[torch.Tensor, torch.Tensor],
    used: torch.device,
    schedule: RefineSchedule,
    similarity: Similarity,
    say: ProgressFn,
    should_stop: Callable[[], bool] | None,
    fallback: bool,
    moving_mask: np.ndarray | None = None,
) -> Refinement:
    """``start`` (a map on the working cube) polished on this pair by ``similarity``.

    ``fixed_n`` / ``moving_n`` are both scans normalised on the fixed grid; the refinement
    works on them resized to :func:`refine_shape` (the working ``cubes`` when that is the
    same grid), and the map it returns lives on that grid. With ``fallback``, a refinement
    that lowers the similarity is dropped (the note says so) and ``start`` is returned as it was.
    ``moving_mask`` (on the fixed grid, 1 where the placed moving scan has data; None when it
    covers all of it) restricts the similarity, and its scores, to the moving scan's data.
    """
    working, grid = start.grid, refine_shape(fixed_n.shape, schedule)
    if grid == working:
        f_r, m_r = cubes[0], cubes[1]
    else:
        f_r = torch.from_numpy(resize_array(fixed_n, grid))[None, None]
        m_r = torch.from_numpy(resize_array(moving_n, grid))[None, None]
    k_r = None if moving_mask is None else torch.from_numpy(resize_array(moving_mask, grid))[None, None]
    begin_affine = regrid_affine(start.affine, working, grid)
    # MIND's descriptors of both scans, computed once for the scores and the refinement
    features = None if similarity.name == "ncc" else (similarity.prepare(m_r), similarity.prepare(f_r))
    begin_map = regrid_coordinates(start.coordinates, working, grid)
    begin = scored(begin_map, begin_affine, m_r, f_r, similarity, k_r, features=features)
    dev = used if used.type != "mps" else torch.device("cpu")  # MPS lacks 3D grid_sample backward
    stop = should_stop or (lambda: False)
    done, stopped = [0], [False]
    levels: list[LevelRecord] = []

    def step(frac: float) -> bool:
        done[0] += 1
        say("refine", REFINE_SPAN[0] + (REFINE_SPAN[1] - REFINE_SPAN[0]) * frac)
        stopped[0] = bool(stop())
        return stopped[0]

    # hundreds of small steps: threads beyond the free cores would wait on each other
    threads = threads_for_load() if dev.type == "cpu" else None
    with cpu_threads(threads) if threads else contextlib.nullcontext():
        coords, correction = refine_coordinates(
            m_r.to(dev),
            f_r.to(dev),
            begin.coordinates.to(dev),
            schedule,
            step=step,
            affine=begin_affine.to(dev),
            record=levels,
            similarity=similarity.name,
            moving_mask=None if k_r is None else k_r.to(dev),
            features=features,
        )
    refined_affine = compose_affines(correction[0].cpu(), begin_affine[0])[None]
    refined = scored(coords.cpu(), refined_affine, m_r, f_r, similarity, k_r, begin, features)
    if refined.score_after < begin.score_after and fallback:
        note = (
            f"the refinement lowered the {similarity.name.upper()} similarity ({begin.score_after:.4f} -> "
            f"{refined.score_after:.4f}); kept the map it started from"
        )
        log.warning("gvsl match: %s", note)
        return Refinement(start, start.ncc_after, done[0], stopped[0], threads, levels, note)
    return Refinement(refined, begin.ncc_after, done[0], stopped[0], threads, levels, "")

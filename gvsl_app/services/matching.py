"""Pairwise Z-Matching of two volumes in physical space, with ITK-compatible outputs."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gvsl_app.data.preprocess import (
    check_overlap,
    normalise,
    physical_overlap,
    resample_to,
)
from gvsl_app.io.volume import Volume
from gvsl_app.options import InitMode, MatchOptions
from gvsl_app.services.match_choices import choose_schedule, choose_similarity, for_similarity
from gvsl_app.services.match_geometry import map_on_fixed_grid, warped_result
from gvsl_app.services.match_grid import analysis_volume
from gvsl_app.services.match_init import InitialAlignment, PairScore, initial_alignment
from gvsl_app.services.match_inputs import checked_inputs, coverage_warnings, flat_image_note, modality_warnings
from gvsl_app.services.match_map import NetworkMap
from gvsl_app.services.match_network import network_map, working_cube
from gvsl_app.services.match_quality import judge
from gvsl_app.services.match_refine import REFINE_SPAN, refine_map
from gvsl_app.services.match_result import MatchReport, MatchResult, Quality, RefineSummary
from gvsl_app.services.metrics import dice_per_label, mean_dice
from gvsl_app.services.stages import ProgressFn, StageClock
from gvsl_app.services.weights import load_gvsl
from models import GVSL, RefineSchedule, resolve_device
from models.similarity import Similarity

log = logging.getLogger(__name__)


FALLBACK_TOLERANCE = 1e-4
"""How much the network's map must lower the similarity before the identity replaces it: a map
that is the identity up to interpolation (an untrained network) changes it by less."""


def match(
    fixed: Volume,
    moving: Volume,
    options: MatchOptions | None = None,
    *,
    weights: str | os.PathLike | None = None,
    model: GVSL | None = None,
    moving_labels: Volume | None = None,
    fixed_labels: Volume | None = None,
    schedule: RefineSchedule | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    **overrides: Any,
) -> MatchResult:
    """Match ``moving`` onto ``fixed`` with a GVSL network (demo weights by default).

    ``options`` (:class:`gvsl_app.options.MatchOptions`; any of its fields may also be given
    as a keyword, e.g. ``refine=False``) say how. First the moving scan is placed on the fixed
    one (``init``: by default the best of the files' own frames, the centres of the fields of
    view, the centres of intensity mass and the principal axes, so a pair in unrelated frames
    is aligned, not refused); then both are normalised on the fixed grid and resized to the
    network's working cube, the network predicts one composed map, the refinement (on by
    default, as in ``gvsl match`` and the widget) polishes it on this pair by the chosen
    ``similarity`` (local NCC for one contrast, MIND-SSC across contrasts), and the whole map,
    initial alignment included, comes back to the fixed grid in millimetres. ``schedule``
    replaces the refinement preset by a schedule of one's own; ``should_stop`` returning True
    ends the refinement early and keeps the map so far. The warped image is the original moving
    volume resampled through the exported displacement field as SimpleITK's ``Resample``
    does it (same interpolation and borders, computed in slabs with torch), so ``gvsl match``
    outputs and a user's own ``sitk.Resample`` agree to float32 rounding. A scan with a side
    above 256 voxels is analysed on a grid of the same field of view capped at 256
    (:mod:`match_grid`); only the final map and warp are computed at full resolution. On CUDA
    out-of-memory the network falls back to the CPU with a warning.

    With ``fallback`` (the default) a map never leaves the pair less alike than the initial
    alignment left it: a network map that lowers the similarity is replaced by the identity
    (the refinement starts from it), and a refinement that lowers it is dropped
    (``report.fallback`` says what happened). ``report.quality`` says whether the result is to
    be trusted (``ok``, ``doubtful`` or ``failed``, with its reasons).
    """
    opts = dataclasses.replace(options or MatchOptions(), **overrides)
    clock = StageClock(progress)
    with clock.stage("load_weights", 0.05, "load weights"):
        fixed, moving, notes = checked_inputs(fixed, moving, fixed_labels, moving_labels)
        dev = resolve_device(opts.device)
        weights_info = "given model"
        if model is None:
            model, weights_info = load_gvsl(weights, dev)
    with clock.stage("initialise", 0.08, "initial alignment"):
        start = _start(fixed, moving, opts)
    maps = _maps(model, fixed, moving, start, opts, schedule, dev, clock, should_stop)
    with clock.stage("upsample", REFINE_SPAN[1], "displacement"):
        disp_mm, jac, affine_phys = map_on_fixed_grid(maps.net, fixed, start.init.matrix)
    with clock.stage("warp", 0.75):
        result = warped_result(fixed, moving, moving_labels, disp_mm, jac, affine_phys)
    with clock.stage("judge", 0.9, "report"):
        quality = judge(start.pair, start.init, fixed, disp_mm, jac)
    warnings = notes + modality_warnings(model, fixed, moving) + coverage_warnings(start.init, fixed, moving)
    result.report = _report(fixed, moving, opts, weights_info, start, maps, quality, warnings, disp_mm, jac)
    _add_label_overlap(result.report, moving_labels, fixed_labels, result.warped_labels, fixed)
    result.report.seconds = clock.rounded()
    clock.say("done", 1.0)
    return result


def _report(
    fixed: Volume,
    moving: Volume,
    opts: MatchOptions,
    weights_info: str,
    start: _Start,
    maps: _Maps,
    quality: Quality,
    warnings: list[str],
    disp_mm: np.ndarray,
    jac: np.ndarray,
) -> MatchReport:
    """The match's report (its seconds and Dice are added by the caller)."""
    return MatchReport(
        fixed=fixed.source,
        moving=moving.source,
        working_size=maps.size,
        network_passes=int(opts.passes),
        device=str(maps.device),
        weights=weights_info,
        physical_overlap=start.overlap,
        init=start.init.to_json(),
        similarity=maps.similarity.name,
        similarity_reason=maps.similarity_reason,
        moving_data_share=round(start.data_share, 4),
        overlap_masked=start.data_mask is not None,
        refined=maps.refined,
        similarity_grid=list(maps.net.grid),
        ncc_before=maps.net.ncc_before,
        ncc_after=maps.net.ncc_after,
        ncc_network=maps.ncc_network,
        similarity_before=maps.net.score_before,
        similarity_after=maps.net.score_after,
        fallback=maps.fallback,
        warnings=warnings + maps.warnings,
        quality=quality,
        seconds={},
        folding_percent=float((jac <= 0).mean() * 100.0),
        jacobian_min=float(jac.min()),
        jacobian_max=float(jac.max()),
        max_displacement_mm=float(np.linalg.norm(disp_mm, axis=-1).max()),
    )


@dataclass
class _Maps:
    """What the network and the refinement made of the placed pair: the map kept, the device,
    the working size, the similarity and why, what the network's own map reached
    (``ncc_network``), the refinement's summary, the maps dropped and why, and warnings.
    """

    net: NetworkMap
    device: torch.device
    size: int
    similarity: Similarity
    similarity_reason: str
    ncc_network: float
    refined: RefineSummary | None
    fallback: list[str]
    warnings: list[str]


def _maps(
    model: GVSL,
    fixed: Volume,
    moving: Volume,
    start: _Start,
    opts: MatchOptions,
    schedule: RefineSchedule | None,
    dev: torch.device,
    clock: StageClock,
    should_stop: Callable[[], bool] | None,
) -> _Maps:
    """The network's map on the placed pair, judged, then refined (when asked and possible)."""
    size = int(opts.size or getattr(model, "working_size", None) or 96)
    preset, preset_reason, schedule = choose_schedule(opts, schedule, fixed, moving)
    similarity, reason = choose_similarity(opts, fixed, moving, start.init.correlation)
    schedule = for_similarity(schedule, similarity, preset)
    with clock.stage("preprocess", 0.1):
        fixed_n, moving_n = normalise(start.fixed_analysed), normalise(start.moving_on_fixed)
        cubes = (working_cube(fixed_n, (size,) * 3), working_cube(moving_n, (size,) * 3))
        mask = None if start.data_mask is None else working_cube(start.data_mask, (size,) * 3)
    with clock.stage("network", 0.25):
        net, used = network_map(model, cubes, dev, opts.passes, similarity, mask)
    out = _Maps(net, used, size, similarity, reason, net.ncc_after, None, [], [])
    out.net, out.fallback, flat = _judged(net, fixed, moving, opts.fallback)
    out.warnings += [flat] if flat else []
    if schedule is None or flat:
        return out
    with clock.stage("refine", REFINE_SPAN[0]):
        refinement = refine_map(
            out.net,
            fixed_n,
            moving_n,
            cubes,
            used,
            schedule,
            similarity,
            clock.say,
            should_stop,
            opts.fallback,
            start.data_mask,
        )
    out.net = refinement.map
    out.fallback += [refinement.note] if refinement.note else []
    out.ncc_network = refinement.start_ncc if not refinement.note else out.ncc_network
    out.refined = refinement.summary(schedule, preset, preset_reason)
    return out


@dataclass(frozen=True)
class _Start:
    """The pair as the network sees it: the initial alignment, the fixed scan on its analysis
    grid (:mod:`match_grid`: itself unless a side exceeds 256 voxels), the moving scan placed
    by the alignment on that grid, the physical overlap of the files' own frames, and where on
    that grid the placed moving scan has data (``data_mask``, uint8, None when everywhere or
    when not asked for; ``data_share``, the share of the grid it covers).
    """

    init: InitialAlignment
    fixed_analysed: Volume
    moving_on_fixed: Volume
    overlap: float
    pair: PairScore
    data_mask: np.ndarray | None = None
    data_share: float = 1.0


def _start(fixed: Volume, moving: Volume, opts: MatchOptions) -> _Start:
    """Place the moving scan (``opts.init``); with ``init none`` a pair whose frames do not
    meet is refused, as there is nothing to match.
    """
    # in the files' frames (init none) a pair whose frames do not meet has nothing to match
    overlap = check_overlap(fixed, moving) if opts.init == InitMode.NONE else physical_overlap(fixed, moving)
    pair = PairScore(fixed, moving)
    # a scan with one value everywhere has nothing to align by: its files' frames stand
    mode = InitMode.NONE if flat_image_note(fixed, moving) else opts.init
    init = initial_alignment(fixed, moving, mode, pair)
    fixed_a, moving_a = analysis_volume(fixed), analysis_volume(moving)
    placed = resample_to(moving_a, fixed_a, transform=init.matrix)
    # the moving scan's own grid: a coarser one's voxels reach further past its field of view
    ones = moving.with_array(np.ones(moving.shape, np.uint8))
    data = resample_to(ones, fixed_a, is_label=True, transform=init.matrix).array  # uint8: 1 byte a voxel
    share = float(data.mean(dtype=np.float64))
    mask = data if opts.overlap_mask and share < 1.0 else None
    return _Start(init, fixed_a, placed, overlap, pair, mask, share)


def _judged(net: NetworkMap, fixed: Volume, moving: Volume, fallback: bool) -> tuple[NetworkMap, list[str], str]:
    """The network's map, or the identity when it cannot be judged (a flat scan) or, with
    ``fallback``, made the pair less alike; (map, fallback notes, flat-scan warning).
    """
    flat = flat_image_note(fixed, moving)
    if flat:
        # NCC is 0 against a constant image whatever the map, so neither the fallback nor
        # the refinement can judge one: a map would only fold (98 % of voxels, measured)
        return net.as_identity(), [], flat
    if fallback and net.score_after < net.score_before - FALLBACK_TOLERANCE:
        return net.as_identity(), [_identity_note(net, "the network's map")], ""
    return net, [], ""


def _add_label_overlap(
    report: MatchReport,
    moving_labels: Volume | None,
    fixed_labels: Volume | None,
    warped_labels: Volume | None,
    fixed: Volume,
) -> None:
    """Per-label and mean Dice before (the files' frames) and after matching, into the report
    (nothing without both label maps).
    """
    if moving_labels is None or fixed_labels is None or warped_labels is None:
        return
    before = resample_to(moving_labels, fixed, is_label=True).array
    labels = sorted(int(v) for v in np.union1d(np.unique(fixed_labels.array), np.unique(moving_labels.array)) if v)
    d0 = dice_per_label(before, fixed_labels.array, labels)
    d1 = dice_per_label(warped_labels.array, fixed_labels.array, labels)
    report.dice_before = {str(k): v for k, v in d0.items()}
    report.dice_after = {str(k): v for k, v in d1.items()}
    # a structure in neither map has no Dice (NaN) and stays out of the mean
    report.mean_dice_before = _finite_or_none(mean_dice(d0)) if d0 else None
    report.mean_dice_after = _finite_or_none(mean_dice(d1)) if d1 else None


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _identity_note(net: NetworkMap, what: str) -> str:
    """Why a map that lowered the similarity was replaced by the identity, for the report.

    A network applied to a scan unlike its training data (another modality, body part or
    contrast) can predict a map that makes the pair *less* alike; returning the identity
    instead means ``gvsl match`` never leaves a pair worse aligned than it found it.
    """
    reason = (
        f"{what} lowered the similarity ({net.score_before:.4f} -> {net.score_after:.4f}); used the identity instead"
    )
    log.warning("gvsl match: %s", reason)
    return reason

"""Pairwise Z-Matching of two volumes in physical space, with ITK-compatible outputs."""

from __future__ import annotations

import contextlib
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
    Modality,
    check_overlap,
    detect_modality,
    normalise,
    physical_overlap,
    resample_to,
    resize_array,
)
from gvsl_app.io.volume import Volume
from gvsl_app.options import InitMode, MatchOptions, MatchSimilarity, RefinePreset
from gvsl_app.services.match_geometry import map_on_fixed_grid, warped_result
from gvsl_app.services.match_init import InitialAlignment, PairScore, initial_alignment
from gvsl_app.services.match_map import NetworkMap, scored
from gvsl_app.services.match_quality import judge
from gvsl_app.services.match_refine import REFINE_SPAN, refine_map
from gvsl_app.services.match_result import MatchReport, MatchResult, Quality, RefineSummary
from gvsl_app.services.metrics import dice_per_label, mean_dice
from gvsl_app.services.stages import ProgressFn, StageClock
from gvsl_app.services.weights import load_gvsl
from models import GVSL, RefineSchedule, refine_preset, resolve_device
from models.device import autocast, cpu_threads, threads_for_load
from models.similarity import Similarity
from models.spatial import compose_affines, compose_coordinates, warp

log = logging.getLogger(__name__)


MIN_SIDE = 4
"""Fewest voxels along any axis of a volume that ``match`` accepts."""

LOW_OVERLAP = 0.5
"""Below this share of the fixed scan's content covered by the moving scan once placed, ``match`` warns."""


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
    ends the refinement early and keeps the map so far. The warped image is produced by
    SimpleITK from the original moving volume and the exported displacement field, so
    ``gvsl match`` outputs and a user's own ``sitk.Resample`` agree exactly. On CUDA
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
        fixed, moving, notes = _checked_inputs(fixed, moving, fixed_labels, moving_labels)
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
    warnings = notes + _modality_warnings(model, fixed, moving) + _coverage_warnings(start.init, fixed, moving)
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
    preset, preset_reason, schedule = _schedule(opts, schedule, fixed, moving)
    similarity, reason = _similarity(opts, fixed, moving, start)
    with clock.stage("preprocess", 0.1):
        fixed_n, moving_n = normalise(fixed), normalise(start.moving_on_fixed)
        cubes = (_cube(fixed_n, (size,) * 3), _cube(moving_n, (size,) * 3))
    with clock.stage("network", 0.25):
        net, used = _network_map(model, cubes, dev, opts.passes, similarity)
    out = _Maps(net, used, size, similarity, reason, net.ncc_after, None, [], [])
    out.net, out.fallback, flat = _judged(net, fixed, moving, opts.fallback)
    out.warnings += [flat] if flat else []
    if schedule is None or flat:
        return out
    with clock.stage("refine", REFINE_SPAN[0]):
        refinement = refine_map(
            out.net, fixed_n, moving_n, cubes, used, schedule, similarity, clock.say, should_stop, opts.fallback
        )
    out.net = refinement.map
    out.fallback += [refinement.note] if refinement.note else []
    out.ncc_network = refinement.start_ncc if not refinement.note else out.ncc_network
    out.refined = refinement.summary(schedule, preset, preset_reason)
    return out


@dataclass(frozen=True)
class _Start:
    """The pair as the network sees it: the initial alignment, the moving scan placed by it on
    the fixed grid, and the physical overlap of the files' own frames.
    """

    init: InitialAlignment
    moving_on_fixed: Volume
    overlap: float
    pair: PairScore


def _start(fixed: Volume, moving: Volume, opts: MatchOptions) -> _Start:
    """Place the moving scan (``opts.init``); with ``init none`` a pair whose frames do not
    meet is refused, as there is nothing to match.
    """
    # in the files' frames (init none) a pair whose frames do not meet has nothing to match
    overlap = check_overlap(fixed, moving) if opts.init == InitMode.NONE else physical_overlap(fixed, moving)
    pair = PairScore(fixed, moving)
    # a scan with one value everywhere has nothing to align by: its files' frames stand
    mode = InitMode.NONE if _flat_image_note(fixed, moving) else opts.init
    init = initial_alignment(fixed, moving, mode, pair)
    return _Start(init, resample_to(moving, fixed, transform=init.matrix), overlap, pair)


def _schedule(
    opts: MatchOptions, schedule: RefineSchedule | None, fixed: Volume, moving: Volume
) -> tuple[str | None, str, RefineSchedule | None]:
    """The refinement's preset name, why it was chosen, and its schedule (none without
    ``refine``; a schedule of one's own has no name); ``auto`` picks the preset from the scans
    (:func:`auto_preset`).
    """
    if not opts.refine:
        return None, "", None
    if schedule is not None:
        return None, "a schedule of the caller's own", schedule
    if opts.refine_preset == RefinePreset.AUTO:
        preset, why = auto_preset(fixed, moving)
    else:
        preset, why = str(opts.refine_preset), "chosen by the user"
    return preset, why, refine_preset(preset)


BRAIN_SPACING_MM = 1.3
"""Largest voxel side of a scan the ``auto`` refinement preset takes for brain MR."""

HEAD_EXTENT_MM = (150.0, 300.0)
"""Longest physical side of a field of view the ``auto`` preset takes for a head."""


def auto_preset(fixed: Volume, moving: Volume) -> tuple[str, str]:
    """``brain`` for MR at ~1 mm over a head-sized field of view (both scans), else
    ``standard``; and why, in words.

    The brain preset is stiffer and finer: on 1 mm brain MR it gains (0.945 -> 0.969 tissue
    Dice on the MNI pairs), on the cardiac pairs' large deformations it loses ~0.1.
    """
    for name, v in (("fixed", fixed), ("moving", moving)):
        extent = max(n * s for n, s in zip(v.shape[::-1], v.spacing))
        if detect_modality(v) != "mr":
            return "standard", f"chosen from the scans: the {name} scan is not MR"
        if max(v.spacing) > BRAIN_SPACING_MM:
            return "standard", f"chosen from the scans: the {name} scan's voxels exceed {BRAIN_SPACING_MM} mm"
        if not HEAD_EXTENT_MM[0] <= extent <= HEAD_EXTENT_MM[1]:
            return (
                "standard",
                f"chosen from the scans: the {name} scan's field of view ({extent:.0f} mm) is not a head's",
            )
    return "brain", "chosen from the scans: MR at ~1 mm over a head-sized field of view"


CONTRAST_CORRELATION = 0.2
"""Below this correlation of the two scans' intensities once placed, ``auto`` takes them for
two contrasts (T1 against T2 correlates negatively) and compares MIND descriptors instead."""


def _similarity(opts: MatchOptions, fixed: Volume, moving: Volume, start: _Start) -> tuple[Similarity, str]:
    """The refinement's similarity and why it was chosen."""
    if opts.similarity != MatchSimilarity.AUTO:
        return Similarity(str(opts.similarity)), "chosen by the user"
    fm, mm = detect_modality(fixed), detect_modality(moving)
    if fm != mm:
        return Similarity("mind"), f"the fixed scan looks like {fm.upper()}, the moving one like {mm.upper()}"
    corr = start.init.correlation
    if corr < CONTRAST_CORRELATION:
        return Similarity("mind"), (
            f"the scans' intensities correlate at {corr:.2f} once placed (< {CONTRAST_CORRELATION}): two contrasts"
        )
    return Similarity("ncc"), f"one contrast (intensities correlate at {corr:.2f} once placed)"


def _judged(net: NetworkMap, fixed: Volume, moving: Volume, fallback: bool) -> tuple[NetworkMap, list[str], str]:
    """The network's map, or the identity when it cannot be judged (a flat scan) or, with
    ``fallback``, made the pair less alike; (map, fallback notes, flat-scan warning).
    """
    flat = _flat_image_note(fixed, moving)
    if flat:
        # NCC is 0 against a constant image whatever the map, so neither the fallback nor
        # the refinement can judge one: a map would only fold (98 % of voxels, measured)
        return net.as_identity(), [], flat
    if fallback and net.score_after < net.score_before - FALLBACK_TOLERANCE:
        return net.as_identity(), [_identity_note(net, "the network's map")], ""
    return net, [], ""


def _checked_inputs(
    fixed: Volume, moving: Volume, fixed_labels: Volume | None, moving_labels: Volume | None
) -> tuple[Volume, Volume, list[str]]:
    """Refuse what cannot be matched (naming the file); NaN/Inf voxels become background, with notes."""
    for name, v in (("fixed", fixed), ("moving", moving)):
        if v.array.ndim != 3:
            raise ValueError(f"{name} volume {v.source}: expected 3D, got shape {v.array.shape}")
        if min(v.array.shape) < MIN_SIDE:
            raise ValueError(
                f"{name} volume {v.source} has shape {v.array.shape}; matching needs at least "
                f"{MIN_SIDE} voxels along every axis"
            )
    for name, labels, image in (("moving", moving_labels, moving), ("fixed", fixed_labels, fixed)):
        if labels is not None and labels.shape != image.shape:
            raise ValueError(
                f"{name} labels {labels.source} have shape {labels.shape} but the {name} "
                f"image {image.source} has {image.shape}: the labels must be on the image's grid"
            )
    fixed, fixed_note = _finite(fixed, "fixed")
    moving, moving_note = _finite(moving, "moving")
    return fixed, moving, [n for n in (fixed_note, moving_note) if n]


def _coverage_warnings(init: InitialAlignment, fixed: Volume, moving: Volume) -> list[str]:
    """A warning (logged too) when the moving scan, once placed, covers little of the fixed one."""
    if init.coverage >= LOW_OVERLAP:
        return []
    msg = (
        f"the moving scan {moving.source} covers only {100 * init.coverage:.0f} % of the fixed scan "
        f"{fixed.source}'s content once placed: the rest has nothing to match (a partial field of view?)"
    )
    log.warning("gvsl match: %s", msg)
    return [msg]


def _cube(array: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """A normalised scan resized to ``shape``, as a (1, 1, D, H, W) tensor."""
    return torch.from_numpy(resize_array(array, shape))[None, None]


def _network_map(
    model: GVSL, cubes: tuple[torch.Tensor, torch.Tensor], dev: torch.device, passes: int, similarity: Similarity
) -> tuple[NetworkMap, torch.device]:
    """The network's map on the working cube, applied ``passes`` times (:func:`_compose_passes`);
    on CUDA out-of-memory the CPU instead, with a warning.
    """
    f_w, m_w = cubes
    # threads beyond the cores other processes leave free wait on each other at every layer
    with cpu_threads(threads_for_load()) if dev.type == "cpu" else contextlib.nullcontext():
        try:
            coords, affine, used = _run_network(model, m_w, f_w, dev)
        except torch.cuda.OutOfMemoryError:
            log.warning("CUDA out of memory at working size %d; falling back to the CPU", m_w.shape[-1])
            torch.cuda.empty_cache()
            model, used = model.cpu(), torch.device("cpu")
            coords, affine, used = _run_network(model, m_w, f_w, used)
        for _ in range(passes - 1):
            coords, affine = _compose_passes(coords, affine, _run_network(model, warp(m_w, coords), f_w, used))
    return scored(coords, affine, m_w, f_w, similarity), used


@torch.no_grad()
def _compose_passes(
    coords: torch.Tensor, affine: torch.Tensor, again: tuple[torch.Tensor, torch.Tensor, torch.device]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A map followed by a second prediction on the already-warped moving scan.

    A network that stops short of the full alignment (it underfits at CPU budgets) closes
    part of the remaining gap when shown its own result: the composed map samples the first
    map's displacement at the second map's points, so the moving scan is still resampled
    once. The global parts compose as matrices (``A1 A2``).
    """
    return compose_coordinates(coords, again[0]), compose_affines(affine, again[1])


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


@torch.no_grad()
def _run_network(
    model: GVSL, moving: torch.Tensor, fixed: torch.Tensor, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    """The network's map on the working cube: (coordinates, affine, device), on the CPU."""
    model = model.to(dev).eval()
    m, f = moving.to(dev), fixed.to(dev)
    if dev.type == "cpu":
        # oneDNN's 3D convolutions and trilinear upsampling run ~30 % faster channels-last;
        # the weights go back afterwards so a shared model (the GUI's) is left as it was.
        # torch's stub for Module.to lacks the memory_format keyword that Module.to accepts
        model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        m, f = m.contiguous(memory_format=torch.channels_last_3d), f.contiguous(memory_format=torch.channels_last_3d)
    try:
        with autocast(dev):
            o = model(m, f, restore=False)
    finally:
        if dev.type == "cpu":
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # as above
    return o.coordinates.float().cpu(), o.affine.float().cpu(), dev


def _finite(volume: Volume, name: str) -> tuple[Volume, str]:
    """``volume`` with NaN/Inf voxels set to its finite minimum, and a note when there were any.

    Tools such as SPM write NaN outside the brain; left as they are, they become 3.4e38 in
    the warped image and NaN in the network's input. Background is what they stand for.
    """
    arr = volume.array
    if arr.dtype.kind != "f":
        return volume, ""
    bad = ~np.isfinite(arr)
    n = int(bad.sum())
    if not n:
        return volume, ""
    if n == arr.size:
        raise ValueError(f"{name} volume {volume.source}: every voxel is NaN or infinite")
    fill = float(arr[~bad].min())
    note = (
        f"the {name} scan {volume.source} has {n} NaN/infinite voxel(s) ({100 * n / arr.size:.1f} %); "
        f"they were treated as background ({fill:g})"
    )
    log.warning("gvsl match: %s", note)
    return volume.with_array(np.where(bad, fill, arr).astype(arr.dtype)), note


def _modality_warnings(model: GVSL, fixed: Volume, moving: Volume) -> list[str]:
    """One warning per modality the weights were not pre-trained on, naming the scans (logged too)."""
    known = getattr(model, "trained_modalities", None)
    if not known:
        return []
    unseen: dict[Modality, list[str]] = {}
    for name, v in (("fixed", fixed), ("moving", moving)):
        mod = detect_modality(v)
        if mod not in known:
            unseen.setdefault(mod, []).append(f"the {name} scan {v.source}")
    out = []
    for mod, scans in unseen.items():
        out.append(
            f"{' and '.join(scans)} look{'s' if len(scans) == 1 else ''} like {mod.upper()}, but these "
            f"weights were pre-trained on {' and '.join(sorted(m.upper() for m in known))} only: expect a "
            "poor map (the match falls back to the identity if the map lowers the similarity)"
        )
        log.warning("gvsl match: %s", out[-1])
    return out


def _flat_image_note(fixed: Volume, moving: Volume) -> str | None:
    """Why the pair cannot be matched when a scan has one value everywhere, else None."""
    for name, v in (("fixed", fixed), ("moving", moving)):
        arr = np.asarray(v.array)
        if arr.size and float(arr.max()) == float(arr.min()):
            return (
                f"the {name} image {v.source} has one value everywhere ({float(arr.min()):g}): there is "
                "nothing to match, so the identity map is used (check that the right file or series was read)"
            )
    return None


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

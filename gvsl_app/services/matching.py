"""Pairwise Z-Matching of two volumes in physical space, with ITK-compatible outputs."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from gvsl_app.data.preprocess import Modality, check_overlap, detect_modality, normalise, resample_to, resize_array
from gvsl_app.io.volume import Volume
from gvsl_app.services.match_geometry import map_on_fixed_grid, warped_result
from gvsl_app.services.match_refine import REFINE_SPAN, refine_map, refine_summary
from gvsl_app.services.match_result import MatchResult
from gvsl_app.services.metrics import dice_per_label, mean_dice
from gvsl_app.services.weights import load_gvsl
from models import GVSL, RefineSchedule, local_ncc, refine_preset, resolve_device
from models.device import autocast, cpu_threads, threads_for_load
from models.instance_optimisation import LevelRecord
from models.spatial import compose_affines, compose_coordinates, voxel_grid, warp

log = logging.getLogger(__name__)
ProgressFn = Callable[[str, float], None]


MIN_SIDE = 4
"""Fewest voxels along any axis of a volume that ``match`` accepts."""

LOW_OVERLAP = 0.5
"""Below this fraction of the fixed box covered by the moving scan, ``match`` warns."""


FALLBACK_TOLERANCE = 1e-4
"""How much the network's map must lower the local NCC before the identity replaces it: a map
that is the identity up to interpolation (an untrained network) changes it by less."""


def match(
    fixed: Volume,
    moving: Volume,
    *,
    weights: str | os.PathLike | None = None,
    size: int | None = None,
    device: str | torch.device = "auto",
    moving_labels: Volume | None = None,
    fixed_labels: Volume | None = None,
    model: GVSL | None = None,
    refine: bool | str | RefineSchedule = False,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    fallback: bool = True,
    passes: int = 1,
) -> MatchResult:
    """Match ``moving`` onto ``fixed`` with a GVSL network (demo weights by default).

    The moving volume is first brought onto the fixed grid in physical space, both are
    normalised and resized to a ``size^3`` working cube (default: the cube the weights were
    trained on, else 96), the network predicts one composed
    map, and that map comes back to the fixed grid in millimetres. With ``refine`` (True for
    the default :class:`models.RefineSchedule`, a name of :data:`models.REFINE_PRESETS` such
    as ``"brain"``, or a schedule of one's own) the network's map is then polished on this pair
    by instance optimisation (a few seconds on a CPU; ``should_stop`` returning True ends it
    early and keeps the map so far). The warped image is then
    produced by SimpleITK from the original moving volume and the exported displacement
    field, so ``gvsl match`` outputs and a user's own ``sitk.Resample`` agree exactly.
    On CUDA out-of-memory it falls back to the CPU with a warning.

    With ``fallback`` (the default) a map never leaves the pair less alike than it found it:
    when the network's map lowers the local NCC of the working cubes, the identity is used
    instead (and the refinement starts from it), and a refinement that lowers the NCC is
    dropped; ``report["fallback"]`` says what happened. ``report["warnings"]`` notes a scan
    whose modality the weights were not pre-trained on. ``passes`` > 1 applies the network
    again to its own result and composes the maps (still one resampling of the moving scan):
    on cardiac CT three passes help the network alone, on brain MR they do not, and before a
    refinement one is best (docs/results/matching.md), hence the default of one.
    """
    if int(passes) < 1:
        raise ValueError(f"passes must be >= 1 (how many times the network is applied), got {passes}")
    if size is not None and int(size) < 16:
        raise ValueError(f"working size must be >= 16 voxels (the network pools four times), got {size}")
    preset, schedule = None, None
    if isinstance(refine, RefineSchedule):
        schedule = refine
    elif refine:
        preset = "standard" if refine is True else str(refine)
        schedule = refine_preset(preset)  # a wrong name fails here, before any work
    times: dict[str, float] = {}
    say = progress or (lambda stage, frac: None)
    t = time.perf_counter()
    fixed, moving, notes = _checked_inputs(fixed, moving, fixed_labels, moving_labels)
    overlap = check_overlap(fixed, moving)
    dev = resolve_device(device)
    say("load weights", 0.05)
    weights_info = "given model"
    if model is None:
        model, weights_info = load_gvsl(weights, dev)
    size = int(size or getattr(model, "working_size", None) or 96)
    warnings = notes + _modality_warnings(model, fixed, moving) + _overlap_warnings(overlap, fixed, moving)
    times["load_weights_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say("preprocess", 0.1)
    shape = (size, size, size)
    fixed_n, moving_n = _normalised_on_fixed_grid(fixed, moving)
    f_w, m_w = _cube(fixed_n, shape), _cube(moving_n, shape)
    times["preprocess_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say("network", 0.25)
    # threads beyond the cores other processes leave free wait on each other at every layer
    with cpu_threads(threads_for_load()) if dev.type == "cpu" else contextlib.nullcontext():
        out, used = _network_map(model, m_w, f_w, dev, int(passes))
    times["network_s"] = time.perf_counter() - t
    out["ncc_network"] = out["ncc_after"]
    fell_back: list[str] = []
    flat = _flat_image_note(fixed, moving)
    if flat:
        # NCC is 0 against a constant image whatever the map, so neither the fallback nor
        # the refinement can judge one: a map would only fold (98 % of voxels, measured)
        warnings.append(flat)
        _identity_map(out, shape)
        schedule = None
    elif fallback and out["ncc_after"] < out["ncc_before"] - FALLBACK_TOLERANCE:
        fell_back.append(_use_identity(out, shape, "the network's map"))

    steps_done, grid = 0, shape
    levels: list[LevelRecord] = []
    if schedule is not None:
        t = time.perf_counter()
        say("refine", REFINE_SPAN[0])
        grid, steps_done, levels, note = refine_map(
            out, shape, fixed_n, moving_n, (f_w, m_w), used, schedule, say, should_stop, fallback
        )
        fell_back += [note] if note else []
        times["refine_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say("displacement", REFINE_SPAN[1])
    disp_mm, jac, affine_phys = map_on_fixed_grid(out, fixed, grid)
    times["upsample_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say("warp", 0.75)
    result = warped_result(fixed, moving, moving_labels, disp_mm, jac, affine_phys)
    times["warp_s"] = time.perf_counter() - t

    say("report", 0.9)
    report = {
        "fixed": fixed.source,
        "moving": moving.source,
        "working_size": size,
        "network_passes": int(passes),
        "device": str(used),
        "weights": weights_info,
        "physical_overlap": overlap,
        "refined": refine_summary(schedule, steps_done, levels, out, preset),
        "similarity_grid": list(grid),
        "ncc_before": out["ncc_before"],
        "ncc_after": out["ncc_after"],
        "ncc_network": out["ncc_network"],
        "fallback": fell_back,
        "warnings": warnings,
        **_map_summary(jac, disp_mm),
        "seconds": {k: round(v, 4) for k, v in times.items()},
    }
    if moving_labels is not None and fixed_labels is not None:
        assert result.warped_labels is not None  # set whenever moving_labels is given
        report.update(_label_overlap(moving_labels, fixed_labels, result.warped_labels, fixed))
    report["seconds"]["total_s"] = round(sum(times.values()), 4)
    result.report = report
    say("done", 1.0)
    return result


def _map_summary(jac: np.ndarray, disp_mm: np.ndarray) -> dict[str, float]:
    """Folding (share of voxels with a non-positive Jacobian), Jacobian range, largest displacement."""
    return {
        "folding_percent": float((jac <= 0).mean() * 100.0),
        "jacobian_min": float(jac.min()),
        "jacobian_max": float(jac.max()),
        "max_displacement_mm": float(np.linalg.norm(disp_mm, axis=-1).max()),
    }


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


def _overlap_warnings(overlap: float, fixed: Volume, moving: Volume) -> list[str]:
    """A warning (logged too) when the moving scan covers little of the fixed one in physical space."""
    if overlap >= LOW_OVERLAP:
        return []
    msg = (
        f"the moving scan {moving.source} covers only {100 * overlap:.0f} % of the fixed scan "
        f"{fixed.source} in physical space: the rest of the fixed grid has nothing to match; check "
        "that both files keep their scanner origin and orientation"
    )
    log.warning("gvsl match: %s", msg)
    return [msg]


def _cube(array: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """A normalised scan resized to ``shape``, as a (1, 1, D, H, W) tensor."""
    return torch.from_numpy(resize_array(array, shape))[None, None]


def _normalised_on_fixed_grid(fixed: Volume, moving: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Both scans on the fixed grid in physical space, normalised (the network's and the
    refinement's images are resized from these)."""
    return normalise(fixed), normalise(resample_to(moving, fixed))


def _network_map(
    model: GVSL, m_w: torch.Tensor, f_w: torch.Tensor, dev: torch.device, passes: int = 1
) -> tuple[dict, torch.device]:
    """The network's map, applied ``passes`` times (:func:`_compose_passes`); on CUDA
    out-of-memory the CPU instead, with a warning."""
    try:
        out, used = _run_network(model, m_w, f_w, dev)
    except torch.cuda.OutOfMemoryError:
        log.warning("CUDA out of memory at working size %d; falling back to the CPU", m_w.shape[-1])
        torch.cuda.empty_cache()
        model, used = model.cpu(), torch.device("cpu")
        out, used = _run_network(model, m_w, f_w, used)
    for _ in range(passes - 1):
        again, _ = _run_network(model, warp(m_w, out["coordinates"]), f_w, used)
        _compose_passes(out, again, m_w, f_w)
    return out, used


@torch.no_grad()
def _compose_passes(out: dict, again: dict, m_w: torch.Tensor, f_w: torch.Tensor) -> None:
    """``out``'s map followed by a second prediction on the already-warped moving scan.

    A network that stops short of the full alignment (it underfits at CPU budgets) closes
    part of the remaining gap when shown its own result: the composed map samples the first
    map's displacement at the second map's points, so the moving scan is still resampled
    once. The global parts compose as matrices (``A1 A2``).
    """
    out["coordinates"] = compose_coordinates(out["coordinates"], again["coordinates"])
    out["affine"] = compose_affines(out["affine"], again["affine"])
    out["ncc_after"] = float(-local_ncc(warp(m_w, out["coordinates"]), f_w))


def _label_overlap(moving_labels: Volume, fixed_labels: Volume, warped_labels: Volume, fixed: Volume) -> dict:
    """Per-label and mean Dice before (physical identity) and after matching, for the report."""
    before = resample_to(moving_labels, fixed, is_label=True).array
    labels = sorted(int(v) for v in np.union1d(np.unique(fixed_labels.array), np.unique(moving_labels.array)) if v)
    d0 = dice_per_label(before, fixed_labels.array, labels)
    d1 = dice_per_label(warped_labels.array, fixed_labels.array, labels)
    return {
        "dice_before": {str(k): v for k, v in d0.items()},
        "dice_after": {str(k): v for k, v in d1.items()},
        # a structure in neither map has no Dice (NaN) and stays out of the mean
        "mean_dice_before": _finite_or_none(mean_dice(d0)) if d0 else None,
        "mean_dice_after": _finite_or_none(mean_dice(d1)) if d1 else None,
    }


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


@torch.no_grad()
def _run_network(
    model: GVSL, moving: torch.Tensor, fixed: torch.Tensor, dev: torch.device
) -> tuple[dict, torch.device]:
    """The network's map on the working cube, with the local NCC before and after it."""
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
    res = {
        "coordinates": o.coordinates.float().cpu(),
        "affine": o.affine.float().cpu(),
        "ncc_before": float(-local_ncc(m, f)),
        "ncc_after": float(-local_ncc(o.warped, f)),
    }
    return res, dev


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


def _identity_map(out: dict, shape: tuple[int, int, int]) -> None:
    out["coordinates"] = voxel_grid(shape).unsqueeze(0)
    out["affine"] = torch.eye(3, 4).unsqueeze(0)
    out["ncc_after"] = out["ncc_before"]


def _use_identity(out: dict, shape: tuple[int, int, int], what: str) -> str:
    """Replace a map that lowered the similarity by the identity; the reason, for the report.

    A network applied to a scan unlike its training data (another modality, body part or
    contrast) can predict a map that makes the pair *less* alike; returning the identity
    instead means ``gvsl match`` never leaves a pair worse aligned than it found it.
    """
    reason = (
        f"{what} lowered the local NCC ({out['ncc_before']:.4f} -> {out['ncc_after']:.4f}); used the identity instead"
    )
    log.warning("gvsl match: %s", reason)
    _identity_map(out, shape)
    return reason

"""The checks and warnings on a pair before it is matched: what is refused (naming the file),
what is repaired (NaN voxels become background) and what is said (little coverage, a modality
the weights never saw, a scan with one value everywhere).
"""

from __future__ import annotations

import logging

import numpy as np

from gvsl_app.data.preprocess import Modality, detect_modality
from gvsl_app.io.label_maps import check_labels_fit
from gvsl_app.io.volume import Volume
from gvsl_app.services.match_init import InitialAlignment
from models import GVSL

log = logging.getLogger("gvsl_app.services.matching")

__all__ = ["MIN_SIDE", "LOW_OVERLAP", "checked_inputs", "coverage_warnings", "modality_warnings", "flat_image_note"]


MIN_SIDE = 4
"""Fewest voxels along any axis of a volume that ``match`` accepts."""


LOW_OVERLAP = 0.5
"""Below this share of the fixed scan's content covered by the moving scan once placed, ``match`` warns."""


def checked_inputs(
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
    if fixed_labels is not None and moving_labels is not None:
        check_labels_fit(fixed_labels, moving_labels)  # Dice per structure: a one-hot of each
    fixed, fixed_note = _finite(fixed, "fixed")
    moving, moving_note = _finite(moving, "moving")
    return fixed, moving, [n for n in (fixed_note, moving_note) if n]


def coverage_warnings(init: InitialAlignment, fixed: Volume, moving: Volume) -> list[str]:
    """A warning (logged too) when the moving scan, once placed, covers little of the fixed one."""
    if init.coverage >= LOW_OVERLAP:
        return []
    msg = (
        f"the moving scan {moving.source} covers only {100 * init.coverage:.0f} % of the fixed scan "
        f"{fixed.source}'s content once placed: the rest has nothing to match (a partial field of view?)"
    )
    log.warning("gvsl match: %s", msg)
    return [msg]


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


def modality_warnings(model: GVSL, fixed: Volume, moving: Volume) -> list[str]:
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


def flat_image_note(fixed: Volume, moving: Volume) -> str | None:
    """Why the pair cannot be matched when a scan has one value everywhere, else None."""
    for name, v in (("fixed", fixed), ("moving", moving)):
        arr = np.asarray(v.array)
        if arr.size and float(arr.max()) == float(arr.min()):
            return (
                f"the {name} image {v.source} has one value everywhere ({float(arr.min()):g}): there is "
                "nothing to match, so the identity map is used (check that the right file or series was read)"
            )
    return None

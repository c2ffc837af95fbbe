"""What a match produces and how it is written: warped image and labels, ITK displacement
field and affine, Jacobian, report.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from gvsl_app.data.preprocess import affine_transform
from gvsl_app.io.images import write_vector_field, write_volume
from gvsl_app.io.jsonio import dumps_strict
from gvsl_app.io.nifti import FAST_GZIP
from gvsl_app.io.volume import Volume

__all__ = ["MATCH_OUTPUTS", "MatchReport", "MatchResult", "Quality", "RefineSummary"]

MATCH_OUTPUTS = (
    "warped.nii.gz",
    "warped_labels.nii.gz",
    "displacement.nii.gz",
    "affine.tfm",
    "jacobian.nii.gz",
    "report.json",
)
"""Every file :meth:`MatchResult.save` may write (``warped_labels`` only with moving labels)."""


@dataclass
class RefineSummary:
    """What the refinement did: its preset (None for a schedule of one's own) and why it was
    chosen (``preset_reason``: from the scans, or by the user), the steps planned and run,
    whether a stop request ended it, the CPU threads it ran on, what each level did
    (``levels``: stage, shape, steps, planned, seconds) and its ``schedule``'s fields (written
    flat into ``report.json``'s ``refined``).
    """

    preset: str | None
    preset_reason: str
    steps: int
    steps_done: int
    stopped: bool
    cpu_threads: int | None
    levels: list[dict]
    schedule: dict

    def to_json(self) -> dict:
        """The report's ``refined`` entry."""
        return {
            "preset": self.preset,
            "preset_reason": self.preset_reason,
            "steps": self.steps,
            "steps_done": self.steps_done,
            "stopped": self.stopped,
            "cpu_threads": self.cpu_threads,
            "levels": self.levels,
            **self.schedule,
        }


@dataclass
class Quality:
    """Whether the match is to be trusted: ``status`` ``ok``, ``doubtful`` (look before using
    it) or ``failed`` (the scans were not brought together), the ``reasons`` in words, and the
    signals they were judged on: ``coverage`` (share of the fixed scan's content the moving scan
    covers once placed), ``nmi_identity`` / ``nmi_initial`` / ``nmi_after`` (normalised mutual
    information - 1 of the pair in the files' frames, after the initial alignment, and after
    the match, weighted by the coverage; the higher the more alike).
    """

    status: str
    reasons: list[str]
    coverage: float
    nmi_identity: float
    nmi_initial: float
    nmi_after: float

    def to_json(self) -> dict:
        """The report's ``quality`` entry."""
        return {
            "status": self.status,
            "reasons": list(self.reasons),
            "coverage": round(self.coverage, 4),
            "nmi_identity": round(self.nmi_identity, 4),
            "nmi_initial": round(self.nmi_initial, 4),
            "nmi_after": round(self.nmi_after, 4),
        }


@dataclass
class MatchReport:
    """The schema of ``report.json``, one documented field each.

    ``fixed`` / ``moving``: the files matched. ``working_size``: the network's cube side;
    ``network_passes``; ``device``: where the network ran; ``weights``: which. ``physical_overlap``:
    share of the fixed box the moving box covers in the files' own frames. ``init``: the initial
    alignment (mode, candidate chosen, its score, the coverage, rotation and translation, the
    4x4 matrix fixed point -> moving point, every candidate's score). ``similarity``: what the
    refinement and the fallback compared (``ncc``, ``mind`` or ``ngf``) and ``similarity_reason``
    why. ``moving_data_share``: the share of the fixed grid where the moving scan, once placed,
    has data; ``overlap_masked``: whether the similarities were restricted to it (the default
    when it is below 1). ``refined``: :class:`RefineSummary` or None. ``similarity_grid``: the grid the NCC
    values were computed on; ``ncc_before`` (the pair after the initial alignment, before the
    network), ``ncc_network`` (after the network), ``ncc_after`` (after everything), and the same
    by the chosen similarity (``similarity_before`` / ``similarity_after``). ``fallback``: the maps
    that were dropped, and why; ``warnings``: what the user should know. ``folding_percent``,
    ``jacobian_min``/``max``, ``max_displacement_mm``: the map. ``quality``: :class:`Quality`.
    ``seconds``: each stage and ``total_s``. With both label maps: ``dice_before`` (files'
    frames) / ``dice_after`` per label and their means; ``dicom_series`` for DICOM inputs;
    ``notes`` (structures without a Dice).
    """

    fixed: str
    moving: str
    working_size: int
    network_passes: int
    device: str
    weights: str
    physical_overlap: float
    init: dict
    similarity: str
    similarity_reason: str
    moving_data_share: float
    overlap_masked: bool
    refined: RefineSummary | None
    similarity_grid: list[int]
    ncc_before: float
    ncc_after: float
    ncc_network: float
    similarity_before: float
    similarity_after: float
    fallback: list[str]
    warnings: list[str]
    folding_percent: float
    jacobian_min: float
    jacobian_max: float
    max_displacement_mm: float
    quality: Quality
    seconds: dict[str, float]
    dice_before: dict[str, float] | None = None
    dice_after: dict[str, float] | None = None
    mean_dice_before: float | None = None
    mean_dice_after: float | None = None
    dicom_series: dict[str, str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def has_dice(self) -> bool:
        """Whether both label maps were given (the Dice fields are set)."""
        return self.dice_after is not None

    def to_json(self) -> dict[str, Any]:
        """``report.json``'s content: every field, the optional ones only when set."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _OPTIONAL and (value is None or value == []):
                continue
            out[f.name] = value.to_json() if hasattr(value, "to_json") else value
        return out


_OPTIONAL = frozenset({"dice_before", "dice_after", "mean_dice_before", "mean_dice_after", "dicom_series", "notes"})


@dataclass
class MatchResult:
    """Everything ``gvsl match`` writes, on the fixed volume's grid.

    ``displacement_mm`` is ``(z, y, x, 3)`` with physical (x, y, z) millimetre components:
    the total map (affine and deformable) such that a fixed-grid point ``x`` takes the
    moving image's value at ``x + d(x)``. ``affine_physical`` is the 4x4 global part in
    physical space (fixed point -> moving point).
    """

    fixed: Volume
    warped: Volume
    displacement_mm: np.ndarray
    jacobian: Volume
    affine_physical: np.ndarray
    warped_labels: Volume | None = None
    report: MatchReport | None = None
    _field: tuple[np.ndarray, sitk.Image] | None = field(default=None, init=False, repr=False, compare=False)

    def displacement_image(self) -> sitk.Image:
        """The ITK displacement field (vector float64 image on the fixed grid, the pixel type
        ``sitk.DisplacementFieldTransform`` takes).

        Built once per ``displacement_mm`` array and kept until :meth:`release_field_image` or
        the end of :meth:`save`; assign a new array rather than changing ``displacement_mm`` in
        place. Each call returns its own shallow copy, because ``sitk.DisplacementFieldTransform``
        empties the image it is given. Built from the float32 array and cast by SimpleITK, not
        through a float64 NumPy copy (1.9 GB for a 512 x 512 x 300 CT, then copied again).
        """
        if self._field is None or self._field[0] is not self.displacement_mm:
            img = sitk.GetImageFromArray(self.displacement_mm, isVector=True)
            if img.GetPixelID() != sitk.sitkVectorFloat64:
                img = sitk.Cast(img, sitk.sitkVectorFloat64)
            img.SetSpacing(self.fixed.spacing)
            img.SetOrigin(self.fixed.origin)
            img.SetDirection(self.fixed.direction)
            self._field = (self.displacement_mm, img)
        return sitk.Image(self._field[1])

    def release_field_image(self) -> None:
        """Free the cached ITK field (float64: twice the size of ``displacement_mm``)."""
        self._field = None

    def affine_transform(self) -> sitk.AffineTransform:
        """The global part as an ITK transform (fixed point -> moving point), as ``affine.tfm`` holds it."""
        return affine_transform(self.affine_physical)

    def save(self, out: str | os.PathLike) -> Path:
        """Write warped image/labels, displacement field, affine .tfm, Jacobian and report.

        The volumes are written concurrently: gzip and most of SimpleITK's writer release the
        GIL, and writing is the largest stage of a CPU match after the network.
        """
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        jobs: list[Callable[[], object]] = [
            lambda: write_volume(self.warped, out / "warped.nii.gz"),
            # The float64 field is the largest output: ISA-L halves it in ~0.15 s at 128^3; zlib
            # would take seconds, so without ISA-L it is stored uncompressed.
            lambda: write_vector_field(
                self.displacement_mm, self.fixed, out / "displacement.nii.gz", compression_level=1 if FAST_GZIP else 0
            ),
            lambda: write_volume(self.jacobian, out / "jacobian.nii.gz"),
        ]
        warped_labels = self.warped_labels
        if warped_labels is not None:
            jobs.append(lambda: write_volume(warped_labels, out / "warped_labels.nii.gz", is_label=True))
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            for future in [pool.submit(job) for job in jobs]:
                future.result()  # re-raises the first failure
        sitk.WriteTransform(self.affine_transform(), str(out / "affine.tfm"))
        (out / "report.json").write_text(dumps_strict(self.report.to_json() if self.report is not None else {}))
        self.release_field_image()
        return out

    def written_files(self) -> list[str]:
        """The names :meth:`save` writes for this result."""
        return [n for n in MATCH_OUTPUTS if n != "warped_labels.nii.gz" or self.warped_labels is not None]

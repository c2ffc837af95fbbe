"""What a match produces and how it is written: warped image and labels, ITK displacement
field and affine, Jacobian, report."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from gvsl_app.io.images import write_image, write_volume
from gvsl_app.io.jsonio import dumps_strict
from gvsl_app.io.nifti import FAST_GZIP
from gvsl_app.io.volume import Volume

__all__ = ["MATCH_OUTPUTS", "MatchResult"]

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
    report: dict = field(default_factory=dict)
    _field: tuple[np.ndarray, sitk.Image] | None = field(default=None, init=False, repr=False, compare=False)

    def displacement_image(self) -> sitk.Image:
        """The ITK displacement field (vector float64 image on the fixed grid).

        Built once per ``displacement_mm`` array (0.05 s at 128^3, and both the warp and
        ``save`` need it) and kept until :meth:`release_field_image` or the end of
        :meth:`save`; assign a new array rather than changing ``displacement_mm`` in place.
        Each call returns its own shallow copy, because ``sitk.DisplacementFieldTransform``
        empties the image it is given.
        """
        if self._field is None or self._field[0] is not self.displacement_mm:
            img = sitk.GetImageFromArray(self.displacement_mm.astype(np.float64), isVector=True)
            img.SetSpacing(self.fixed.spacing)
            img.SetOrigin(self.fixed.origin)
            img.SetDirection(self.fixed.direction)
            self._field = (self.displacement_mm, img)
        return sitk.Image(self._field[1])

    def release_field_image(self) -> None:
        """Free the cached ITK field (float64: twice the size of ``displacement_mm``)."""
        self._field = None

    def affine_transform(self) -> sitk.AffineTransform:
        t = sitk.AffineTransform(3)
        t.SetMatrix(self.affine_physical[:3, :3].flatten().tolist())
        t.SetTranslation(self.affine_physical[:3, 3].tolist())
        return t

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
            lambda: write_image(
                self.displacement_image(), out / "displacement.nii.gz", compression_level=1 if FAST_GZIP else 0
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
        (out / "report.json").write_text(dumps_strict(self.report))
        self.release_field_image()
        return out

    def written_files(self) -> list[str]:
        """The names :meth:`save` writes for this result."""
        return [n for n in MATCH_OUTPUTS if n != "warped_labels.nii.gz" or self.warped_labels is not None]

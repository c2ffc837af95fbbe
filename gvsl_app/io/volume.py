"""The ``Volume``: a 3D array in (z, y, x) with its physical geometry."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import cast

import numpy as np


@dataclass
class Volume:
    """A scalar 3D image or label map in physical space.

    ``array`` is ``(z, y, x)`` as ``SimpleITK.GetArrayFromImage`` returns it. ``spacing`` and
    ``origin`` are in millimetres in ITK's ``(x, y, z)`` order, ``direction`` is the 3x3
    direction-cosine matrix (columns = index axes x, y, z) as a row-major 9-tuple, exactly as
    SimpleITK stores them, so geometry round-trips without reinterpretation. ``dtype`` is the
    file's original pixel type name (e.g. ``"int16"``) even when ``array`` was converted.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    dtype: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ValueError(f"{self.source or 'volume'}: expected a 3D array (z, y, x), got shape {self.array.shape}")
        self.spacing = cast("tuple[float, float, float]", tuple(float(s) for s in self.spacing))
        self.origin = cast("tuple[float, float, float]", tuple(float(o) for o in self.origin))
        self.direction = tuple(float(d) for d in self.direction)
        if not self.dtype:
            self.dtype = str(self.array.dtype)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The voxel array's shape ``(z, y, x)``."""
        return tuple(self.array.shape)

    @property
    def direction_matrix(self) -> np.ndarray:
        """The direction cosines as a 3 x 3 matrix (columns: the image axes in world space)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def with_array(self, array: np.ndarray, **changes) -> Volume:
        """Same geometry, new voxels (e.g. a label map or a warped image on this grid)."""
        array = np.asarray(array)
        changes.setdefault("dtype", str(array.dtype))
        return replace(self, array=array, **changes)

    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 matrix mapping (z, y, x, 1) array indices to physical (x, y, z, 1) millimetres."""
        m = np.eye(4)
        lin = self.direction_matrix @ np.diag(self.spacing)  # acts on (x, y, z) indices
        m[:3, :3] = lin[:, ::-1]  # our index order is (z, y, x)
        m[:3, 3] = self.origin
        return m

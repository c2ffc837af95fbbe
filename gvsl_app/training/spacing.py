"""The voxel spacing of a segmentation run's training images, recorded in its checkpoints.

Fine-tuning crops patches at each image's native resolution, so the network learns anatomy at
the voxel sizes of its training images; ``gvsl segment`` resamples an input whose spacing lies
outside them (:mod:`gvsl_app.services.segment`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from gvsl_app.io.folders import images_folder, list_volume_files
from gvsl_app.io.images import read_volume


def _spacing_of(path: os.PathLike) -> tuple[float, ...]:
    """A volume's spacing (mm, ITK x, y, z): a file's header alone, a DICOM folder read whole."""
    if os.path.isdir(path):
        return read_volume(path).spacing
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # the header only: training images may be large
    return tuple(float(s) for s in reader.GetSpacing()[:3])


def training_spacing(data: str | os.PathLike, names: Sequence[str]) -> dict[str, list]:
    """``{"spacing": median, "spacing_range": [low, high]}`` (mm per ITK x, y, z axis) over the
    images of the cases ``names`` of the data folder ``data``: what a segmentation checkpoint
    records in ``preprocess`` (the folder's images were read and checked before, so every
    name has a file).
    """
    files = list_volume_files(images_folder(data))
    spacings = np.array([_spacing_of(files[n]) for n in names], dtype=float)
    return {
        "spacing": [round(float(v), 6) for v in np.median(spacings, axis=0)],
        "spacing_range": [
            [round(float(v), 6) for v in spacings.min(axis=0)],
            [round(float(v), 6) for v in spacings.max(axis=0)],
        ],
    }

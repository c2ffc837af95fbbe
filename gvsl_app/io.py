"""Reading and writing volumes through SimpleITK, keeping physical geometry."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .volume import Volume


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """A SimpleITK image with the volume's voxels and geometry."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    img.SetSpacing(volume.spacing)
    img.SetOrigin(volume.origin)
    img.SetDirection(volume.direction)
    return img


def volume_from_sitk(img: sitk.Image, source: str = "", dtype: str | None = None) -> Volume:
    """A ``Volume`` from a 3D scalar SimpleITK image."""
    arr = sitk.GetArrayFromImage(img)
    return Volume(arr, img.GetSpacing(), img.GetOrigin(), img.GetDirection(),
                  dtype=dtype or str(arr.dtype), source=source)


def write_volume(volume: Volume, path: str | os.PathLike, is_label: bool = False) -> Path:
    """Write a volume (any format SimpleITK writes, chosen by extension) with its geometry.

    Label maps are stored as the smallest unsigned/signed integer type that holds them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = volume.array
    if is_label:
        lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
        arr = arr.astype(np.uint8 if lo >= 0 and hi < 256 else np.int16 if -32768 <= lo and hi < 32768 else np.int32)
    elif arr.dtype == np.float64 or arr.dtype == bool:
        arr = arr.astype(np.float32)
    sitk.WriteImage(volume_to_sitk(volume.with_array(arr)), str(path), useCompression=str(path).endswith(".gz"))
    return path


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D scalar volume (provisional: hardened with clear errors in a later step)."""
    path = Path(path)
    img = sitk.ReadImage(str(path))
    return volume_from_sitk(img, source=str(path))

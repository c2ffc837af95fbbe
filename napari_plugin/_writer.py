"""npe2 writers: an image or labels layer to NIfTI (or MHA/NRRD) with its physical geometry.

The geometry is taken from what the layer shows (``scale``, ``translate``, ``rotate``,
``shear`` and ``affine``), so a volume opened with the GVSL reader and saved again keeps
its spacing, origin and direction. A layer the reader showed reoriented (a scan whose voxel
axes are permuted relative to the world axes; ``metadata["gvsl_orientation"]``) is written on
the file's own voxel grid again: the same axis order, header direction and origin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gvsl_app.io.images import write_volume
from gvsl_app.io.orientation import file_frame
from gvsl_app.io.volume import Volume

from ._geometry import ORIENTATION_KEY, state_matrix

EXTENSIONS = (".nii.gz", ".nii", ".mha", ".nrrd")


def _target(path: str) -> Path:
    p = Path(path)
    if not p.name.lower().endswith(EXTENSIONS):
        p = p.with_name(p.name + ".nii.gz")
    return p


def _volume(data: Any, meta: dict) -> Volume:
    data = data[0] if isinstance(data, list) else data  # multiscale: full resolution
    array = np.asarray(data)
    if array.ndim != 3:
        raise ValueError(f"layer {meta.get('name', '')!r} has shape {array.shape}; only 3D volumes can be written")
    record = (meta.get("metadata") or {}).get(ORIENTATION_KEY)
    array, geo = file_frame(array, state_matrix(meta, ndim=3), record)
    return Volume(array, source=str(meta.get("name", "")), **geo)


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    return [str(write_volume(_volume(data, meta), _target(path)))]


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    return [str(write_volume(_volume(data, meta), _target(path), is_label=True))]

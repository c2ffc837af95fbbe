"""Physical geometry between engine ``Volume`` objects and napari layers.

A ``Volume`` holds ITK geometry: spacing/origin in (x, y, z) order and a direction matrix
whose columns are the (x, y, z) index axes. napari layers are displayed in world
coordinates that we define as physical millimetres in (z, y, x) order, so that every
layer of every grid overlays in millimetres. napari composes a layer's data-to-world map
as ``affine @ (rotate * shear * scale + translate)``; we use

* ``scale = spacing[::-1]`` and ``translate = origin[::-1]`` (what the user sees in the
  layer controls, and exact when the direction is the identity);
* ``affine`` = the direction matrix in (z, y, x) order as a rotation about the origin
  (identity for axis-aligned volumes).

The inverse (``volume_from_layer``) reads back any combination of scale, translate,
rotate, shear and affine a user may have set, so writing a layer keeps what is shown.
"""

from __future__ import annotations

import numpy as np

from gvsl_app.io.orientation import geometry_from_matrix
from gvsl_app.io.volume import Volume

_REV = np.eye(3)[::-1]  # swaps (x, y, z) <-> (z, y, x)


def layer_geometry(volume: Volume) -> dict:
    """``scale``, ``translate`` and ``affine`` keyword arguments placing ``volume`` in mm."""
    d_world = _REV @ volume.direction_matrix @ _REV
    origin_w = np.asarray(volume.origin, dtype=float)[::-1]
    affine = np.eye(4)
    affine[:3, :3] = d_world
    affine[:3, 3] = origin_w - d_world @ origin_w
    return {
        "scale": tuple(float(s) for s in volume.spacing[::-1]),
        "translate": tuple(float(t) for t in origin_w),
        "affine": affine,
    }


def data_to_world(layer) -> np.ndarray:
    """The 4x4 map from a 3D layer's data (z, y, x) indices to world (z, y, x) mm."""
    if layer.ndim != 3:
        raise ValueError(f"layer {layer.name!r} is {layer.ndim}D; GVSL works on 3D volumes")
    # Public API only: the map is affine, so the images of the origin and the three unit
    # index vectors give its matrix (napari's own transform chain is private).
    origin = np.asarray(layer.data_to_world((0.0, 0.0, 0.0)), dtype=float)
    matrix = np.eye(4)
    for axis in range(3):
        unit = np.zeros(3)
        unit[axis] = 1.0
        matrix[:3, axis] = np.asarray(layer.data_to_world(tuple(unit)), dtype=float) - origin
    matrix[:3, 3] = origin
    return matrix


def same_layer_grid(a, b, atol: float = 1e-6) -> bool:
    """True when two 3D layers have the same data shape and the same data-to-world map
    (False for any other layer: GVSL grids are 3D, and choosers ask this of every layer).
    """
    if a.ndim != 3 or b.ndim != 3 or tuple(a.data.shape) != tuple(b.data.shape):
        return False
    return bool(np.allclose(data_to_world(a), data_to_world(b), atol=atol))


def state_matrix(meta: dict, ndim: int = 3) -> np.ndarray:
    """The data-to-world matrix from a layer state dict (what npe2 writers receive)."""
    from napari.utils.transforms import Affine

    inner = Affine(
        scale=meta.get("scale", (1.0,) * ndim),
        translate=meta.get("translate", (0.0,) * ndim),
        rotate=meta.get("rotate"),
        shear=meta.get("shear"),
        ndim=ndim,
    )
    outer = meta.get("affine")
    outer = np.eye(ndim + 1) if outer is None else np.asarray(getattr(outer, "affine_matrix", outer), dtype=float)
    return outer @ inner.affine_matrix


def volume_from_layer(layer, *, labels: bool | None = None) -> Volume:
    """The layer's voxels and physical geometry as an engine ``Volume`` (a copy of the data)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    array = np.array(data, copy=True)
    if array.ndim != 3:
        raise ValueError(f"layer {layer.name!r} has shape {array.shape}; GVSL needs a 3D volume")
    if labels is None:
        labels = layer.__class__.__name__ == "Labels"
    if labels and array.dtype.kind not in "iub":
        array = np.rint(array).astype(np.int32)
    geo = geometry_from_matrix(data_to_world(layer))
    return Volume(array, source=str(layer.name), **geo)


# ------------------------------------------------------------------ axis-aligned display

ORIENTATION_KEY = "gvsl_orientation"
"""``layer.metadata`` key of the record :func:`axis_aligned` makes when the reader showed a
file's voxels in another axis order than the file stores them (see :func:`file_frame`)."""

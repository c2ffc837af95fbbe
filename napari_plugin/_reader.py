"""npe2 reader: NIfTI, MetaImage, NRRD files and DICOM series folders, in physical space.

Each file becomes one layer with ``scale``/``translate``/``affine`` from its geometry, so
volumes with different grids overlay in millimetres. Label maps (a file name containing
``label`` or ``seg``, or an integer volume with few distinct values) open as Labels layers.
Unreadable inputs raise the engine's ``VolumeReadError``, whose message napari shows.

A scan whose voxel axes are permuted relative to the world axes (acquired coronally or
sagittally) is shown with its voxels transposed and flipped to the world axes, as
``SimpleITK.DICOMOrient(image, "LPS")`` would
(:func:`~gvsl_app.io.orientation.axis_aligned`: napari cannot slice it otherwise), physically
identical; ``layer.metadata["gvsl_orientation"]`` records it, and the writer saves such a
layer (and results on its grid) on the file's own voxel grid again. An oblique scan is also
shown closest to the world axes, its remaining rotation kept in the layer's affine and
named in a notification.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from gvsl_app.io.images import read_labels, read_volume
from gvsl_app.io.orientation import axis_aligned
from gvsl_app.io.volume import Volume

from ._geometry import ORIENTATION_KEY
from ._layers import image_layer_data, labels_layer_data

SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")
_LABEL_NAME = re.compile(r"label|seg")
MAX_LABEL_VALUES = 64


def _name(path: Path) -> str:
    name = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _looks_like_dicom_folder(folder: Path) -> bool:
    for i, child in enumerate(sorted(folder.iterdir())):
        if i >= 50:
            break
        if child.is_file() and (child.suffix.lower() == ".dcm" or _is_dicom_file(child)):
            return True
    return False


def napari_get_reader(path):
    """Return :func:`read_layers` when every path is a volume this plugin reads, else ``None``."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    for p in map(Path, paths):
        if p.is_dir():
            if not _looks_like_dicom_folder(p):
                return None
        elif not p.name.lower().endswith(SUFFIXES):
            return None
    return read_layers


def is_label_volume(path: Path, volume: Volume | None = None) -> bool:
    """A label map by name (``label``/``seg``) or by content (integers, few distinct values)."""
    if _LABEL_NAME.search(_name(path).lower()):
        return True
    if volume is None or volume.array.dtype.kind not in "iub":
        return False
    arr = volume.array
    if len(np.unique(arr[::4, ::4, ::4])) > MAX_LABEL_VALUES:
        return False
    return len(np.unique(arr)) <= MAX_LABEL_VALUES


def layer_data_for(path) -> tuple:
    """The napari layer data tuple of one file or DICOM folder."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".dcm":
        path = path.parent  # one slice: open the series it belongs to
    if path.is_file() and _LABEL_NAME.search(_name(path).lower()):
        vol = read_labels(path)
        return _aligned(labels_layer_data, vol, path, *_label_style(path, vol))
    vol = read_volume(path)
    if path.is_file() and is_label_volume(path, vol):
        vol = vol.with_array(vol.array.astype(np.int32) if vol.array.dtype.kind == "b" else vol.array)
        return _aligned(labels_layer_data, vol, path, *_label_style(path, vol))
    return _aligned(image_layer_data, vol, path)


def _aligned(make, vol: Volume, path: Path, *style) -> tuple:
    """The layer data of ``vol`` shown along the world axes, with the record of any reorientation."""
    shown, record = axis_aligned(vol)
    data, kw, kind = make(shown, _name(path), *style)
    if record is not None:
        kw["metadata"] = {**kw.get("metadata", {}), ORIENTATION_KEY: record}
        if record["residual_deg"] > 0:
            from napari.utils.notifications import show_warning

            show_warning(
                f"{path.name} is oblique ({record['residual_deg']:.1f} degrees from the nearest axis-aligned "
                "orientation): it is placed in physical space, but a 2D view draws its voxel slices without "
                "the tilt out of the slice plane (napari does not resample); the 3D view is exact."
            )
    return data, kw, kind


def _label_style(path: Path, vol: Volume) -> tuple[dict[int, str] | None, dict[int, tuple] | None]:
    """Structure names and colours: from a label table next to the file (ITK-SNAP, 3D Slicer,
    CSV, JSON: :func:`gvsl_app.io.label_tables.find_label_table`), else from the file itself.

    A table that cannot be read is skipped with a warning (it may be another kind of file
    that happens to sit there); values the table does not name keep ``label N``.
    """
    from gvsl_app.io.label_tables import LabelTableError, find_label_table, read_label_table

    names = vol.meta.get("label_names")
    table_path = find_label_table(path)
    if table_path is None:
        return names, None
    try:
        table = read_label_table(table_path)
    except LabelTableError as exc:
        from napari.utils.notifications import show_warning

        show_warning(f"{table_path} next to {path.name} is not a label table ({exc}); structures named by value")
        return names, None
    present = {int(v) for v in np.unique(vol.array) if v != 0}
    named = {v: table.name_of(v) for v in sorted(present | set(table.names)) if v != 0}
    colors = {v: table.color_of(v) for v in named}
    return named, colors


def read_layers(path) -> list[tuple]:
    paths = path if isinstance(path, (list, tuple)) else [path]
    return [layer_data_for(p) for p in paths]

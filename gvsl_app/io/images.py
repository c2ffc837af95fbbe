"""Reading and writing volumes through SimpleITK, keeping physical geometry.

Everything the engine reads from disk comes through :func:`read_volume` (images) and
:func:`read_labels` (label maps). Both turn every way a file can be unusable into a
:class:`VolumeReadError` whose message names the file, says what is wrong and what to do,
because these messages end up in the GUI and on the command line, where a SimpleITK/ITK
traceback helps nobody.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from gvsl_app.io.dicom import read_dicom_series
from gvsl_app.io.geometry import geometry_differences
from gvsl_app.io.itk_errors import VolumeReadError, first_line, read_quietly
from gvsl_app.io.nifti import gzip_file, scan_nifti, write_vector_nifti
from gvsl_app.io.volume import Volume
from gvsl_app.io.write_checks import verify_layout, verify_written
from gvsl_app.memory import check_volume_fits

logger = logging.getLogger(__name__)

__all__ = [
    "VolumeReadError",
    "volume_to_sitk",
    "volume_from_sitk",
    "write_image",
    "write_volume",
    "read_volume",
    "read_labels",
]


# Formats whose writer produces a second file named after the header (header + raw data):
# writing them to a temporary name and renaming would leave the header pointing at the
# temporary data file, so they are written in place.
_MULTI_FILE_SUFFIXES = (".mhd", ".hdr", ".img", ".img.gz")


# --------------------------------------------------------------------------------------
# SimpleITK <-> Volume
# --------------------------------------------------------------------------------------


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """A SimpleITK image with the volume's voxels and geometry.

    The array is passed as is except for types SimpleITK has no pixel type for (``bool``
    becomes ``uint8``, ``float16`` becomes ``float32``), so that a volume built anywhere in
    the engine can be written or resampled without the caller thinking about pixel types.
    """
    arr = np.asarray(volume.array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False)
    img.SetSpacing(volume.spacing)
    img.SetOrigin(volume.origin)
    img.SetDirection(volume.direction)
    return img


def volume_from_sitk(img: sitk.Image, source: str = "", dtype: str | None = None) -> Volume:
    """A ``Volume`` from a 3D scalar SimpleITK image.

    ``dtype`` overrides the recorded original pixel type (used when the caller converted
    the image before handing it over); by default it is the image's own numpy type name.
    """
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{source or 'image'}: expected a 3D scalar image, got {img.GetDimension()}D with "
            f"{img.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )
    arr = sitk.GetArrayFromImage(img)
    return Volume(
        arr, img.GetSpacing(), img.GetOrigin(), img.GetDirection(), dtype=dtype or str(arr.dtype), source=source
    )


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _label_dtype(lo: int, hi: int) -> type:
    """Smallest common integer type that holds [lo, hi] (what label files are stored as)."""
    if lo >= 0 and hi < 256:
        return np.uint8
    if lo >= 0 and hi < 65536:
        return np.uint16
    if -32768 <= lo and hi < 32768:
        return np.int16
    if -(2**31) <= lo and hi < 2**31:
        return np.int32
    return np.int64


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def write_image(img: sitk.Image, path: str | os.PathLike, compression_level: int = 1) -> Path:
    """Write a SimpleITK image, staged and verified; ``.nii.gz`` is deflated at ``compression_level``.

    SimpleITK's NIfTI writer ignores its compression-level argument and deflates slowly
    (2.4 s for a 128^3 float64 displacement field). We write the plain ``.nii`` and gzip it
    here with ISA-L when it is installed (level 1: 13 ms for a 128^3 float32 volume against
    234 ms for zlib, same size); level 0 stores (zlib) or Huffman-codes (ISA-L) without
    matching. Either way the result is an ordinary ``.nii.gz``.

    Every format, the two-file ones (``.mhd`` + ``.raw``, ``.hdr`` + ``.img``) included, is
    written beside the target under a temporary name (:func:`gvsl_app.io.outputs.write_staged`)
    and checked (:func:`verify_written`: its header read back, the data's size) before it
    replaces anything: ITK's writers do not raise on a full disk (they print "NWAD: wrote only
    ..."), and a truncated file would have been renamed over a good one. An incomplete write is
    an :class:`~gvsl_app.io.outputs.IncompleteWriteError` and leaves the earlier file as it was.
    """
    from gvsl_app.io.outputs import IncompleteWriteError, write_staged

    path = Path(path)
    compress = path.name.lower().endswith(".gz")

    def write(staged: Path) -> None:
        try:
            if path.name.lower().endswith(".nii.gz"):
                raw = staged.with_name(staged.name[:-3])
                sitk.WriteImage(img, str(raw), useCompression=False)
                verify_written(img, raw)
                gzip_file(raw, staged, compression_level)
                raw.unlink()
            else:
                # SimpleITK picks the format from the extension, which the staged name keeps.
                sitk.WriteImage(img, str(staged), useCompression=compress)
        except RuntimeError as exc:  # ITK names the staged file: name the target instead
            raise RuntimeError(first_line(exc).replace(str(staged.parent), str(path.parent))) from None

    try:
        return write_staged(path, write, lambda staged: verify_written(img, staged))
    except IncompleteWriteError as exc:
        raise IncompleteWriteError(f"cannot write {path}: {exc} Nothing at {path} was replaced.") from None
    except RuntimeError as exc:
        raise ValueError(
            f"cannot write {path}: {first_line(exc)}. Use an extension SimpleITK writes "
            "(.nii.gz, .nii, .mha, .mhd, .nrrd) and check that the folder is writable and the disk has room."
        ) from None


def write_vector_field(field: np.ndarray, grid: Volume, path: str | os.PathLike, compression_level: int = 1) -> Path:
    """Write a ``(z, y, x, 3)`` vector field (a displacement in mm) on ``grid``'s geometry as a
    float64 vector image, the type ``sitk.DisplacementFieldTransform`` takes.

    NIfTI (``.nii``, ``.nii.gz``) is written in slabs (:func:`gvsl_app.io.nifti.write_vector_nifti`:
    no float64 copy of the whole field in memory); other formats through SimpleITK. Staged and
    verified like :func:`write_image`.
    """
    from gvsl_app.io.outputs import IncompleteWriteError, write_staged

    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        img = sitk.Cast(sitk.GetImageFromArray(field, isVector=True), sitk.sitkVectorFloat64)
        img.SetSpacing(grid.spacing)
        img.SetOrigin(grid.origin)
        img.SetDirection(grid.direction)
        return write_image(img, path, compression_level)
    size, nbytes = tuple(int(n) for n in field.shape[2::-1]), int(np.prod(field.shape)) * 8
    matrix = grid.index_to_physical_matrix()
    try:
        return write_staged(
            path,
            lambda staged: write_vector_nifti(field, matrix, staged, compression_level),
            lambda staged: verify_layout(staged, size, 3, nbytes),
        )
    except IncompleteWriteError as exc:
        raise IncompleteWriteError(f"cannot write {path}: {exc} Nothing at {path} was replaced.") from None
    except OSError as exc:
        advice = "Check that the folder is writable and the disk has room."
        raise ValueError(f"cannot write {path}: {exc}. {advice}") from None


def write_volume(volume: Volume, path: str | os.PathLike, is_label: bool = False) -> Path:
    """Write a volume (any format SimpleITK writes, chosen by extension) with its geometry.

    Spacing, origin and direction are written exactly as the ``Volume`` holds them, so a
    round trip through NIfTI, MHA or NRRD returns the same grid. Label maps are stored as
    the smallest integer type that holds them (float label arrays, e.g. after a warp, are
    rounded first; NaN labels are refused). ``float64`` images are stored as ``float32``
    because no downstream tool needs the extra precision and it halves the file. Writing
    is staged, verified and atomic (see :func:`write_image`).
    """
    path = Path(path)
    arr = np.asarray(volume.array)
    if is_label:
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise ValueError(f"{path.name}: label map to write contains NaN/inf values")
            arr = np.rint(arr)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        arr = arr.astype(_label_dtype(lo, hi), copy=False)
    elif arr.dtype == np.float64 or arr.dtype == bool:
        arr = arr.astype(np.float32)
    return write_image(volume_to_sitk(volume.with_array(arr)), path)


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _check_shape(path: Path, dim: int, size: tuple[int, ...], comps: int) -> None:
    """Explain why an image of this header shape cannot be used (or return when it can).

    Called on the file header before the voxels are loaded (a 4D or RGB file may be
    large) and again on the decoded image (DICOM series have no separate header step).
    """
    if comps != 1:
        raise VolumeReadError(
            f"{path}: it is a multi-component image ({comps} values per voxel, e.g. RGB or a vector "
            "field); GVSL needs a scalar (grey-value) volume. Convert it to a single channel first."
        )
    if 0 in size:
        raise VolumeReadError(f"{path}: the image has a zero-size dimension (size {size}); the file holds no voxels.")
    if dim == 2:
        raise VolumeReadError(
            f"{path}: it is a 2D image (size {size}); GVSL works on 3D volumes. "
            "For DICOM, open the folder that holds the whole series, not a single slice."
        )
    if dim == 4 and size[3] != 1:
        raise VolumeReadError(
            f"{path}: it is a 4D image (size {size}, e.g. a time series or multi-channel stack); "
            "GVSL needs one 3D volume. Extract the time point or channel you want first."
        )
    if dim not in (3, 4):
        raise VolumeReadError(f"{path}: it is a {dim}D image (size {size}); GVSL needs a 3D volume.")
    if 1 in size[:3]:
        # A single slice stored as 3D: the 3D network, the 9^3 NCC window and trilinear
        # resampling all need extent along every axis, so treat it as the 2D image it is.
        raise VolumeReadError(
            f"{path}: the volume is a single slice (size {size[:3]}, x, y, z); GVSL needs a 3D volume "
            "with at least 2 voxels along every axis. For DICOM, open the folder that holds the whole series."
        )


def _squeeze_to_3d(img: sitk.Image, path: Path) -> sitk.Image:
    """Bring an image to 3D scalar form or explain why it cannot be used."""
    size = img.GetSize()
    _check_shape(path, img.GetDimension(), size, img.GetNumberOfComponentsPerPixel())
    if img.GetDimension() == 4:
        # A 3D scan saved with a singleton time axis (common for NIfTI/MHA exports): drop it.
        img = sitk.Extract(
            img, list(size[:3]) + [0], [0, 0, 0, 0], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX
        )
    return img


READ_BYTES_PER_VOXEL = 16
"""Peak memory per voxel of reading a volume: ITK's buffer (up to 8 bytes a voxel), the array
copied from it and a float32 copy. Commands that do more with it pass their own figure."""


def _read_file(
    path: Path, bytes_per_voxel: int = READ_BYTES_PER_VOXEL, purpose: str = "reading it"
) -> tuple[sitk.Image, tuple[np.ndarray, np.ndarray] | None]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    read_quietly(
        reader.ReadImageInformation,
        lambda why: (
            f"{path}: not a readable image ({why}). Use a format SimpleITK reads "
            "(.nii, .nii.gz, .mha, .mhd, .nrrd, DICOM) and check the file is not damaged."
        ),
    )
    # Check the header before loading voxels: a 4D or RGB file may be large, and a header may
    # declare more voxels than memory holds (a few MB of gzip can declare 1100^3).
    _check_shape(path, reader.GetDimension(), tuple(reader.GetSize()), reader.GetNumberOfComponents())
    check_volume_fits(path, tuple(reader.GetSize()), bytes_per_voxel, purpose)
    nonfinite = scan_nifti(path) if _has_suffix(path, (".nii", ".nii.gz")) else None
    img = read_quietly(
        reader.Execute,
        lambda why: (
            f"{path}: the image data could not be read ({why}); the file is probably "
            "truncated or corrupt. Re-export or re-download it."
        ),
    )
    return img, nonfinite


def read_volume(
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    series_option: str = "series_uid",
    bytes_per_voxel: int = READ_BYTES_PER_VOXEL,
    purpose: str = "reading it",
) -> Volume:
    """Read a 3D scalar volume from any file SimpleITK reads, or from a DICOM series folder.

    Files: NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD and anything else SimpleITK
    opens. A folder is read as a DICOM series; when it holds several series the one with
    most slices is read (a warning is logged) unless ``series_uid`` names one, and
    ``meta["dicom"]`` records the chosen and the other series UIDs, the modality and the
    description (``series_option`` is how the warning tells to choose another: the command
    line passes its option's name). The voxels keep their stored numeric type and ``Volume.dtype`` names it. A
    4D file with a single time point is squeezed to 3D. Every unusable input (missing,
    not an image, truncated, 2D or single-slice, 4D, multi-component, zero-size, all-NaN)
    raises :class:`VolumeReadError` naming the file; a constant volume is valid data and is
    returned (normalisation deals with it). NaN voxels in a partly-NaN volume are kept and
    counted in ``meta["nan_voxels"]``. A file whose header declares more voxels than memory
    holds at ``bytes_per_voxel`` (what the caller's ``purpose``, e.g. "matching onto it",
    needs per voxel) is refused before its voxels are read
    (:class:`~gvsl_app.memory.MemoryEstimateError`, with the estimate).
    """
    path = Path(path)
    if not path.exists():
        hint = " (the parent folder does not exist either)" if not path.parent.exists() else ""
        raise VolumeReadError(f"{path}: no such file or folder{hint}; check the path.")
    meta: dict = {}
    nonfinite = None
    if path.is_dir():
        img, meta["dicom"] = read_dicom_series(
            path, series_uid, series_option, lambda size: check_volume_fits(path, size, bytes_per_voxel, purpose)
        )
    else:
        if series_uid is not None:
            logger.warning("%s is a file, not a DICOM folder: %s %r is ignored", path, series_option, series_uid)
        img, nonfinite = _read_file(path, bytes_per_voxel, purpose)
    img = _squeeze_to_3d(img, path)
    if "complex" in img.GetPixelIDTypeAsString():
        raise VolumeReadError(f"{path}: the image is complex-valued; GVSL needs real grey values (use the magnitude).")
    vol = volume_from_sitk(img, source=str(path))
    arr = vol.array
    if nonfinite is not None and arr.dtype.kind == "f" and nonfinite[0].max() < arr.size:
        arr.reshape(-1)[nonfinite[0]] = nonfinite[1]  # undo the NIfTI reader's NaN -> 0
    if arr.dtype.kind == "f":
        nan = np.isnan(arr)
        n_nan = int(nan.sum())
        if n_nan == arr.size:
            raise VolumeReadError(f"{path}: every voxel is NaN; the file holds no image data. Re-export it.")
        if n_nan:
            logger.warning("%s: %d of %d voxels are NaN", path, n_nan, arr.size)
        meta["nan_voxels"] = n_nan
    vol.meta.update(meta)
    return vol


def read_labels(path: str | os.PathLike, reference: Volume | None = None) -> Volume:
    """Read a label map (integer values), optionally checking it lies on ``reference``'s grid.

    Integer files are returned with their stored integer type. Float files whose values are
    all integral (many tools save masks as float) are converted to the smallest integer type
    that holds them; a fractional value means the file is an image or an interpolated
    (linearly resampled) label map, which would corrupt every Dice and overlay, so it is an
    error, as is NaN. With ``reference``, the label map must have the same shape and the
    same geometry (spacing relative tolerance ``GEOMETRY_RTOL``, origin within
    ``GEOMETRY_RTOL`` of a voxel, direction cosines within ``GEOMETRY_RTOL``); otherwise the
    error names both files and the differing property.
    """
    vol = read_volume(path)
    path = Path(path)
    arr = vol.array
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise VolumeReadError(f"{path}: the label map contains NaN values; labels must be integers.")
        rounded = np.rint(arr)
        bad = np.abs(arr - rounded) > 1e-3
        if bad.any():
            raise VolumeReadError(
                f"{path}: the label map has non-integral values (e.g. {float(arr[bad].flat[0]):g}); it looks like an "
                "image or a linearly interpolated label map. Labels must be integers; resample labels with "
                "nearest-neighbour interpolation."
            )
        lo, hi = (int(rounded.min()), int(rounded.max()))
        vol = dataclasses.replace(vol, array=rounded.astype(_label_dtype(lo, hi)))  # dtype keeps the file's type
    elif arr.dtype.kind == "b":
        vol = dataclasses.replace(vol, array=arr.astype(np.uint8))
    elif arr.dtype.kind not in "iu":
        raise VolumeReadError(f"{path}: pixel type {arr.dtype} cannot hold labels; labels must be integers.")
    if vol.array.dtype.kind in "if" and vol.array.size and int(vol.array.min()) < 0:
        raise VolumeReadError(
            f"{path}: the label map has negative values (minimum {int(vol.array.min())}); labels "
            "are 0 for background and positive integers for structures."
        )
    vol.meta.pop("nan_voxels", None)
    if reference is not None:
        diffs = geometry_differences(vol, reference)
        if diffs:
            raise VolumeReadError(
                f"label map {path} does not lie on the grid of image {reference.source or '(in memory)'}: "
                + "; ".join(diffs)
                + ". Use the label map made for this image, or resample it onto the image grid with "
                "nearest-neighbour interpolation (preprocess.resample_to(..., is_label=True))."
            )
    return vol

"""NIfTI specifics that ITK's reader and writer get wrong or slow: a fast gzip, a voxel scan
that finds truncated files and the NaN voxels ITK turns into zeros, and a vector field
written in pieces.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import types
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from gvsl_app.io.itk_errors import VolumeReadError

_gzip: types.ModuleType
_GzipError: type[Exception]
try:  # Intel ISA-L's gzip: same format, deflates a float volume ~15x and inflates ~3x faster
    from isal import igzip as _gzip

    # isal's stub declares ``error: Exception`` (an instance); at runtime it is the exception class.
    from isal.isal_zlib import error as _GzipError  # type: ignore[assignment]
except ImportError:  # pragma: no cover - isal ships wheels for the platforms we support
    _gzip, _GzipError = gzip, zlib.error

#: True when ``.nii.gz`` files are deflated by ISA-L: level 1 then costs about what storing does.
FAST_GZIP = _gzip is not gzip


def _gzip_level(level: int) -> int:
    """``level`` as the gzip in use takes it: ISA-L has levels 0-3, so a higher level means 3
    and a negative one (zlib's "default") its default, 2.
    """
    if FAST_GZIP:
        return 2 if level < 0 else min(level, 3)
    return level


def gzip_file(src: Path, dst: Path, level: int = 1) -> None:
    """Write ``src`` to ``dst`` as one gzip member (at :func:`_gzip_level` of ``level``)."""
    with open(src, "rb") as fin, _gzip.open(dst, "wb", compresslevel=_gzip_level(level)) as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)


def write_vector_nifti(
    field: np.ndarray,
    index_to_physical: np.ndarray,
    path: Path,
    level: int = 1,
    slab: int = 16,
) -> None:
    """Write a ``(z, y, x, 3)`` vector field as the float64 NIfTI vector image SimpleITK writes
    (intent ``vector``, dimensions x, y, z, 1, 3, components stored one after the other, the
    vectors as they are), ``slab`` slices at a time: SimpleITK's writer needs a float64 copy of
    the field and then a component-major copy of that (3.8 GB for a 512 x 512 x 300 map held in
    1 GB of float32). ``index_to_physical`` is the grid's 4x4 (z, y, x) -> ITK (x, y, z) point
    matrix; ``.gz`` paths are deflated at ``level`` (:func:`gzip_file`'s levels).
    """
    import nibabel as nib

    if field.ndim != 4 or field.shape[-1] != 3:
        raise ValueError(f"{path.name}: a vector field is (z, y, x, 3), got shape {field.shape}")
    depth, height, width = field.shape[:3]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ index_to_physical  # ITK's LPS points, NIfTI's RAS
    affine = ras.copy()
    affine[:3, :3] = ras[:3, 2::-1]  # NIfTI's index order is (x, y, z)
    header = nib.Nifti1Header()
    header.set_data_shape((width, height, depth, 1, 3))
    header.set_data_dtype(np.float64)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_intent("vector")
    header.set_xyzt_units("mm", "sec")
    header["vox_offset"] = 352
    gz = path.name.lower().endswith(".gz")
    with _gzip.open(path, "wb", compresslevel=_gzip_level(level)) if gz else open(path, "wb") as fh:
        fh.write(header.binaryblock)
        fh.write(b"\0" * (352 - len(header.binaryblock)))  # no extensions
        for c in range(3):
            for z0 in range(0, depth, slab):
                fh.write(np.ascontiguousarray(field[z0 : z0 + slab, :, :, c], dtype="<f8").tobytes())


def scan_nifti(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Refuse a truncated NIfTI file and find its non-finite voxels.

    Two silent behaviours of ITK's NIfTI reader (nifti1_io) need this: a truncated file (a
    partial download, a full disk) is filled up with zeros, so half a scan would look
    valid; and NaN/inf voxels of float data are replaced by 0, so an all-NaN file would
    look like a constant one and NaN voxels (outside a reconstruction field of view, say)
    would become plausible grey values. We compare the data size the header promises with
    what the file holds, decompressing ``.nii.gz`` as a stream so a cut-off gzip stream is
    detected too, and return ``(flat indices, values)`` of the non-finite float voxels (in
    file order, which is ITK's buffer order) so the caller can put them back; ``None`` when
    there are none or the header is not NIfTI-1/2.
    """
    gz = path.name.lower().endswith(".gz")
    try:
        with _gzip.open(path, "rb") if gz else open(path, "rb") as fh:
            layout = _read_layout(fh.read(540), path)
            if layout is None:
                return None  # not a NIfTI header we understand: let ITK decide
            if layout.ftype is None and not gz:
                total, bad = path.stat().st_size - layout.offset, _NonFinite()
            else:
                fh.seek(layout.offset)
                total, bad = _scan_voxels(fh, layout)
                if gz and total >= layout.n_bytes:
                    while fh.read(1 << 20):  # reach the gzip trailer: detects a cut-off stream
                        pass
    except (EOFError, OSError, zlib.error, _GzipError) as exc:
        raise VolumeReadError(
            f"{path}: the compressed data is truncated or corrupt ({exc}); re-export or re-download the file."
        ) from None
    if total < layout.n_bytes:
        raise VolumeReadError(
            f"{path}: the file is truncated ({max(total, 0)} of {layout.n_bytes} bytes of image data); "
            "re-export or re-download it."
        )
    if not bad.idx:
        return None
    return np.concatenate(bad.idx), np.concatenate(bad.val)


@dataclass(frozen=True)
class _Layout:
    """Where a NIfTI file's voxels lie and what they are: byte order, data offset and size, float type."""

    endian: str
    offset: int
    n_bytes: int
    ftype: str | None  # "f4" or "f8" for float data (scanned for non-finite values), else None


@dataclass
class _NonFinite:
    """Flat indices and values of the non-finite voxels found, chunk by chunk."""

    idx: list[np.ndarray] = field(default_factory=list)
    val: list[np.ndarray] = field(default_factory=list)


def _read_layout(head: bytes, path: Path) -> _Layout | None:
    """The voxel layout a NIfTI-1 or -2 header promises; ``None`` for a header we do not understand."""
    if len(head) < 348:
        raise VolumeReadError(f"{path}: the NIfTI header is incomplete (file truncated); re-export or re-download it.")
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size in (348, 540):
            break
    else:
        return None
    if size == 348:
        dims = struct.unpack(endian + "8h", head[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
        offset = int(struct.unpack(endian + "f", head[108:112])[0])
    else:
        dims = struct.unpack(endian + "8q", head[16:80])
        datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
        offset = struct.unpack(endian + "q", head[168:176])[0]
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        return None
    n_vox = int(np.prod([max(int(d), 1) for d in dims[1 : ndim + 1]], dtype=np.int64))
    n_bytes = n_vox * max(int(bitpix), 8) // 8
    return _Layout(endian, max(int(offset), size), n_bytes, {16: "f4", 64: "f8"}.get(int(datatype)))


def _scan_voxels(fh: BinaryIO, layout: _Layout) -> tuple[int, _NonFinite]:
    """Read the voxel data from the current position: bytes found, and the non-finite float voxels."""
    ftype, endian, n_bytes = layout.ftype, layout.endian, layout.n_bytes
    item = np.dtype(endian + ftype).itemsize if ftype else 1
    total, pending, bad = 0, b"", _NonFinite()
    while total < n_bytes and (chunk := fh.read(min(1 << 22, n_bytes - total))):
        start_vox = (total - len(pending)) // item
        total += len(chunk)
        if ftype:
            data = pending + chunk
            usable = len(data) - len(data) % item
            vals = np.frombuffer(data[:usable], dtype=endian + ftype)
            pending = data[usable:]
            idx = np.flatnonzero(~np.isfinite(vals))
            if idx.size:
                bad.idx.append(idx + start_vox)
                bad.val.append(vals[idx])
    return total, bad

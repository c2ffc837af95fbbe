"""Checking that a written image file holds all of the image: its header read back, its data's size."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from gvsl_app.io.itk_errors import VolumeReadError, first_line
from gvsl_app.io.nifti import scan_nifti


def _gunzipped_size(path: Path) -> int:
    import gzip

    total = 0
    with gzip.open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            total += len(chunk)
    return total


def _header_end(path: Path, marker: bytes) -> int | None:
    """Where the data of a one-file MetaImage (``.mha``) or NRRD starts: after ``marker``."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    at = head.find(marker)
    return None if at < 0 else at + len(marker)


def verify_written(img: sitk.Image, written: str | os.PathLike) -> None:
    """Check that ``written`` holds all of ``img``: its header reads back (SimpleITK's
    ``ImageFileReader.ReadImageInformation``) with the image's size and components, and the
    file (or its data file: the ``.raw`` an ``.mhd`` names) holds every byte of the voxels.
    An :class:`~gvsl_app.io.outputs.IncompleteWriteError` names what is missing.
    """
    expected = sitk.GetArrayViewFromImage(img).nbytes
    verify_layout(written, tuple(img.GetSize()), img.GetNumberOfComponentsPerPixel(), expected)


def verify_layout(written: str | os.PathLike, size: tuple[int, ...], components: int, expected: int) -> None:
    """:func:`verify_written` for an image known by its size (x, y, z), components per voxel
    and data bytes rather than held in memory (one written in pieces).
    """
    from gvsl_app.io.outputs import IncompleteWriteError

    written = Path(written)
    name = written.name.lower()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(written))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise IncompleteWriteError(
            f"{written.name}: the written header cannot be read back ({first_line(exc)}); is the disk full?"
        ) from None
    got, comps = tuple(reader.GetSize()), reader.GetNumberOfComponents()
    if got != tuple(size) or comps != components:
        raise IncompleteWriteError(
            f"{written.name}: the written header says {got} x {comps} components, "
            f"not {tuple(size)} x {components}; is the disk full?"
        )
    if name.endswith((".nii", ".nii.gz")):
        try:
            scan_nifti(written)  # the data size the header promises against what the file holds
        except (VolumeReadError, EOFError, OSError) as exc:
            detail = first_line(exc).replace(f"{written}: ", "").split(";")[0]  # without the reader's advice
            raise IncompleteWriteError(f"{written.name}: written incompletely ({detail}); is the disk full?") from None
        return
    if name.endswith(".gz"):
        try:
            have = _gunzipped_size(written)
        except (EOFError, OSError) as exc:
            raise IncompleteWriteError(f"{written.name}: written incompletely ({exc}); is the disk full?") from None
        where, need = written, expected
    elif name.endswith(".mhd"):
        text = written.read_text(errors="replace")
        data = next((ln.split("=", 1)[1].strip() for ln in text.splitlines() if ln.startswith("ElementDataFile")), "")
        where = written.parent / data
        have, need = (where.stat().st_size if where.is_file() else 0), expected
    elif name.endswith((".mha", ".nrrd")):
        start = _header_end(written, b"ElementDataFile = LOCAL\n" if name.endswith(".mha") else b"\n\n")
        where, have = written, written.stat().st_size
        need = expected + (start or 0)
    else:  # other formats: every file written for it together
        where = written
        have, need = sum(f.stat().st_size for f in written.parent.iterdir() if f.is_file()), expected
    if have < need:
        raise IncompleteWriteError(f"{where.name}: only {have} of {need} bytes were written; is the disk full?")

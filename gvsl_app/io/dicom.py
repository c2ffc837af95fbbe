"""Reading one DICOM series from a folder, with the checks ITK's series reader leaves out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from gvsl_app.io.itk_errors import VolumeReadError, quiet_itk, read_quietly

logger = logging.getLogger(__name__)

# Slice gaps count as uneven when their range exceeds ten times the grid-comparison
# tolerance (1e-3 of the median gap, at least 1e-3 mm): 1 % of the gap, 0.01 mm at least.
_GAP_TOL = 1e-3
_GAP_FACTOR = 10


def _dicom_meta(reader: sitk.ImageSeriesReader, tag: str, index: int = 0) -> str:
    try:
        if reader.HasMetaDataKey(index, tag):
            return reader.GetMetaData(index, tag).strip()
    except RuntimeError:
        pass
    return ""


def holds_dicom_series(folder: Path) -> bool:
    """True when ``folder`` itself holds the slices of at least one DICOM series.

    Cheap for a folder of other volumes: only files ending in ``.dcm`` or ``.ima`` (Siemens)
    or with no ending (how scanners and PACS exports name slices) make GDCM scan the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    names = [p.name.lower() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not any(n.endswith((".dcm", ".ima")) or "." not in n for n in names):
        return False
    with quiet_itk():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def _describe(uid: str, files: list[str]) -> str:
    """``UID (N slices, "description")`` of one series, from its first file's header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    description = ""
    try:
        with quiet_itk():
            reader.ReadImageInformation()
        if reader.HasMetaDataKey("0008|103e"):
            description = reader.GetMetaData("0008|103e").strip()
    except RuntimeError:
        pass
    return f"{uid} ({len(files)} slices" + (f', "{description}")' if description else ")")


def read_dicom_series(
    folder: Path,
    series_uid: str | None,
    option: str = "series_uid",
    check_size: Callable[[tuple[int, int, int]], None] | None = None,
) -> tuple[sitk.Image, dict]:
    """Read one DICOM series from a folder; several series -> the one with most slices.

    ``series_uid`` names the series to read. When the folder holds several series and none
    is named, a warning lists them all (UID, number of slices, description) and says how to
    choose another with ``option`` (the caller's name for it, e.g. ``--series`` on the
    command line). ``check_size`` is called with the series' size (x, y, z: the first slice's
    rows and columns, its frames times the number of files) before the voxels are read, and
    may refuse it (a memory estimate).
    """
    with quiet_itk():
        uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not uids:
        raise VolumeReadError(
            f"{folder}: the folder holds no DICOM series (subfolders are not searched). Point to the folder that "
            "contains the .dcm slices, or to an image file (.nii.gz, .mha, .nrrd)."
        )
    files = {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in uids}
    if series_uid is not None:
        if series_uid not in files:
            raise VolumeReadError(
                f"{folder}: no DICOM series with UID {series_uid!r}; the folder holds: "
                + ", ".join(_describe(u, files[u]) for u in uids)
            )
        chosen = series_uid
    else:
        chosen = max(uids, key=lambda u: (len(files[u]), u))  # UID tie-break: deterministic
    others = [u for u in uids if u != chosen]
    if others and series_uid is None:
        logger.warning(
            "%s holds %d DICOM series; reading %s, the one with most slices. Others: %s. Choose another with %s UID.",
            folder,
            len(uids),
            _describe(chosen, files[chosen]),
            ", ".join(_describe(u, files[u]) for u in others),
            option,
        )
    if check_size is not None:
        head = sitk.ImageFileReader()
        head.SetFileName(files[chosen][0])
        read_quietly(
            head.ReadImageInformation,
            lambda why: f"{folder}: DICOM series {chosen} could not be read ({why})",
        )
        size = tuple(head.GetSize()) + (1, 1)
        check_size((int(size[0]), int(size[1]), int(size[2]) * len(files[chosen])))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[chosen])
    reader.MetaDataDictionaryArrayUpdateOn()
    img = read_quietly(
        reader.Execute,
        lambda why: (
            f"{folder}: DICOM series {chosen} could not be read ({why}); "
            "the slices may be incomplete or use an unsupported transfer syntax."
        ),
    )
    dicom = {
        "series_uid": chosen,
        "other_series_uids": others,
        "n_files": len(files[chosen]),
        "modality": _dicom_meta(reader, "0008|0060"),
        "series_description": _dicom_meta(reader, "0008|103e"),
        "patient_id": _dicom_meta(reader, "0010|0020"),
    }
    dicom["nonuniform_slice_spacing"] = _nonuniform_spacing(reader, len(files[chosen]), img, folder)
    return img, dicom


def _nonuniform_spacing(reader: sitk.ImageSeriesReader, n: int, img: sitk.Image, folder: Path) -> bool:
    """Warn when slice positions are not evenly spaced (missing slices, variable thickness).

    ITK assumes one slice spacing for the whole series, so gaps silently stretch anatomy;
    we cannot fix that here but the user must know the geometry is approximate.
    """
    if n < 3:
        return False
    normal = np.asarray(img.GetDirection(), float).reshape(3, 3)[:, 2]
    pos = []
    for i in range(n):
        ipp = _dicom_meta(reader, "0020|0032", i)
        try:
            pos.append(float(np.dot(normal, [float(v) for v in ipp.split("\\")])))
        except ValueError:
            return False
    gaps = np.diff(np.sort(pos))
    if gaps.size and np.ptp(gaps) > max(_GAP_TOL, _GAP_TOL * abs(float(np.median(gaps)))) * _GAP_FACTOR:
        logger.warning(
            "%s: DICOM slice spacing is not uniform (gaps %.3g to %.3g mm); the volume uses %.3g mm, "
            "so distances along the slice axis are approximate (missing slices?).",
            folder,
            gaps.min(),
            gaps.max(),
            img.GetSpacing()[2],
        )
        return True
    return False

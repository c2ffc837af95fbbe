"""Reading one DICOM series from a folder, with the checks ITK's series reader leaves out."""

from __future__ import annotations

import logging
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


def read_dicom_series(folder: Path, series_uid: str | None) -> tuple[sitk.Image, dict]:
    """Read one DICOM series from a folder; several series -> the one with most slices."""
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
                + ", ".join(f"{u} ({len(files[u])} slices)" for u in uids)
            )
        chosen = series_uid
    else:
        chosen = max(uids, key=lambda u: (len(files[u]), u))  # UID tie-break: deterministic
    others = [u for u in uids if u != chosen]
    if others and series_uid is None:
        logger.warning(
            "%s holds %d DICOM series; reading %s (%d slices), the one with most slices. Others: %s. "
            "Pass series_uid to choose another.",
            folder,
            len(uids),
            chosen,
            len(files[chosen]),
            ", ".join(f"{u} ({len(files[u])} slices)" for u in others),
        )
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

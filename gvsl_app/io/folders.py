"""Data folders: which files are volumes, case names, label maps and the train/val/test split.

A data folder (docs/guide/data.md): ``images/NAME.<ext>`` (any format SimpleITK reads, or a
DICOM series folder), ``labels/NAME.<ext>`` for segmentation, ``labels.csv``
(``name,label``) for classification. A folder without ``images/`` is read as the images
folder itself (pre-training needs no labels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: File endings read as volumes (longest first); folders are read as DICOM series.
VOLUME_SUFFIXES = (
    ".nii.gz",
    ".gipl.gz",
    ".img.gz",
    ".nii",
    ".mha",
    ".mhd",
    ".nrrd",
    ".nhdr",
    ".hdr",
    ".vtk",
    ".gipl",
    ".tif",
    ".tiff",
    ".dcm",
)


class DatasetError(ValueError):
    """A data folder or data set that cannot be used; the message says what and how to fix it."""


def volume_suffix(name: str) -> str | None:
    """The volume ending of a file name (``.nii.gz``, ``.mha``...), or None for other files."""
    low = name.lower()
    for suf in VOLUME_SUFFIXES:
        if low.endswith(suf):
            return suf
    return None


def images_folder(folder: str | os.PathLike) -> Path:
    """``folder/images`` when it exists, else ``folder`` itself; errors when missing."""
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(f"{folder}: no such data folder; check the path.")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: is a file, a data folder is expected (with images/NAME.nii.gz inside).")
    sub = folder / "images"
    return sub if sub.is_dir() else folder


def list_volume_files(directory: str | os.PathLike) -> dict[str, Path]:
    """``{name: path}`` of the volumes in ``directory`` (name = file name without its ending).

    Hidden files and files with other endings (``.raw`` data of ``.mhd`` headers, ``.csv``...)
    are skipped; sub-folders are taken as DICOM series (except ``images``/``labels``).
    Two files with the same name (``a.nii`` and ``a.nii.gz``) are an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such folder.")
    out: dict[str, Path] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if entry.name in ("images", "labels"):
                continue
            name = entry.name
        else:
            suf = volume_suffix(entry.name)
            if suf is None:
                continue
            name = entry.name[: -len(suf)]
        if name in out:
            raise DatasetError(
                f"{directory}: two volumes are named {name!r} ({out[name].name} and {entry.name}); keep one."
            )
        out[name] = entry
    return out


def require_volumes(directory: Path) -> dict[str, Path]:
    """:func:`list_volume_files`, with an error naming the endings looked for when there are none."""
    files = list_volume_files(directory)
    if not files:
        raise DatasetError(
            f"{directory}: no volumes found (looked for files ending in "
            f"{', '.join(VOLUME_SUFFIXES)} and DICOM series folders)."
        )
    return files


def label_files(folder: Path, names: Sequence[str]) -> dict[str, Path]:
    """``{name: label path}`` from ``folder/labels``; every name must have one."""
    lab_dir = Path(folder) / "labels"
    if not lab_dir.is_dir():
        raise DatasetError(
            f"{folder}: no labels/ folder; segmentation needs labels/NAME.<ext> for every images/NAME.<ext>."
        )
    labels = list_volume_files(lab_dir)
    missing = [n for n in names if n not in labels]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DatasetError(
            f"{folder}: {len(missing)} image(s) without a label map in labels/: {shown}. "
            "Add the label maps (same names) or remove those images."
        )
    return {n: labels[n] for n in names}


def list_cases(folder: str | os.PathLike, need_labels: bool = False) -> list[str]:
    """Sorted case names of a data folder; with ``need_labels`` every one must have a label map."""
    images = require_volumes(images_folder(folder))
    names = sorted(images)
    if need_labels:
        label_files(Path(folder), names)
    return names


def split_names(
    names: Sequence[str], val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str], list[str]]:
    """Deterministic train/validation/test split, independent of the order of ``names``.

    Counts are ``round(n * fraction)``, at least one when the fraction is positive and there
    are cases to spare; training always keeps at least one case. Each part is returned sorted.
    """
    for f, what in ((val_fraction, "val_fraction"), (test_fraction, "test_fraction")):
        if not 0.0 <= float(f) < 1.0:
            raise ValueError(f"{what} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    uniq = sorted(set(names))
    if len(uniq) != len(list(names)):
        raise ValueError("split_names: names must be unique")
    n = len(uniq)
    order = [uniq[i] for i in np.random.default_rng(int(seed)).permutation(n)]

    def count(f: float, available: int) -> int:
        k = int(round(n * f))
        if f > 0 and k == 0:
            k = 1
        return max(0, min(k, available))

    n_test = count(test_fraction, n - 1)
    n_val = count(val_fraction, n - 1 - n_test)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return sorted(train), sorted(val), sorted(test)

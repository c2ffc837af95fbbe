"""Whole cohorts of label maps: pair predictions with references by case name, compare each
structure of each case, and write one table (CSV) plus a summary.

Works for segmentations made anywhere (nnU-Net, TotalSegmentator, MONAI bundles, manual
corrections): ``gvsl evaluate-labels PRED REF`` is the command.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gvsl_app.io.folders import DatasetError, list_volume_files
from gvsl_app.io.volume import Volume
from gvsl_app.services.label_metrics import METRIC_COLUMNS, StructureMetrics, compare_label_maps, summarise_structures

__all__ = ["CaseResult", "pair_cases", "evaluate_cohort", "write_table", "TABLE_COLUMNS"]

TABLE_COLUMNS = ("case", *METRIC_COLUMNS)


@dataclass
class CaseResult:
    """One case: its structures' rows and what was done to its files."""

    case: str
    rows: list[StructureMetrics]
    notes: list[str] = field(default_factory=list)


def pair_cases(pred: str | os.PathLike, ref: str | os.PathLike | None) -> list[tuple[str, Path, Path | None]]:
    """``(case, prediction file, reference file or None)`` for a file or a folder of label maps.

    Folders are paired by case name (the file name without its ending, so ``a.nii.gz`` pairs
    with ``a.mha``); a prediction without a reference, or a reference without a prediction,
    is an error that lists them, so a partial table is never mistaken for a whole one.
    """
    pred, ref = Path(pred), (Path(ref) if ref is not None else None)
    if not pred.exists():
        raise DatasetError(f"{pred}: no such file or folder")
    if ref is not None and not ref.exists():
        raise DatasetError(f"{ref}: no such file or folder")
    if pred.is_file():
        if ref is not None and ref.is_dir():
            raise DatasetError(f"{pred} is a file but the reference {ref} is a folder: give two files or two folders")
        return [(pred.name, pred, ref)]
    preds = list_volume_files(pred)
    if not preds:
        raise DatasetError(f"{pred}: no label maps found (.nii.gz, .mha, .nrrd, ...)")
    if ref is None:
        return [(name, path, None) for name, path in preds.items()]
    if ref.is_file():
        raise DatasetError(f"{pred} is a folder but the reference {ref} is a file: give two files or two folders")
    refs = list_volume_files(ref)
    missing_ref = sorted(set(preds) - set(refs))
    missing_pred = sorted(set(refs) - set(preds))
    if missing_ref or missing_pred:
        parts = []
        if missing_ref:
            parts.append(f"no reference in {ref} for {', '.join(missing_ref[:5])}")
        if missing_pred:
            parts.append(f"no label map in {pred} for {', '.join(missing_pred[:5])}")
        raise DatasetError(
            "; ".join(parts) + " (cases are paired by file name without the ending; move or rename the extra files)"
        )
    return [(name, preds[name], refs[name]) for name in sorted(preds)]


def _read_pair(pred: Path, ref: Path | None, resample: bool) -> tuple[Volume, Volume | None, list[str]]:
    from gvsl_app.io.images import read_labels

    notes: list[str] = []
    if ref is None:
        return read_labels(pred), None, notes
    reference = read_labels(ref)
    if not resample:
        return read_labels(pred, reference=reference), reference, notes  # refuses another grid, saying why
    label_map = read_labels(pred)
    from gvsl_app.io.geometry import same_geometry

    if label_map.shape != reference.shape or not same_geometry(label_map, reference):
        from gvsl_app.data.preprocess import resample_to

        label_map = resample_to(label_map, reference, is_label=True)
        notes.append(f"{pred.name} resampled onto the reference grid (nearest neighbour)")
    return label_map, reference, notes


def evaluate_cohort(
    pairs: list[tuple[str, Path, Path | None]],
    names: dict[int, str] | None = None,
    resample: bool = False,
    distances: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[CaseResult]:
    """Compare every case's structures (:func:`~gvsl_app.services.label_metrics.compare_label_maps`).

    ``resample`` puts a prediction on another grid onto its reference's with nearest
    neighbour (noted in the case's notes); without it such a pair is an error naming both
    files and what differs. ``progress(done, total, case)`` is called after each case.
    """
    out = []
    for k, (case, pred, ref) in enumerate(pairs):
        label_map, reference, notes = _read_pair(pred, ref, resample)
        out.append(CaseResult(case, compare_label_maps(label_map, reference, names, distances=distances), notes))
        if progress is not None:
            progress(k + 1, len(pairs), case)
    return out


def write_table(results: list[CaseResult], path: str | os.PathLike) -> Path:
    """One CSV row per case and structure (:data:`TABLE_COLUMNS`); undefined values are empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(TABLE_COLUMNS))
        writer.writeheader()
        for res in results:
            for row in res.rows:
                writer.writerow({"case": res.case, **{k: ("" if v is None else v) for k, v in row.row().items()}})
    return path


def structure_summary(results: list[CaseResult]) -> dict[str, dict]:
    """Per structure (by name): mean/std/n of each metric over the cases where it is defined."""
    by_name: dict[str, list[StructureMetrics]] = {}
    for res in results:
        for row in res.rows:
            by_name.setdefault(row.name, []).append(row)
    return {name: summarise_structures(rows) for name, rows in by_name.items()}

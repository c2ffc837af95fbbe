"""``labels.csv`` of a classification data set: reading it and checking its classes.

A row is ``name,label`` (an optional ``name,label`` header, names with or without their
file ending, ``#`` comments and blank lines skipped). The classification head is binary,
so the file must name exactly two classes.
"""

from __future__ import annotations

import csv
from pathlib import Path

from gvsl_app.io.folders import DatasetError, volume_suffix


def read_label_csv(path: Path) -> list[tuple[str, str]]:
    """The ``(name, label)`` rows of ``path``; a missing file, a short row, no rows or a case
    listed twice is a :class:`DatasetError` naming the file and line.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: missing; a classification data set needs labels.csv with rows name,label.")
    rows: list[tuple[str, str]] = []
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise DatasetError(f"{path}, line {lineno}: expected 'name,label', got {','.join(row)!r}.")
            name, label = row[0].strip(), row[1].strip()
            if not rows and name.lower() == "name":
                continue  # header
            suf = volume_suffix(name)
            rows.append((name[: -len(suf)] if suf else name, label))
    if not rows:
        raise DatasetError(f"{path}: no rows; expected lines 'name,label'.")
    seen = set()
    for name, _ in rows:
        if name in seen:
            raise DatasetError(f"{path}: case {name!r} is listed twice.")
        seen.add(name)
    return rows


def binary_classes(path: Path, rows: dict[str, str]):
    """The two classes of a binary ``labels.csv`` and the map from label text to 0/1.

    The classification head is binary (one logit, AUC), so the file must hold exactly two
    classes: ``0``/``1``, or two names (mapped to 0/1 in sorted order). A blank label, a
    number other than 0 or 1 (``2.5``, ``-1``), a mix of numbers and names, or a single class
    (AUC undefined) is refused, naming the cases.
    """
    blank = sorted(n for n, v in rows.items() if not v)
    if blank:
        raise DatasetError(f"{path}: no label for case(s) {', '.join(blank[:10])}; every row needs name,label.")
    values = sorted(set(rows.values()))
    numeric = {v for v in values if _is_number(v)}
    if numeric and numeric != set(values):
        raise DatasetError(f"{path}: labels mix numbers and names ({', '.join(values[:6])}); use 0/1 or two names.")
    if numeric:
        bad = sorted(v for v in numeric if v.strip() not in ("0", "1"))
        if bad:
            cases = sorted(n for n, v in rows.items() if v in bad)
            raise DatasetError(
                f"{path}: labels must be 0 or 1 for the binary classification head; found "
                f"{', '.join(bad)} (case(s) {', '.join(cases[:10])})."
            )
    if len(values) != 2:
        raise DatasetError(
            f"{path}: {len(values)} class(es) ({', '.join(values[:6])}); the binary classification "
            "head needs exactly two, each with cases (one class leaves AUC undefined)."
        )
    if numeric:
        return [0, 1], lambda v: int(v)
    index = {c: k for k, c in enumerate(values)}
    return values, index.__getitem__


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

"""ITK-SNAP label description files (``IDX R G B A VIS MSH "LABEL"``): reading, and writing a
:class:`LabelTable` as one that ITK-SNAP imports.
"""

from __future__ import annotations

import os
from pathlib import Path

from gvsl_app.io.label_tables.fields import _is_int_text, _is_number, _rgb, _value
from gvsl_app.io.label_tables.table import RGB, LabelTable, LabelTableError
from gvsl_app.io.label_tables.text import _read_columns


def _read_itksnap(path: Path, text: str) -> LabelTable:
    return _read_columns(path, text, _itksnap_line, "itksnap", 'ITK-SNAP lines IDX R G B A VIS MSH "NAME"')


def _itksnap_line(line: str, at: str) -> tuple[int, str, RGB]:
    # As ITK-SNAP reads it: seven numbers, then the name between the first two double quotes.
    open_q = line.find('"')
    if open_q < 0:
        raise LabelTableError(
            f'{at}: no quoted name; an ITK-SNAP label line is IDX R G B A VIS MSH "NAME", got {line.strip()!r}.'
        )
    close_q = line.find('"', open_q + 1)
    if close_q < 0:
        raise LabelTableError(f"{at}: the label name has no closing double quote: {line.strip()!r}.")
    name = line[open_q + 1 : close_q]
    if line[close_q + 1 :].strip():
        raise LabelTableError(f"{at}: unexpected text after the quoted name: {line[close_q + 1 :].strip()!r}.")
    fields = line[:open_q].split()
    if len(fields) != 7:
        raise LabelTableError(
            f"{at}: expected seven numbers IDX R G B A VIS MSH before the quoted name, got {len(fields)}: "
            f"{line.strip()!r}."
        )
    value = _value(fields[0], at)
    rgb = _rgb(fields[1:4], at)
    if not _is_number(fields[4]) or not 0.0 <= float(fields[4]) <= 1.0:
        raise LabelTableError(f"{at}: opacity {fields[4]!r} is not a number 0-1 (ITK-SNAP's -A- column).")
    for col, flag in (("VIS", fields[5]), ("MSH", fields[6])):
        if not _is_int_text(flag):
            raise LabelTableError(f"{at}: {col} flag {flag!r} is not 0 or 1.")
    return value, name, rgb


_ITKSNAP_HEADER = """\
################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    MSH:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
################################################
"""


def write_label_table(table: LabelTable, path: str | os.PathLike) -> Path:
    """Write ``table`` to ``path`` as an ITK-SNAP label description file (UTF-8), which ITK-SNAP
    imports with *Segmentation > Import Label Descriptions* and :func:`read_label_table` reads
    back unchanged. Label 0 is written transparent and hidden as ITK-SNAP's Clear Label is,
    the others opaque and visible; a label without a colour gets :meth:`LabelTable.color_of`'s.
    A name with a double quote or line break (ITK-SNAP cannot read it), an empty table, or a
    ``.ctbl``/``.csv``/``.tsv``/``.json`` ending (it would be read back as that format) is a
    :class:`LabelTableError`; returns the path written.
    """
    path = Path(path)
    if path.suffix.lower() in (".ctbl", ".csv", ".tsv", ".json"):
        raise LabelTableError(
            f"{path}: an ITK-SNAP label description file is text in its own format; name it .txt, "
            f"not {path.suffix} (it would be read back as that format)."
        )
    if not table.names:
        raise LabelTableError(f"{path}: the table has no labels to write.")
    lines = [_ITKSNAP_HEADER.rstrip("\n")]
    for value, name in table.names.items():
        if '"' in name or "\n" in name or "\r" in name:
            raise LabelTableError(
                f"{path}: label {value} {name!r} has a double quote or line break, which ITK-SNAP cannot read."
            )
        r, g, b = table.color_of(value)
        shown = 0 if value == 0 else 1
        # ITK-SNAP's own column layout, so the file diffs cleanly against ITK-SNAP's exports.
        lines.append(f'{value:5d} {r:5d} {g:4d} {b:4d} {shown:8d} {shown:2d} {shown:2d}    "{name}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

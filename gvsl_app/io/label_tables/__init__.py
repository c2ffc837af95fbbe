"""Label names and colours of a segmentation, from the table files people keep next to it.

Formats read by :func:`read_label_table` (decided by the ending, and by the content where
the ending is ambiguous):

* **ITK-SNAP label description files** (``.txt``, written by *Segmentation > Export Label
  Descriptions*): ``IDX R G B A VIS MSH "LABEL"`` with ``#`` comments, ``A`` a float opacity
  0-1, ``VIS``/``MSH`` 0 or 1 and the name in double quotes (spaces allowed, no quote
  inside). The layout follows ITK-SNAP's own reader and writer
  (``ColorLabelTable::LoadFromFile``/``SaveToFile`` in ``Logic/Common/ColorLabelTable.cxx``).
* **3D Slicer colour tables** (``.ctbl``, and Slicer's ``.txt``): ``value name R G B [A]``
  separated by spaces, ``#`` comments, names without spaces (Slicer writes ``_`` for them),
  ``A`` 0-255 (Slicer developer guide, "Color table file format (.txt, .ctbl)"). FreeSurfer's
  ``FreeSurferColorLUT.txt`` has the same layout. Slicer's *procedural* files (a continuous
  scale, ``# Color procedural file``) are no label table and are refused.
* **CSV/TSV** with a header: a value column (``value``, ``label_value``, ``LabelValue``,
  ``index``, ``id``, or ``label``), a name column (``name``, ``label_name``,
  ``description``, or ``label`` when it is not the value column) and optionally the colour
  as ``r,g,b``/``red,green,blue``/``Color_R,Color_G,Color_B`` (Slicer's CSV colour tables)
  or one ``color``/``colour`` column holding ``#rrggbb`` or ``R G B`` (BIDS ``dseg.tsv``).
  The delimiter (``,``, tab or ``;``) is taken from the header line.
* **JSON**: ``{"1": "LV"}``, ``{"1": {"name": "LV", "color": [255, 0, 0]}}``, a list
  ``[{"value": 1, "name": "LV", "color": "#ff0000"}]``, and the ``"labels"`` member of an
  MSD/nnU-Net ``dataset.json`` (``{"0": "background", ...}``, or nnU-Net v2's inverted
  ``{"background": 0, ...}``).

Every problem is a :class:`LabelTableError` naming the file, the line and what is wrong.
Label 0 (ITK-SNAP's "Clear Label", Slicer's "Background") is kept as given; values are
non-negative integers; colours are RGB 0-255 (opacity and visibility are not kept).
"""

from __future__ import annotations

import os
from pathlib import Path

from gvsl_app.io.folders import volume_suffix
from gvsl_app.io.label_tables.fields import _is_int_text, _is_number
from gvsl_app.io.label_tables.itksnap import _read_itksnap, write_label_table
from gvsl_app.io.label_tables.slicer import _read_slicer
from gvsl_app.io.label_tables.table import RGB, LabelTable, LabelTableError
from gvsl_app.io.label_tables.tabular import _read_delimited, _read_json
from gvsl_app.io.label_tables.text import _comments, _lines, _read_text, _refuse_procedural

__all__ = [
    "RGB",
    "TABLE_CANDIDATES",
    "LabelTable",
    "LabelTableError",
    "find_label_table",
    "read_label_table",
    "write_label_table",
]

#: Where :func:`find_label_table` looks next to ``STEM.nii.gz`` (``{stem}`` = the name without
#: its volume ending), first found wins: tables named after the label map before the
#: folder-wide ones. ``{stem}_ColorTable.ctbl`` is what Slicer writes when it exports a label map.
TABLE_CANDIDATES: tuple[str, ...] = (
    "{stem}.txt",
    "{stem}.ctbl",
    "{stem}_ColorTable.ctbl",
    "{stem}.csv",
    "{stem}.tsv",
    "{stem}.json",
    "labels.txt",
    "label_descriptions.txt",
    "colors.ctbl",
    "labels.csv",
    "labels.json",
)


def read_label_table(path: str | os.PathLike) -> LabelTable:
    """The :class:`LabelTable` in ``path``: an ITK-SNAP label description file, a Slicer colour
    table (``.ctbl``/``.txt``), a CSV/TSV with a header, or JSON, as described in this package;
    ``.txt`` and unknown endings are recognised by their content. A missing or binary file, an
    unknown format, a malformed line (non-integer or negative value, colour outside 0-255, a
    value given twice with different names or colours) or a table without labels is a
    :class:`LabelTableError` naming the file and line.
    """
    path = Path(path)
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_json(path, text)
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, text)
    if suffix == ".ctbl":
        return _read_slicer(path, text)
    stripped = text.lstrip()
    if suffix != ".txt" and stripped[:1] in ("{", "["):
        return _read_json(path, text)
    kind = _detect_text_kind(path, text, allow_delimited=suffix != ".txt")
    if kind == "delimited":
        return _read_delimited(path, text)
    return _read_itksnap(path, text) if kind == "itksnap" else _read_slicer(path, text)


def _detect_text_kind(path: Path, text: str, *, allow_delimited: bool) -> str:
    """``"itksnap"``, ``"slicer"`` or ``"delimited"`` for a text table, from its first data line."""
    _refuse_procedural(path, text)
    comments = _comments(text)
    first = next(iter(_lines(text)), None)
    if first is None:
        raise LabelTableError(f"{path}: no labels found (only comments or blank lines).")
    lineno, line = first
    fields = line.split()
    if '"' in line or (len(fields) >= 8 and all(_is_number(f) for f in fields[:7])):
        return "itksnap"  # eight fields, the last quoted
    if allow_delimited and any(d in line for d in (",", "\t", ";")) and not _is_number(fields[0].split(",")[0]):
        return "delimited"  # a header line such as "value,name,r,g,b"
    if "itk-snap label description" in comments:
        return "itksnap"
    if "color table file" in comments:
        return "slicer"
    if len(fields) >= 2 and _is_int_text(fields[0]) and not _is_number(fields[1]):
        return "slicer"  # "value name R G B A"
    raise LabelTableError(
        f"{path}, line {lineno}: unknown label table format: {line.strip()!r} is neither an ITK-SNAP label "
        'description line (IDX R G B A VIS MSH "NAME") nor a Slicer colour table line (value name R G B A).'
    )


def find_label_table(label_file: str | os.PathLike) -> Path | None:
    """The label table next to the label map ``label_file``, or None: the first existing file of
    :data:`TABLE_CANDIDATES` in its folder, ``{stem}`` being its name without the volume ending
    (``seg`` for ``seg.nii.gz``), so ``seg.txt``, ``seg.ctbl``, ``seg_ColorTable.ctbl``,
    ``seg.csv``, ``seg.tsv``, ``seg.json``, then ``labels.txt``, ``label_descriptions.txt``,
    ``colors.ctbl``, ``labels.csv``, ``labels.json``. The file is found, not read: reading it
    may still fail (a ``labels.csv`` of a classification data set is no label table).
    """
    label_file = Path(label_file)
    suffix = volume_suffix(label_file.name)
    stem = label_file.name[: -len(suffix)] if suffix else label_file.stem
    for pattern in TABLE_CANDIDATES:
        candidate = label_file.parent / pattern.format(stem=stem)
        if candidate.is_file() and candidate != label_file:
            return candidate
    return None

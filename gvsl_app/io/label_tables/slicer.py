"""3D Slicer colour tables (``.ctbl`` and Slicer's ``.txt``, also FreeSurfer's LUT):
``value name R G B [A]`` a line.
"""

from __future__ import annotations

from pathlib import Path

from gvsl_app.io.label_tables.fields import _component, _is_number, _rgb, _value
from gvsl_app.io.label_tables.table import RGB, LabelTable, LabelTableError
from gvsl_app.io.label_tables.text import _read_columns


def _read_slicer(path: Path, text: str) -> LabelTable:
    return _read_columns(path, text, _slicer_line, "slicer", "Slicer colour table lines 'value name R G B A'")


def _slicer_line(line: str, at: str) -> tuple[int, str, RGB]:
    fields = line.split()
    if len(fields) > 6 and not _is_number(fields[2]):
        raise LabelTableError(
            f"{at}: a Slicer colour table name has no spaces (write {'_'.join(fields[1:-4])!r}); "
            f"expected 'value name R G B A', got {line.strip()!r}."
        )
    if len(fields) not in (5, 6):
        raise LabelTableError(f"{at}: expected 'value name R G B A', got {len(fields)} fields: {line.strip()!r}.")
    value = _value(fields[0], at)
    # Slicer strips the ticks a name copied from a MRML scene carries ('name').
    name = fields[1].strip("'") or fields[1]
    rgb = _rgb(fields[2:5], at)
    if len(fields) == 6:
        _component(fields[5], "opacity", at)
    return value, name, rgb

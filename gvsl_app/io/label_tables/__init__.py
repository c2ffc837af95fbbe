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

import colorsys
import csv
import json
import os
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gvsl_app.io.folders import volume_suffix

RGB = tuple[int, int, int]

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


class LabelTableError(ValueError):
    """A label table that cannot be read or written; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class LabelTable:
    """Names and RGB colours (0-255) by label value, read from ``source`` in ``format``.

    Every value has a name; a colour is optional (a JSON ``{"1": "LV"}`` has none), see
    :meth:`color_of`. The mappings are read-only copies sorted by value.
    """

    names: Mapping[int, str]
    colors: Mapping[int, RGB] = field(default_factory=dict)
    source: str = ""
    format: str = ""

    def __post_init__(self) -> None:
        where = self.source or "label table"
        names: dict[int, str] = {}
        for value, name in self.names.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LabelTableError(f"{where}: label value {value!r} is not a non-negative integer.")
            if not isinstance(name, str):
                raise LabelTableError(f"{where}: the name of label {value} is {name!r}, not text.")
            names[value] = name
        colors: dict[int, RGB] = {}
        for value, rgb in self.colors.items():
            if value not in names:
                raise LabelTableError(f"{where}: label {value!r} has a colour but no name.")
            comps = tuple(rgb)
            if len(comps) != 3 or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in comps
            ):
                raise LabelTableError(f"{where}: colour {rgb!r} of label {value} is not three integers 0-255.")
            colors[value] = (comps[0], comps[1], comps[2])
        # Read-only views: a frozen table whose dicts could still be edited would not be frozen.
        object.__setattr__(self, "names", types.MappingProxyType(dict(sorted(names.items()))))
        object.__setattr__(self, "colors", types.MappingProxyType(dict(sorted(colors.items()))))

    def __hash__(self) -> int:
        return hash((tuple(self.names.items()), tuple(self.colors.items()), self.source, self.format))

    @property
    def values(self) -> tuple[int, ...]:
        """The label values of the table, ascending."""
        return tuple(self.names)

    def name_of(self, value: int) -> str:
        """The name of ``value``, or ``"Label <value>"`` (ITK-SNAP's default) when the table lacks it."""
        return self.names.get(value, f"Label {value}")

    def color_of(self, value: int) -> RGB:
        """The colour of ``value``: the table's, else a fixed colour of that value (black for 0), so
        labels without one still look different from each other and the same in every session."""
        rgb = self.colors.get(value)
        return rgb if rgb is not None else _fallback_color(value)


def _fallback_color(value: int) -> RGB:
    if value == 0:
        return (0, 0, 0)
    # Golden-ratio steps around the hue circle keep neighbouring values far apart in colour.
    hue = (value * 0.618033988749895) % 1.0
    bright = 0.95 if value % 2 else 0.75
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, bright)
    return (round(r * 255), round(g * 255), round(b * 255))


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_label_table(path: str | os.PathLike) -> LabelTable:
    """The :class:`LabelTable` in ``path``: an ITK-SNAP label description file, a Slicer colour
    table (``.ctbl``/``.txt``), a CSV/TSV with a header, or JSON, as described in this module;
    ``.txt`` and unknown endings are recognised by their content. A missing or binary file, an
    unknown format, a malformed line (non-integer or negative value, colour outside 0-255, a
    value given twice with different names or colours) or a table without labels is a
    :class:`LabelTableError` naming the file and line."""
    path = Path(path)
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_json(path, text)
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, text)
    if suffix == ".ctbl":
        return _read_columns(path, text, "slicer")
    stripped = text.lstrip()
    if suffix != ".txt" and stripped[:1] in ("{", "["):
        return _read_json(path, text)
    kind = _detect_text_kind(path, text, allow_delimited=suffix != ".txt")
    if kind == "delimited":
        return _read_delimited(path, text)
    return _read_columns(path, text, kind)


def _read_text(path: Path) -> str:
    if not path.exists():
        raise LabelTableError(f"{path}: no such file.")
    if not path.is_file():
        raise LabelTableError(f"{path}: is a folder, a label table file is expected.")
    data = path.read_bytes()
    if b"\x00" in data:
        raise LabelTableError(f"{path}: binary data (an image?), not a label table.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Older ITK-SNAP and Windows editors write names in the local 8-bit code page;
        # Latin-1 keeps the numbers intact and the names readable in most of those files.
        return data.decode("latin-1")


def _lines(text: str) -> Iterable[tuple[int, str]]:
    """``(line number, line)`` of the non-blank, non-comment lines (split on newlines only, so
    the numbers are the ones an editor shows)."""
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield lineno, raw.rstrip("\r")


def _comments(text: str) -> str:
    return "\n".join(l.strip().lower() for l in text.split("\n") if l.strip().startswith("#"))


def _refuse_procedural(path: Path, text: str) -> None:
    if "color procedural file" in _comments(text):
        raise LabelTableError(
            f"{path}: a Slicer procedural colour file (a continuous colour scale), not a table of label names."
        )


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


class _Builder:
    """Collects entries, refusing a value given twice with a different name or colour."""

    def __init__(self, path: Path):
        self.path = path
        self.names: dict[int, str] = {}
        self.colors: dict[int, RGB] = {}
        self.lines: dict[int, int] = {}

    def add(self, lineno: int, value: int, name: str, color: RGB | None) -> None:
        at = f"{self.path}, line {lineno}"
        if not name.strip():
            raise LabelTableError(f"{at}: label {value} has an empty name.")
        if value in self.names:
            first = self.lines[value]
            if self.names[value] != name:
                raise LabelTableError(
                    f"{at}: label value {value} is given twice with different names: "
                    f"{self.names[value]!r} (line {first}) and {name!r}."
                )
            if self.colors.get(value) != color:
                raise LabelTableError(
                    f"{at}: label value {value} ({name!r}) is given twice with different colours: "
                    f"{self.colors.get(value)} (line {first}) and {color}."
                )
            return  # the same entry repeated (tables pasted together) says nothing new
        self.names[value] = name
        self.lines[value] = lineno
        if color is not None:
            self.colors[value] = color

    def table(self, fmt: str, expected: str) -> LabelTable:
        if not self.names:
            raise LabelTableError(f"{self.path}: no labels found; expected {expected}.")
        return LabelTable(self.names, self.colors, str(self.path), fmt)


# --- numbers -----------------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text.strip()) is not None


def _is_int_text(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", text.strip()) is not None


def _integral(obj: Any) -> int | None:
    """``obj`` as an int when it is a whole number (``3``, ``"3"``, ``3.0``, ``"3.0"``), else None."""
    if isinstance(obj, bool):
        return None
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return int(obj) if obj.is_integer() else None
    if isinstance(obj, str) and _is_number(obj):
        num = float(obj)
        return int(num) if num.is_integer() else None
    return None


def _value(obj: Any, at: str) -> int:
    value = _integral(obj)
    if value is None:
        raise LabelTableError(f"{at}: label value {obj!r} is not an integer.")
    if value < 0:
        raise LabelTableError(f"{at}: label value {value} is negative; label values are 0 (background) or more.")
    return value


def _component(obj: Any, channel: str, at: str) -> int:
    comp = _integral(obj)
    if comp is None:
        raise LabelTableError(f"{at}: {channel} colour component {obj!r} is not an integer 0-255.")
    if not 0 <= comp <= 255:
        raise LabelTableError(f"{at}: {channel} colour component {comp} is outside 0-255.")
    return comp


def _rgb(parts: list[Any], at: str) -> RGB:
    r, g, b = (_component(p, ch, at) for p, ch in zip(parts, ("red", "green", "blue")))
    return (r, g, b)


#: Cells meaning "no colour" (BIDS writes n/a for missing values).
_NO_COLOR = ("", "n/a", "na", "none")


def _color_text(text: str, at: str) -> RGB | None:
    """``#rrggbb`` or ``R G B`` (commas, brackets and a fourth opacity number allowed); None when blank."""
    text = text.strip()
    if text.lower() in _NO_COLOR:
        return None
    if text.startswith("#"):
        if re.fullmatch(r"#[0-9a-fA-F]{6}", text) is None:
            raise LabelTableError(f"{at}: colour {text!r} is not #rrggbb.")
        return (int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16))
    parts = [p for p in re.split(r"[\s,;]+", text.strip("()[] ")) if p]
    if len(parts) not in (3, 4):
        raise LabelTableError(f"{at}: colour {text!r} is neither #rrggbb nor three numbers 'R G B'.")
    return _rgb(parts[:3], at)


def _color_json(obj: Any, at: str) -> RGB | None:
    if obj is None:
        return None
    if isinstance(obj, str):
        return _color_text(obj, at)
    if isinstance(obj, list) and len(obj) in (3, 4):
        return _rgb(obj[:3], at)
    raise LabelTableError(f"{at}: colour {obj!r} is neither [R, G, B] nor '#rrggbb'.")


# --- ITK-SNAP and Slicer text tables ---------------------------------------------------------


def _read_columns(path: Path, text: str, kind: str) -> LabelTable:
    _refuse_procedural(path, text)
    parse = _itksnap_line if kind == "itksnap" else _slicer_line
    out = _Builder(path)
    for lineno, line in _lines(text):
        value, name, rgb = parse(line, f"{path}, line {lineno}")
        out.add(lineno, value, name, rgb)
    if kind == "itksnap":
        return out.table("itksnap", 'ITK-SNAP lines IDX R G B A VIS MSH "NAME"')
    return out.table("slicer", "Slicer colour table lines 'value name R G B A'")


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


# --- CSV / TSV -----------------------------------------------------------------------------------

_VALUE_COLUMNS = ("value", "label_value", "labelvalue", "index", "idx", "id")
_NAME_COLUMNS = ("name", "label_name", "labelname", "description", "structure")
_RGB_COLUMNS = (("r", "g", "b"), ("red", "green", "blue"), ("color_r", "color_g", "color_b"))
_COLOR_COLUMNS = ("color", "colour", "rgb", "hex")


def _norm(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", key.strip().lower())


def _pick_keys(keys: list[str]) -> tuple[str | None, str | None, tuple[str, str, str] | None, str | None]:
    """The (value, name, (r, g, b), colour) keys among normalised ``keys``; ``label`` is the value
    when no other value key is there, else the name."""
    value = next((k for k in _VALUE_COLUMNS if k in keys), None)
    name = next((k for k in _NAME_COLUMNS if k in keys), None)
    if "label" in keys:
        if value is None:
            value = "label"
        elif name is None:
            name = "label"
    rgb = next((cols for cols in _RGB_COLUMNS if all(c in keys for c in cols)), None)
    color = next((k for k in _COLOR_COLUMNS if k in keys), None)
    return value, name, rgb, color


def _read_delimited(path: Path, text: str) -> LabelTable:
    first = next(iter(_lines(text)), None)
    if first is None:
        raise LabelTableError(f"{path}: no labels found (empty file); expected a header such as value,name,r,g,b.")
    delimiter = max(("\t", ";", ","), key=first[1].count)
    rows = csv.reader(text.split("\n"), delimiter=delimiter)
    # The header: the first row that is neither blank nor a comment.
    for row in rows:
        cells = [c.strip() for c in row]
        if any(cells) and not cells[0].startswith("#"):
            break
    else:
        raise LabelTableError(f"{path}: no labels found; expected a header such as value,name,r,g,b.")
    at = f"{path}, line {rows.line_num}"
    if _is_number(cells[0]):
        raise LabelTableError(
            f"{at}: {delimiter.join(cells)!r} is data, not a header; the first line names the columns, "
            "e.g. value,name,r,g,b."
        )
    header = [_norm(c) for c in cells]
    value_key, name_key, rgb_keys, color_key = _pick_keys(header)
    if value_key is None:
        raise LabelTableError(f"{at}: the header {delimiter.join(cells)!r} has no value column (value/label/index).")
    if name_key is None:
        raise LabelTableError(
            f"{at}: the header {delimiter.join(cells)!r} has no name column (name/label/description)."
        )
    partial = [c for cols in _RGB_COLUMNS for c in cols if c in header]
    if rgb_keys is None and color_key is None and partial:
        raise LabelTableError(f"{at}: the header has {', '.join(partial)} but not all three colour columns.")
    col = {k: header.index(k) for k in header}
    value_col, name_col = col[value_key], col[name_key]
    rgb_cols = [col[k] for k in rgb_keys] if rgb_keys is not None else None
    color_col = col[color_key] if color_key is not None else None
    out = _Builder(path)
    for row in rows:
        lineno = rows.line_num
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if cells[0].startswith("#") and color_col != 0:
            continue  # a comment row (unless the first column holds #rrggbb colours)
        at = f"{path}, line {lineno}"
        if len(cells) <= max(value_col, name_col):
            raise LabelTableError(f"{at}: {len(cells)} column(s) where the header has {len(header)}: {row!r}.")
        value = _value(cells[value_col], at)
        rgb: RGB | None = None
        if rgb_cols is not None:
            comps = [cells[c] if c < len(cells) else "" for c in rgb_cols]
            if any(c.lower() not in _NO_COLOR for c in comps):  # no colour at all is allowed, part of one is not
                rgb = _rgb(comps, at)
        elif color_col is not None and color_col < len(cells):
            rgb = _color_text(cells[color_col], at)
        out.add(lineno, value, cells[name_col], rgb)
    return out.table("csv", "rows under the header")


# --- JSON ----------------------------------------------------------------------------------------


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def _json_members(text: str, start: int) -> list[tuple[Any, int, int, Any]]:
    """``(key or index, member position, value position, value)`` of each member of the object or
    array at ``text[start]``.

    ``json.loads`` keeps no positions (and drops repeated keys), so the container is walked
    member by member with ``raw_decode``; the text has already been checked to be valid JSON.
    """
    decoder = json.JSONDecoder()
    close = "}" if text[start] == "{" else "]"
    i = _skip_ws(text, start + 1)
    members: list[tuple[Any, int, int, Any]] = []
    if text[i] == close:
        return members
    while True:
        pos = i
        key: Any = len(members)
        if close == "}":
            key, i = decoder.raw_decode(text, i)
            i = _skip_ws(text, _skip_ws(text, i) + 1)  # past the ':'
        value, end = decoder.raw_decode(text, i)
        members.append((key, pos, i, value))
        i = _skip_ws(text, end)
        if text[i] != ",":
            return members
        i = _skip_ws(text, i + 1)


def _read_json(path: Path, text: str) -> LabelTable:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelTableError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}).") from None
    start = _skip_ws(text, 0)

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    expected = '{"1": "LV"}, {"1": {"name": "LV", "color": [255, 0, 0]}} or [{"value": 1, "name": "LV"}]'
    if isinstance(doc, dict) and isinstance(doc.get("labels"), (dict, list)):
        # An MSD/nnU-Net dataset.json: the table is its "labels" member (the last one, as json.loads).
        start = [value_at for key, _, value_at, _ in _json_members(text, start) if key == "labels"][-1]
        doc = doc["labels"]
    if not isinstance(doc, (dict, list)):
        raise LabelTableError(f"{path}, line {line_of(start)}: a JSON {type(doc).__name__}, expected {expected}.")
    out = _Builder(path)
    inverted = (
        isinstance(doc, dict)
        and bool(doc)
        and all(_integral(k) is None for k in doc)
        and all(isinstance(v, (int, list)) and not isinstance(v, bool) for v in doc.values())
    )
    for key, pos, _, item in _json_members(text, start):
        lineno = line_of(pos)
        at = f"{path}, line {lineno}"
        if inverted:  # nnU-Net v2: {"background": 0, "left atrium": 1}
            if isinstance(item, list):
                raise LabelTableError(
                    f"{at}: {key!r} is an nnU-Net region (labels {item}), not one label value; "
                    "give a table of the values the output holds."
                )
            out.add(lineno, _value(item, at), str(key), None)
        elif isinstance(doc, dict):
            value = _value(key, at)
            if isinstance(item, str):
                out.add(lineno, value, item, None)
            elif isinstance(item, dict):
                _, name, rgb = _json_entry(item, at, with_value=False)
                out.add(lineno, value, name, rgb)
            else:
                raise LabelTableError(
                    f"{at}: entry {key!r} is {item!r}; expected a name or {{'name': ..., 'color': ...}}."
                )
        else:
            if not isinstance(item, dict):
                raise LabelTableError(f"{at}: item {key} is {item!r}; expected {{'value': 1, 'name': 'LV', ...}}.")
            value, name, rgb = _json_entry(item, at, with_value=True)
            out.add(lineno, value, name, rgb)
    return out.table("json", expected)


def _json_entry(item: dict[str, Any], at: str, *, with_value: bool) -> tuple[int, str, RGB | None]:
    keys = {_norm(str(k)): k for k in item}
    value_key, name_key, rgb_keys, color_key = _pick_keys(list(keys))
    if not with_value and value_key == "label" and name_key is None:
        value_key, name_key = None, "label"  # {"1": {"label": "LV"}}: the value is the key
    value = 0
    if with_value:
        if value_key is None:
            raise LabelTableError(f"{at}: no 'value' in {item!r}.")
        value = _value(item[keys[value_key]], at)
    if name_key is None:
        raise LabelTableError(f"{at}: no 'name' in {item!r}.")
    name = item[keys[name_key]]
    if not isinstance(name, str):
        raise LabelTableError(f"{at}: name {name!r} is not text.")
    rgb: RGB | None = None
    if rgb_keys is not None:
        rgb = _rgb([item[keys[k]] for k in rgb_keys], at)
    elif color_key is not None:
        rgb = _color_json(item[keys[color_key]], at)
    return value, name, rgb


# ---------------------------------------------------------------------------------------------
# Finding and writing
# ---------------------------------------------------------------------------------------------


def find_label_table(label_file: str | os.PathLike) -> Path | None:
    """The label table next to the label map ``label_file``, or None: the first existing file of
    :data:`TABLE_CANDIDATES` in its folder, ``{stem}`` being its name without the volume ending
    (``seg`` for ``seg.nii.gz``), so ``seg.txt``, ``seg.ctbl``, ``seg_ColorTable.ctbl``,
    ``seg.csv``, ``seg.tsv``, ``seg.json``, then ``labels.txt``, ``label_descriptions.txt``,
    ``colors.ctbl``, ``labels.csv``, ``labels.json``. The file is found, not read: reading it
    may still fail (a ``labels.csv`` of a classification data set is no label table)."""
    label_file = Path(label_file)
    suffix = volume_suffix(label_file.name)
    stem = label_file.name[: -len(suffix)] if suffix else label_file.stem
    for pattern in TABLE_CANDIDATES:
        candidate = label_file.parent / pattern.format(stem=stem)
        if candidate.is_file() and candidate != label_file:
            return candidate
    return None


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
    :class:`LabelTableError`; returns the path written."""
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

"""Tables with named columns or keys: CSV/TSV with a header (Slicer's CSV colour tables, BIDS
``dseg.tsv``) and JSON (objects by value, a list of entries, the ``"labels"`` of an MSD/nnU-Net
``dataset.json``).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from gvsl_app.io.label_tables.fields import (
    _NO_COLOR,
    _color_json,
    _color_text,
    _integral,
    _is_number,
    _rgb,
    _value,
)
from gvsl_app.io.label_tables.table import RGB, LabelTable, LabelTableError
from gvsl_app.io.label_tables.text import _Builder, _lines

# --- CSV / TSV -----------------------------------------------------------------------------------

_VALUE_COLUMNS = ("value", "label_value", "labelvalue", "index", "idx", "id")
_NAME_COLUMNS = ("name", "label_name", "labelname", "description", "structure")
_RGB_COLUMNS = (("r", "g", "b"), ("red", "green", "blue"), ("color_r", "color_g", "color_b"))
_COLOR_COLUMNS = ("color", "colour", "rgb", "hex")


def _norm(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", key.strip().lower())


def _pick_keys(keys: list[str]) -> tuple[str | None, str | None, tuple[str, str, str] | None, str | None]:
    """The (value, name, (r, g, b), colour) keys among normalised ``keys``; ``label`` is the value
    when no other value key is there, else the name.
    """
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

"""One field of a table line or entry: numbers, label values, colour components and colours
(``#rrggbb``, ``R G B``, ``[R, G, B]``), each refused with a :class:`LabelTableError` naming where.
"""

from __future__ import annotations

import re
from typing import Any

from gvsl_app.io.label_tables.table import RGB, LabelTableError

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

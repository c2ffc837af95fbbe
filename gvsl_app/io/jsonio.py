"""Strict JSON for the files we write: no ``NaN`` or ``Infinity`` tokens.

Python's ``json`` writes ``NaN``/``Infinity`` by default, which strict readers (JavaScript's
``JSON.parse``, ``jq``, most other languages) reject. A non-finite number in our reports
means "undefined" (a Dice of a structure absent from both maps, a loss that diverged), so
it is written as ``null``; the report's other fields say why.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (also numpy's) replaced by ``None``, recursively."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, float) or type(obj).__name__ in ("float32", "float64", "float16"):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def dumps_strict(obj: Any, indent: int | None = 2) -> str:
    """JSON text of ``obj`` with non-finite numbers as ``null`` (never ``NaN``)."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False)

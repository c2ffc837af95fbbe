"""What the text table readers share: decoding the file, its data lines and comments, refusing
Slicer's procedural colour files, and collecting entries into a :class:`LabelTable`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from gvsl_app.io.label_tables.table import RGB, LabelTable, LabelTableError


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
    the numbers are the ones an editor shows).
    """
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


def _read_columns(
    path: Path, text: str, parse: Callable[[str, str], tuple[int, str, RGB]], fmt: str, expected: str
) -> LabelTable:
    """The table of a file with one label a line (ITK-SNAP, Slicer), each line read by ``parse``."""
    _refuse_procedural(path, text)
    out = _Builder(path)
    for lineno, line in _lines(text):
        value, name, rgb = parse(line, f"{path}, line {lineno}")
        out.add(lineno, value, name, rgb)
    return out.table(fmt, expected)

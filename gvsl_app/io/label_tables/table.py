"""The :class:`LabelTable` read from a label table file, its :class:`LabelTableError`, and the
fixed colour a label without one in the table is shown in.
"""

from __future__ import annotations

import colorsys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field

RGB = tuple[int, int, int]


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
        labels without one still look different from each other and the same in every session.
        """
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

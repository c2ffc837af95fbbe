"""Form rows generated from the engine's option dataclasses (:mod:`gvsl_app.options`), so a
widget offers the same choices, defaults and help as the ``gvsl`` command line.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, cast

from magicgui.widgets import CheckBox, ComboBox
from qtpy.QtWidgets import QSpinBox, QWidget

AUTO = "auto"
"""What a spin box of an option that may be None shows at its minimum: the engine chooses."""


class OptionRow:
    """One option's form row: a magicgui combo box of its choices, a check box for a switch,
    or a spin box for a number (a Qt one showing ``auto`` at 0 where the option may be None),
    starting at the field's default, with its help as the tooltip.
    """

    def __init__(self, options_cls: type, name: str) -> None:
        field = {f.name: f for f in dataclasses.fields(options_cls)}[name]
        kind = typing.get_type_hints(options_cls)[name]
        meta, default = field.metadata, cast(Any, field.default)  # every option has a plain default
        tooltip = meta.get("help", "")
        self.auto = type(None) in typing.get_args(kind)
        self._magic: ComboBox | CheckBox | None = None
        if meta.get("choices") is not None:
            self._magic = ComboBox(choices=meta["choices"].values(), value=str(default), tooltip=tooltip)
        elif kind is bool:
            self._magic = CheckBox(value=bool(default), tooltip=tooltip)
        if self._magic is not None:
            self.native: QWidget = self._magic.native
        else:
            spin = QSpinBox()
            spin.setRange(0 if self.auto else int(meta.get("minimum", 0)), int(meta.get("maximum", 2**31 - 1)))
            if self.auto:
                spin.setSpecialValueText(AUTO)
            spin.setValue(int(default or 0))
            spin.setToolTip(tooltip)
            self.native = spin

    @property
    def value(self) -> Any:
        """The row's value as the options dataclass takes it (``auto``: None)."""
        if self._magic is not None:
            return self._magic.value
        assert isinstance(self.native, QSpinBox)
        return (self.native.value() or None) if self.auto else self.native.value()

"""How the plugin's widgets sit in napari's window: scrolling bodies and tabbed docks.

napari's *Plugins* menu docks each widget on the right, stacked under the ones already there
(npe2 manifests cannot ask for tabs), and a stacked dock area is as tall as the sum of its
widgets' minimum heights: the five GVSL widgets pushed the main window's minimum height from
about 500 to 2,418 px (issue #31). :func:`fit_dock`, called at the end of each widget's
``__init__``, makes a widget fit any screen:

* its body scrolls: the layout built by the widget moves into a frameless ``QScrollArea``,
  so the widget's minimum height is a few lines, not its whole form;
* once docked in a main window, it joins the GVSL docks already in the same dock area as a
  tab (what ``add_dock_widget(..., tabify=True)`` does), so each widget gets the whole
  column's height. A dock dragged out of the tabs stays where the user puts it.

``tests/plugin/test_layout.py`` adds the five widgets as the Plugins menu does and checks the
main window fits a 1,000 px screen.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QVBoxLayout, QWidget

__all__ = ["fit_dock", "scroll_body", "tab_with_siblings"]

_MARK = "_gvsl_tabbed_dock"
"""Attribute set on the plugin's widgets: the docks holding one are tabbed together."""


MIN_BODY_HEIGHT = 120
"""The least height (px) a widget's scrolling body asks for: a few rows of its form."""


class _VerticalScroll(QScrollArea):
    """A scroll area that scrolls vertically only: as wide as its content needs, a few rows tall."""

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        inner = self.widget()
        width = inner.minimumSizeHint().width() if inner is not None else 0
        bar = self.verticalScrollBar()
        return QSize(width + (bar.sizeHint().width() if bar is not None else 0), MIN_BODY_HEIGHT)


def scroll_body(widget: QWidget) -> QScrollArea:
    """Move ``widget``'s layout (and its children) into a frameless scroll area filling ``widget``.

    Qt's ``setLayout`` takes a layout off the widget that holds it and reparents its child
    widgets, so attributes pointing at them stay valid. Returns the scroll area.
    """
    body = QWidget()
    layout = widget.layout()
    if layout is not None:
        body.setLayout(layout)
    area = _VerticalScroll()
    area.setObjectName("gvslScrollBody")
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # as wide as the form: see minimumSizeHint
    area.setWidget(body)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return area


def tab_with_siblings(dock: QDockWidget) -> bool:
    """Tab ``dock`` with the last other GVSL dock in its main window's dock area, and raise it.

    Does nothing (False) outside a main window, when the dock floats, when it is already in
    a tab group, or when no other GVSL dock is in its area.
    """
    win = dock.parentWidget()
    if not isinstance(win, QMainWindow) or dock.isFloating() or win.tabifiedDockWidgets(dock):
        return False
    area = win.dockWidgetArea(dock)
    siblings = [
        d
        for d in win.findChildren(QDockWidget)
        if d is not dock
        and getattr(d.widget(), _MARK, False)
        and win.dockWidgetArea(d) == area
        and not d.isFloating()
        and not d.isHidden()
    ]
    if not siblings:
        return False
    win.tabifyDockWidget(siblings[-1], dock)
    dock.show()
    dock.raise_()
    return True


class _TabWhenDocked(QObject):
    """Event filter: after the widget is put in a dock (napari's ``setWidget``), tab that dock."""

    def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.ParentChange and isinstance(obj, QWidget):
            dock = obj.parentWidget()
            while dock is not None and not isinstance(dock, QDockWidget):
                dock = dock.parentWidget()
            if dock is not None:
                # napari adds the dock to the window right after setWidget: tab it once it is there
                QTimer.singleShot(0, lambda d=dock: _tab_if_alive(d))
        return False


def _tab_if_alive(dock: QDockWidget) -> None:
    try:
        tab_with_siblings(dock)
    except RuntimeError:  # the dock was deleted before the event loop came back
        pass


def fit_dock(widget: QWidget) -> None:
    """Make a plugin widget fit napari's window: a scrolling body, tabbed with the other GVSL docks."""
    scroll_body(widget)
    setattr(widget, _MARK, True)
    watcher = _TabWhenDocked(widget)
    widget.installEventFilter(watcher)

"""A matplotlib scatter canvas (one panel per weights) with lasso/rectangle selection."""

from __future__ import annotations

from functools import partial

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.path import Path as MplPath
from matplotlib.widgets import LassoSelector, RectangleSelector
from qtpy.QtCore import Signal

BG, FG = "#262930", "#d6d6d6"  # napari's dark theme


def style_axes(ax) -> None:
    ax.set_facecolor(BG)
    ax.tick_params(colors=FG, labelsize=7)
    for spine in ax.spines.values():
        spine.set_color("#5a5f6a")
    ax.title.set_color(FG)
    ax.xaxis.label.set_color(FG)
    ax.yaxis.label.set_color(FG)


def _draw_points(ax, xy: np.ndarray, colors: np.ndarray) -> None:
    """One marker line per colour instead of a scatter with a colour per point: Agg then
    stamps one cached marker image per point, which draws the ~2000 points of a panel
    several times faster (the scatter's full draw was most of a 300 ms stall).
    """
    if len(xy) == 0:
        return
    keys, inverse = np.unique(colors.reshape(len(xy), -1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    for k, rgba in enumerate(keys):
        sel = inverse == k
        ax.plot(
            xy[sel, 0],
            xy[sel, 1],
            linestyle="none",
            marker="o",
            markersize=2.45,
            markeredgewidth=0,
            color=rgba,
            alpha=0.8,
        )


class ScatterCanvas(FigureCanvasQTAgg):
    """Scatter panels sharing one point set; emits ``selected(mask)`` after a lasso/rectangle."""

    selected = Signal(object)

    def __init__(self, parent=None):
        self.figure = Figure(figsize=(5.2, 3.0), facecolor=BG, layout="constrained")
        super().__init__(self.figure)
        self.setParent(parent)
        self.setMinimumHeight(260)
        self.mode = "lasso"
        self.panels: list[dict] = []
        self._axes: list = []
        self._highlights: list = []
        self._selectors: list = []

    def set_panels(self, panels: list[dict], legend: list[tuple[str, tuple]]) -> None:
        """``panels``: dicts with ``title``, ``xy`` (n, 2), ``colors`` (n, 4); ``legend``: (name, rgba)."""
        self.figure.clear()
        self.panels = panels
        axes = self.figure.subplots(1, len(panels), squeeze=False)[0]
        self._axes, self._highlights = list(axes), []
        for ax, p in zip(axes, panels):
            style_axes(ax)
            _draw_points(ax, np.asarray(p["xy"], float), np.asarray(p["colors"], float))
            self._highlights.append(ax.scatter([], [], s=22, facecolors="none", edgecolors="white", linewidths=0.8))
            ax.set_title(p["title"], fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        handles = [self._axes[-1].scatter([], [], color=c, s=18, label=n) for n, c in legend]
        self.figure.legend(
            handles=handles,
            fontsize=7,
            loc="outside lower center",
            ncol=min(4, len(handles)),
            frameon=False,
            labelcolor=FG,
            borderpad=0.2,
            handletextpad=0.1,
            columnspacing=0.8,
        )
        self.set_mode(self.mode)
        self.draw_idle()

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        for s in self._selectors:
            s.set_active(False)
        self._selectors = []
        for i, ax in enumerate(self._axes):
            sel: LassoSelector | RectangleSelector
            if mode == "lasso":
                sel = LassoSelector(ax, onselect=partial(self._on_lasso, i), props={"color": "white", "linewidth": 1})
            else:
                sel = RectangleSelector(
                    ax,
                    onselect=partial(self._on_rect, i),
                    interactive=False,
                    props={"facecolor": "white", "alpha": 0.15, "edgecolor": "white"},
                )
            self._selectors.append(sel)

    def _on_lasso(self, i: int, verts) -> None:
        if len(verts) < 3:
            return
        self.selected.emit(MplPath(verts).contains_points(self.panels[i]["xy"]))

    def _on_rect(self, i: int, e0, e1) -> None:
        if None in (e0.xdata, e1.xdata):
            return
        self.select_box(i, (e0.xdata, e0.ydata), (e1.xdata, e1.ydata))

    def select_box(self, i: int, corner0, corner1) -> None:
        (x0, x1), (y0, y1) = sorted((corner0[0], corner1[0])), sorted((corner0[1], corner1[1]))
        xy = self.panels[i]["xy"]
        self.selected.emit((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))

    def highlight(self, mask: np.ndarray | None) -> None:
        """Ring the points of ``mask`` (bool per point; ``None`` clears) in every panel.

        Only the offsets of one scatter change and the redraw is ``draw_idle``: successive
        selections within one event-loop pass cost a single repaint.
        """
        for h, p in zip(self._highlights, self.panels):
            h.set_offsets(p["xy"][mask] if mask is not None and mask.any() else np.empty((0, 2)))
        self.draw_idle()

"""Live training curves drawn with QPainter: one line per loss term, validation dashed.

The plot follows a run every half second while the viewer stays interactive. Drawn with
matplotlib, each redraw (text, ticks, legend through Agg) cost 100-150 ms of the GUI thread
on two shared CPU cores; painting a few polylines and labels with Qt costs a few ms, and
Qt merges repaint requests, so following a run never stutters the viewer.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

BG, FG, FRAME = "#262930", "#d6d6d6", "#5a5f6a"  # napari's dark theme
CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
"""matplotlib's default colours, as the loss plot had before (C0, C1, ...)."""
MAX_POINTS = 2000  # per curve drawn; a longer run is thinned evenly (the plot is ~400 px wide)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(n - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 5, 10)), key=lambda st: abs(math.log(st / raw)))  # the closest round step
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.4g}" if value != 0 else "0"


class LossPlot(QWidget):
    """Curves of ``{name: (iterations, values)}``; names starting ``val_`` are dashed with dots."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(280)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)  # paints its whole rectangle: nothing behind to draw
        self._history: dict[str, tuple[list, list]] = {}
        self._colors: dict[str, str] = {}

    def clear(self) -> None:
        self._history, self._colors = {}, {}
        self.update()

    def labels(self) -> list[str]:
        """The curves shown, in legend order (training terms, then validation)."""
        return list(self._colors)

    def update_curves(self, history: dict[str, tuple[list[int], list[float]]]) -> None:
        """Show ``history`` (the whole run so far); the repaint happens once the GUI is idle."""
        if set(history) != set(self._colors):
            train = sorted(k for k in history if not k.startswith("val_"))
            self._colors = {k: CYCLE[i % len(CYCLE)] for i, k in enumerate(train)}
            for key in sorted(k for k in history if k.startswith("val_")):
                self._colors[key] = self._colors.get(key[4:], "#ffffff")
        self._history = {k: (list(xs), list(ys)) for k, (xs, ys) in history.items()}
        self.update()

    # -- painting ------------------------------------------------------------------------
    def _limits(self) -> tuple[float, float, float, float] | None:
        xs = [x for k, (x, y) in self._history.items() for x, v in zip(x, y) if math.isfinite(v)]
        ys = [v for _, (_, y) in self._history.items() for v in y if math.isfinite(v)]
        if not xs:
            return None
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        if x1 <= x0:
            x0, x1 = x0 - 1, x1 + 1
        pad = 0.05 * (y1 - y0) if y1 > y0 else max(abs(y0) * 0.1, 1e-3)
        return x0, x1, y0 - pad, y1 + pad

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(BG))
        font = QFont(self.font())
        font.setPointSizeF(7.5)
        p.setFont(font)
        metrics = p.fontMetrics()
        legend_rows = self._paint_legend(p, metrics)
        top = 6 + legend_rows * (metrics.height() + 2) + 4
        area = QRectF(48, top, max(self.width() - 56, 10), max(self.height() - top - 34, 10))
        p.setPen(QPen(QColor(FRAME)))
        p.drawRect(area)
        p.setPen(QPen(QColor(FG)))
        p.drawText(QRectF(area.left(), self.height() - 16, area.width(), 14), Qt.AlignmentFlag.AlignCenter, "iteration")
        p.save()
        p.translate(10, area.center().y())
        p.rotate(-90)
        p.drawText(QRectF(-40, -8, 80, 14), Qt.AlignmentFlag.AlignCenter, "loss")
        p.restore()
        limits = self._limits()
        if limits is not None:
            self._paint_axes(p, area, limits)
            self._paint_curves(p, area, limits)
        p.end()

    def _paint_legend(self, p: QPainter, metrics) -> int:
        x, row = 48.0, 0
        for key, color in self._colors.items():
            width = 18 + metrics.horizontalAdvance(key) + 10
            if x + width > self.width() - 4 and x > 48:
                x, row = 48.0, row + 1
            y = 6 + row * (metrics.height() + 2) + metrics.height() / 2
            p.setPen(self._pen(key, color))
            p.drawLine(QPointF(x, y), QPointF(x + 14, y))
            p.setPen(QPen(QColor(FG)))
            p.drawText(QPointF(x + 18, y + metrics.ascent() / 2 - 1), key)
            x += width
        return row + 1 if self._colors else 0

    def _paint_axes(self, p: QPainter, area: QRectF, limits) -> None:
        x0, x1, y0, y1 = limits
        p.setPen(QPen(QColor(FG)))
        for v in nice_ticks(y0, y1):
            y = area.bottom() - (v - y0) / (y1 - y0) * area.height()
            p.drawLine(QPointF(area.left() - 3, y), QPointF(area.left(), y))
            p.drawText(
                QRectF(0, y - 7, area.left() - 5, 14),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                _label(v),
            )
        for v in nice_ticks(x0, x1, 6):
            x = area.left() + (v - x0) / (x1 - x0) * area.width()
            p.drawLine(QPointF(x, area.bottom()), QPointF(x, area.bottom() + 3))
            p.drawText(
                QRectF(x - 30, area.bottom() + 3, 60, 14),
                Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop,
                _label(v),
            )

    def _paint_curves(self, p: QPainter, area: QRectF, limits) -> None:
        x0, x1, y0, y1 = limits
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setClipRect(area)
        for key, (xs, ys) in self._history.items():
            stride = max(1, math.ceil(len(xs) / MAX_POINTS))
            points = [
                QPointF(
                    area.left() + (x - x0) / (x1 - x0) * area.width(),
                    area.bottom() - (v - y0) / (y1 - y0) * area.height(),
                )
                for x, v in zip(xs[::stride], ys[::stride])
                if math.isfinite(v)
            ]
            if not points:
                continue
            p.setPen(self._pen(key, self._colors.get(key, FG)))
            path = QPainterPath(points[0])
            for point in points[1:]:
                path.lineTo(point)
            p.drawPath(path)
            if key.startswith("val_"):  # few points: each one marked
                p.setBrush(QColor(self._colors.get(key, FG)))
                for point in points:
                    p.drawEllipse(point, 2.0, 2.0)
                p.setBrush(Qt.BrushStyle.NoBrush)

    @staticmethod
    def _pen(key: str, color: str) -> QPen:
        pen = QPen(QColor(color))
        pen.setWidthF(1.4 if key == "loss" else 1.0)
        if key.startswith("val_"):
            pen.setStyle(Qt.PenStyle.DashLine)
        return pen

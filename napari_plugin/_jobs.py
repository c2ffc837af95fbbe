"""Background jobs of the widgets: worker threads, progress, staged results, GUI latency.

A job's state lives in a ``JobState`` (evented dataclass); the worker reports progress
through a queued Qt signal, the result is shown by GUI-thread steps that the event loop
interleaves, and ``JobControls`` only subscribes to the state.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QPushButton, QWidget

from gvsl_app.jobs.state import DONE, ERROR, RUNNING, JobState, format_seconds

from ._common import notify_error


class _Bridge(QObject):
    """Carries progress callbacks from the worker thread to the GUI thread (queued signal)."""

    progress = Signal(str, float)

    def __init__(self, state: JobState):
        super().__init__()
        self._state = state
        self.progress.connect(self._apply, Qt.ConnectionType.QueuedConnection)

    def _apply(self, stage: str, fraction: float) -> None:
        self._state.stage = stage
        self._state.fraction = fraction


def run_staged(steps: list[Callable], done: Callable, failed: Callable) -> None:
    """Run GUI-thread steps one per event-loop turn (e.g. one layer each), then ``done``.

    Adding a napari layer costs tens of milliseconds; doing six at once would freeze the
    viewer for half a second, so the result is shown in slices the event loop interleaves.
    """
    from qtpy.QtCore import QTimer

    def next_step() -> None:
        if not steps:
            done()
            return
        try:
            steps.pop(0)()
        except Exception as exc:
            failed(exc)
            return
        QTimer.singleShot(STEP_DELAY_MS, next_step)  # room for a repaint between layers

    next_step()


STEP_DELAY_MS = 20
_GC_FROZEN = False


def calm_gc() -> None:
    """Collect once, then exempt everything alive (napari, Qt, torch: ~10^6 objects) from
    the cyclic garbage collector (``gc.freeze``). Otherwise a full collection, triggered by
    whichever thread allocates, holds the interpreter lock for 200-400 ms and the viewer
    visibly freezes during jobs. Done by the desktop app (``napari_plugin.app``) only, which
    owns its process: inside a user's own napari the plugin is a guest and leaves the host's
    garbage collection alone. The first call collects; later ones (once the engine is
    imported in the background) only freeze what was added, which takes no time.
    """
    global _GC_FROZEN
    import gc

    if not _GC_FROZEN:
        gc.collect()
        _GC_FROZEN = True
    gc.freeze()


def refuse(state: JobState, problem: BaseException | str, what: str) -> str:
    """A job that cannot start: the reason as a notification *and* on the widget's status
    line (a toast disappears and can be cut off by a narrow canvas; the status line stays).
    """
    msg = notify_error(problem, what)
    state.message = msg
    state.status = ERROR
    return msg


def start_job(func: Callable, state: JobState, on_result: Callable, what: str):
    """Run ``func(progress)`` in a napari worker thread, tracking it in ``state``.

    ``progress(stage, fraction)`` may be called from the worker; ``on_result`` runs in the
    GUI thread with the return value and may return a list of further GUI steps (see
    :func:`run_staged`); the job is ``done`` after the last. Exceptions become a napari
    error notification.
    """
    from napari.qt.threading import create_worker

    bridge = _Bridge(state)
    state.message, state.stage, state.fraction = "", "starting", 0.0
    state.status = RUNNING

    def finish() -> None:
        state.fraction = 1.0
        state.status = DONE

    def returned(result) -> None:
        try:
            steps = on_result(result)
        except Exception as exc:  # showing the result failed: report, never crash the viewer
            errored(exc)
            return
        run_staged(list(steps or []), finish, errored)

    def errored(exc: BaseException) -> None:
        state.message = notify_error(exc, what)
        state.status = ERROR

    worker = create_worker(
        func, bridge.progress.emit, _connect={"returned": returned, "errored": errored}, _start_thread=False
    )
    worker._gvsl_bridge = bridge  # keep the bridge alive as long as the worker
    worker.start()
    return worker


class JobControls(QWidget):
    """Run button, progress bar and status line bound to a ``JobState``.

    With ``stop_text`` a second button (``stop_button``, enabled only while the job runs
    and, with ``can_stop``, only while ``can_stop()`` says the running job can be ended
    early) is added; the owner connects it to whatever ends its job early. A job that
    leaves a ``message`` when done shows it on the status line. With ``timed_stage``
    ``(stage, share_done)``, the bar shows the time left while that stage runs, from its
    elapsed time and ``share_done(fraction)``, the share of the stage's work done at the
    job's progress ``fraction``.
    """

    def __init__(
        self,
        state: JobState,
        run_text: str = "Run",
        parent=None,
        stop_text: str | None = None,
        timed_stage: tuple[str, Callable[[float], float]] | None = None,
        can_stop: Callable[[], bool] | None = None,
    ):
        super().__init__(parent)
        from qtpy.QtWidgets import QLabel, QProgressBar, QVBoxLayout

        self.state = state
        self.run_button = QPushButton(run_text)
        self.bar = QProgressBar()
        self.bar.setRange(0, 100)
        self.bar.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.run_button)
        self.stop_button = None
        if stop_text:
            self.stop_button = QPushButton(stop_text)
            self.stop_button.setEnabled(False)
            lay.addWidget(self.stop_button)
        lay.addWidget(self.bar)
        lay.addWidget(self.status)
        self._timed = timed_stage
        self._can_stop = can_stop
        self._stage_start: float | None = None  # when the timed stage began (perf_counter)
        state.events.fraction.connect(self._on_fraction)
        state.events.stage.connect(self._on_text)
        state.events.status.connect(self._on_text)
        state.events.message.connect(self._on_text)

    def _on_fraction(self, fraction: float) -> None:
        try:
            self.bar.setValue(int(round(100 * fraction)))
            left = self._time_left(fraction)
            if left is not None:
                self.bar.setFormat(f"{self.state.stage} %p% · about {format_seconds(left)} left")
        except RuntimeError:
            pass

    def _time_left(self, fraction: float) -> float | None:
        """Seconds left in the timed stage, extrapolated from its pace so far (None elsewhere)."""
        if self._timed is None or self.state.stage != self._timed[0] or self.state.status != RUNNING:
            self._stage_start = None
            return None
        now = time.perf_counter()
        if self._stage_start is None:
            self._stage_start = now
        done = self._timed[1](fraction)
        elapsed = now - self._stage_start
        if done < 0.02 or elapsed < 0.3:  # too early for the pace to mean anything
            return None
        return elapsed * (1.0 - done) / done

    def _on_text(self, *_) -> None:
        s = self.state
        try:
            self.run_button.setEnabled(s.status != RUNNING)
            if self.stop_button is not None:
                stoppable = self._can_stop is None or self._can_stop()
                self.stop_button.setEnabled(s.status == RUNNING and stoppable)
            if s.status == RUNNING:
                self.bar.setFormat(f"{s.stage} %p%")
                self.status.setText(f"running: {s.stage}")
            elif s.status == ERROR:
                self.bar.setFormat("failed")
                self.status.setText(f"<span style='color:#e06060'>error: {s.message}</span>")
            elif s.status == DONE:
                self.bar.setFormat("done")
                self.status.setText(s.message or "done")
        except RuntimeError:
            pass

"""Training widget: launch, follow, stop, resume or attach to a pre-training / fine-tuning run."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from gvsl_app.jobs.state import DONE, ERROR, STOPPED, TrainingState, format_seconds, shared_checkpoints
from gvsl_app.training.runs import RunFolder

from . import _warmup
from ._common import notify_error, notify_info
from ._layout import fit_dock
from ._lossplot import LossPlot

if TYPE_CHECKING:  # the engine's training modules import torch: loaded in the background
    from gvsl_app.jobs.training_job import TrainingJob, TrainingSpec

    from ._training_form import TrainingForm

POLL_MS = 500


class _CloseWatcher(QObject):
    """Stops the job when the viewer's main window closes (the dock widget may outlive it briefly).

    The filter sees the close before the window does, and napari's "close the window?" dialog
    may still cancel it: so whether the window really went is checked once the event has been
    handled, and only then is the run stopped (and its checkpoint waited for). Where the event
    loop ends with the window (the app's last window), the interpreter's exit does the same.
    """

    def __init__(self, holder: dict):
        super().__init__()
        self._holder = holder

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Type.Close:
            window, holder = weakref.ref(obj), self._holder
            QTimer.singleShot(0, lambda: _shutdown_if_closed(window, holder))
        return False


def _shutdown_if_closed(window: weakref.ref, holder: dict) -> None:
    try:
        shown = window()
        closed = shown is None or not shown.isVisible()
    except RuntimeError:  # its Qt side is gone
        closed = True
    if closed:
        _shutdown(holder)


def _shutdown(holder: dict) -> None:
    job = holder.get("job")
    if job is not None:
        job.shutdown()


def _detach(holder: dict) -> None:
    job = holder.get("job")
    if job is not None:
        job.detach()


def _ancestor(widget: QWidget, kind: type):
    """The nearest parent of ``kind``: the QMainWindow is found also while the dock floats
    (then ``widget.window()`` is the floating dock, whose close only hides the panel).
    """
    w = widget.parentWidget()
    while w is not None and not isinstance(w, kind):
        w = w.parentWidget()
    return w


class TrainingWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = TrainingState()
        self._holder: dict = {"job": None}  # shared with the close hooks, which must not hold `self`
        self._form: TrainingForm | None = None  # built once torch is imported (see `form`)
        _warmup.start()
        buttons = self._build_buttons()
        self.bar = QProgressBar()
        self.status = QLabel("no run")
        self.status.setWordWrap(True)
        self.plot = LossPlot(self)
        lay = QVBoxLayout(self)
        self._layout = lay
        self._placeholder = QLabel("loading the training settings (PyTorch)…")
        lay.addWidget(self._placeholder)
        lay.addLayout(buttons)
        lay.addWidget(self.bar)
        lay.addWidget(self.status)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.use_button)
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        for name in ("status", "iteration", "total", "eta_s", "message"):
            getattr(self.state.events, name).connect(self._render)
        self._render()
        holder = self._holder
        self.destroyed.connect(lambda *_: _shutdown(holder))
        self._watcher = _CloseWatcher(holder)
        self._watched: weakref.ref[QObject] | None = None  # weak: the window must not outlive napari's close
        self._docked_in: weakref.ref[QObject] | None = None
        _warmup.when_ready(self._build_form)
        fit_dock(self)

    def _build_buttons(self) -> QHBoxLayout:
        """Start, Stop, Resume and Attach in a row; "Use this checkpoint" (placed under the plot)."""
        self.start_button, self.stop_button = QPushButton("Start"), QPushButton("Stop")
        self.resume_button, self.attach_button = QPushButton("Resume"), QPushButton("Attach…")
        self.use_button = QPushButton("Use this checkpoint in the other widgets")
        buttons = QHBoxLayout()
        for b in (self.start_button, self.stop_button, self.resume_button, self.attach_button):
            buttons.addWidget(b)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button.clicked.connect(self.resume)
        self.attach_button.clicked.connect(self._attach_dialog)
        self.use_button.clicked.connect(self.use_checkpoint)
        return buttons

    def _build_form(self) -> None:
        self.objectName()  # raises RuntimeError once the Qt side is gone: then nothing to build
        self.form  # noqa: B018 (builds it)

    @property
    def form(self) -> TrainingForm:
        """The training form (magicgui), built on first use.

        Its defaults come from the engine's training settings, whose module imports torch;
        building it with the widget would put that import before the viewer shows, so a
        placeholder stands in until the background import is done (or a script uses it).
        """
        if self._form is None:
            _warmup.ready()
            from ._training_form import TrainingForm

            self._form = TrainingForm()
            self._placeholder.hide()
            self._layout.insertWidget(0, self._form.native)
            self._render()  # the buttons act on the form: enabled from now on
        return self._form

    @property
    def fields(self) -> dict:
        """The form's fields by name (magicgui widgets: ``.value``, ``.enabled``); not
        attributes, which would shadow QWidget methods such as ``size()`` and ``width()``.
        """
        return self.form.fields

    def showEvent(self, event) -> None:
        # Once docked, the main window is the viewer's (plain Qt, no private napari
        # attribute): closing it stops the job even if this widget outlives it briefly.
        top = _ancestor(self, QMainWindow)
        if top is not None and (self._watched is None or self._watched() is not top):
            top.installEventFilter(self._watcher)
            self._watched = weakref.ref(top)
        # Closing the panel (its ✕) deletes the dock but only unparents this widget, whose
        # own `destroyed` then never comes: the dock's is the panel's end. The run is asked
        # to stop without freezing the viewer; the interpreter's exit waits for its checkpoint.
        dock = _ancestor(self, QDockWidget)
        if dock is not None and (self._docked_in is None or self._docked_in() is not dock):
            holder = self._holder
            dock.destroyed.connect(lambda *_: _detach(holder))
            self._docked_in = weakref.ref(dock)
        super().showEvent(event)

    @property
    def job(self) -> TrainingJob | None:
        return self._holder["job"]

    def spec(self) -> TrainingSpec:
        return self.form.spec()

    # -- actions ---------------------------------------------------------------------------
    def _begin(self, job: TrainingJob) -> TrainingJob | None:
        old = self.job
        if old is not None and old.alive:
            notify_error("a run is in progress; stop it first", "Training")
            return None
        self._holder["job"] = job
        self.plot.clear()
        try:
            job.start()
        except OSError as exc:
            notify_error(exc, "Training")
            return None
        self.poll()
        self.timer.start()
        return job

    def start(self) -> TrainingJob | None:
        spec = self.spec()
        if not spec.run:
            notify_error("choose a run folder", "Training")
            return None
        run = RunFolder(spec.run)
        if run.config_path.exists() and run.has_weights():  # a run stopped before any checkpoint starts again
            notify_error(
                f"{spec.run} already holds a run; press Resume to continue it or choose a new folder", "Training"
            )
            return None
        if not spec.data:
            notify_error("choose a data folder or the synthetic generator", "Training")
            return None
        from gvsl_app.jobs.training_job import TrainingJob

        return self._begin(TrainingJob(spec.run, self.state, spec.commands(), total=spec.iters or 0))

    def resume(self) -> TrainingJob | None:
        run = self.form.spec().run  # the form waits for the engine's import
        from gvsl_app.jobs.training_job import TrainingJob, resume_command

        try:
            cmd = resume_command(run)
        except FileNotFoundError as exc:
            notify_error(exc, "Training")
            return None
        return self._begin(TrainingJob(run, self.state, [cmd]))

    def stop(self) -> None:
        if self.job is not None:
            self.job.stop()

    def _attach_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Attach to a run folder")
        if folder:
            self.attach(folder)

    def attach(self, folder: str) -> TrainingJob | None:
        p = Path(folder)
        if not (p / "config.yaml").is_file() and not (p / "metrics.jsonl").is_file():
            notify_error(f"{folder}: not a run folder (no config.yaml or metrics.jsonl)", "Training")
            return None
        self.fields["run_dir"].value = p  # the form waits for the engine's import
        from gvsl_app.jobs.training_job import TrainingJob

        return self._begin(TrainingJob(p, self.state))

    def use_checkpoint(self) -> str | None:
        from gvsl_app.jobs.training_job import run_kind

        job = self.job
        ckpt = None if job is None else job.checkpoint()
        if job is None or ckpt is None:
            notify_error("this run has no checkpoint yet", "Training")
            return None
        try:
            kind = run_kind(job.run.path)
        except (OSError, ValueError) as exc:  # an attached folder without (a readable) config.yaml
            notify_error(f"{job.run.path}: cannot tell what the run trains ({exc}); load {ckpt} by hand", "Training")
            return None
        shared = shared_checkpoints(self.viewer)
        if kind == "gvsl":
            shared.gvsl = str(ckpt)
            notify_info(f"{ckpt} selected in the Z-Matching and Feature clusters widgets")
        elif kind == "seg":
            shared.seg = str(ckpt)
            notify_info(f"{ckpt} selected in the Segmentation widget")
        else:
            notify_error("a classification checkpoint has no use in the viewer widgets", "Training")
            return None
        return str(ckpt)

    # -- following -------------------------------------------------------------------------
    def poll(self) -> None:
        job = self.job
        if job is None:
            return
        if job.poll():
            self.plot.update_curves(job.history)
            self._render()  # Stop's state follows the process, which emits no event
        if self.state.status in (DONE, STOPPED, ERROR):
            self.timer.stop()
            if self.state.status == ERROR:
                notify_error(self.state.message, "Training")

    def _render(self, *_) -> None:
        s = self.state
        try:
            # The buttons act on the form's settings: not before it shows them.
            idle = not s.active and self._form is not None
            self.start_button.setEnabled(idle)
            self.resume_button.setEnabled(idle)
            self.attach_button.setEnabled(idle)
            self.stop_button.setEnabled(self.job is not None and self.job.can_stop)
            self.bar.setRange(0, max(s.total, 1))
            self.bar.setValue(min(s.iteration, max(s.total, 1)))
            eta = f" · {s.sec_per_step:.2f} s/it · ETA {format_seconds(s.eta_s)}" if s.status == "running" else ""
            self.bar.setFormat(f"{s.iteration}/{s.total}{eta}")
            text = f"{s.status}: {s.run_dir}" if s.run_dir else "no run"
            if s.message and s.status == ERROR:
                text += f"<br><span style='color:#e06060'>{s.message}</span>"
            self.status.setText(text)
        except RuntimeError:
            pass

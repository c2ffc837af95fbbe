"""The engine's heavy imports (torch, MONAI, openTSNE...), loaded off the GUI thread.

Importing them takes 3-4 s on a small CPU; done when the widgets are built, that was most
of the time before the window appeared. Instead the first widget calls :func:`start`, which
imports them in a background thread shortly after the event loop runs (the window shown).
Code that needs them calls :func:`ready` first (a job's worker thread, or the GUI thread
building the training form), which waits for that thread, or imports in the caller when
none was started; :func:`when_ready` runs GUI work (e.g. listing CUDA devices) afterwards.

A background import still holds the interpreter lock during each extension module's
loading, so the viewer can stall briefly (100-200 ms, a few times) in the seconds after
start, instead of being frozen for the whole import before it is shown.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable

from qtpy.QtCore import QObject, Qt, QTimer, Signal

ENGINE_MODULES = (
    "torch",
    "models",
    "gvsl_app.services.weights",
    "gvsl_app.services.matching",
    "gvsl_app.services.segment",
    "gvsl_app.services.embed",
    "gvsl_app.services.label_metrics",
    "gvsl_app.jobs.training_job",
    "monai.metrics",
    "monai.inferers",
    "openTSNE",
    "sklearn.metrics",
    "scipy.ndimage",
    "matplotlib.backends.backend_qtagg",  # the t-SNE plot's (module code only: widgets are made in the GUI thread)
)
"""What the widgets' jobs import (directly or through the engine), in dependency order."""

START_DELAY_MS = 800
"""How long after the event loop starts the background import begins: the window's first
paint is Python work too (vispy), and sharing the interpreter lock with the import would
delay it by seconds."""

log = logging.getLogger(__name__)
_lock = threading.Lock()
_thread: threading.Thread | None = None
_scheduled = False
_delivered = False
_callbacks: list[Callable[[], None]] = []


class _Notifier(QObject):
    """Carries "imports done" from the background thread to the GUI thread (queued signal)."""

    finished = Signal()


_notifier: _Notifier | None = None


def _import_all() -> None:
    for name in ENGINE_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # e.g. an optional package missing: the job that needs it will say so
            log.debug("warm-up: cannot import %s: %s", name, exc)


def _prime_caches() -> None:
    """Fill vispy's module-level caches that a layer's first insertion would fill in the GUI thread.

    The dash patterns of vispy's line visual (``DashAtlas``, an ``lru_cache`` of pure numpy
    work) took 55-80 ms the first time a Labels layer was added (its polygon overlay draws
    lines): a result layer's insertion stalled the viewer that much longer once per session.
    """
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
    except Exception as exc:  # an older or newer vispy: the insertion fills it then
        log.debug("warm-up: cannot prime vispy's dash patterns: %s", exc)


def _run() -> None:
    _import_all()
    _prime_caches()
    if _notifier is not None:
        _notifier.finished.emit()


def _deliver() -> None:
    """In the GUI thread: run the callbacks waiting for the imports."""
    global _delivered
    with _lock:
        _delivered = True
        waiting = list(_callbacks)
        _callbacks.clear()
    for callback in waiting:
        try:
            callback()
        except RuntimeError:  # the widget that asked was deleted meanwhile
            pass
        except Exception:  # one widget failing to complete must not stop the others
            log.exception("completing a widget after the engine import failed")


def _launch() -> None:
    global _thread
    with _lock:
        if _thread is not None:
            return
        _thread = threading.Thread(target=_run, name="gvsl-warm-up", daemon=True)
    _thread.start()


def start() -> None:
    """Import the engine in a background thread as soon as the GUI thread is idle (once)."""
    global _scheduled, _notifier
    with _lock:
        if _scheduled:
            return
        _scheduled = True
    _notifier = _Notifier()
    _notifier.finished.connect(_deliver, Qt.ConnectionType.QueuedConnection)
    # the outer zero timer fires once the event loop runs; the delay counts from there
    QTimer.singleShot(0, lambda: QTimer.singleShot(START_DELAY_MS, _launch))


def ready() -> None:
    """Return once the engine modules are imported, from any thread.

    Waits for the background import when it is running (a job pressed right after start);
    otherwise imports in the calling thread (also where :func:`start` was never called).
    """
    with _lock:
        thread = _thread
    if thread is not None:
        thread.join()
    else:
        _import_all()


def is_ready() -> bool:
    """True once the background import has finished and its callbacks have run."""
    return _delivered


def when_ready(callback: Callable[[], None]) -> None:
    """Run ``callback`` in the GUI thread once the engine is imported (now if it already is)."""
    with _lock:
        now = _delivered
        if not now:
            _callbacks.append(callback)
    if now:
        callback()
    else:
        start()

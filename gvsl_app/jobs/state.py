"""Job state as small evented dataclasses: workers write them, widgets only subscribe.

``JobState`` follows one background computation (matching, segmentation, embedding),
``TrainingState`` a training process, and ``SharedCheckpoints`` is the per-viewer channel
through which the training widget hands a checkpoint to the other widgets.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from psygnal import evented

from gvsl_app.options import JobStatus

if TYPE_CHECKING:  # what @evented adds, spelled out for the type checker
    from psygnal import SignalGroup, SignalInstance

    class _JobEvents(SignalGroup):
        status: SignalInstance
        stage: SignalInstance
        fraction: SignalInstance
        message: SignalInstance

    class _TrainingEvents(SignalGroup):
        status: SignalInstance
        run_dir: SignalInstance
        iteration: SignalInstance
        total: SignalInstance
        sec_per_step: SignalInstance
        eta_s: SignalInstance
        message: SignalInstance


# the job states are gvsl_app.options.JobStatus members: they compare equal to their text
IDLE, RUNNING, DONE, ERROR = JobStatus.IDLE, JobStatus.RUNNING, JobStatus.DONE, JobStatus.ERROR
STARTING, STOPPING, STOPPED, FOLLOWING = JobStatus.STARTING, JobStatus.STOPPING, JobStatus.STOPPED, JobStatus.FOLLOWING


@evented
@dataclass
class JobState:
    """One background computation's status, stage, progress fraction and last message."""

    if TYPE_CHECKING:
        events: ClassVar[_JobEvents]
    status: str = IDLE
    stage: str = ""
    fraction: float = 0.0
    message: str = ""

    @property
    def running(self) -> bool:
        """Whether the computation is under way."""
        return self.status == RUNNING


@evented
@dataclass
class TrainingState:
    """A training process: status, run folder, iteration of total, speed, time left, message."""

    if TYPE_CHECKING:
        events: ClassVar[_TrainingEvents]
    status: str = IDLE
    run_dir: str = ""
    iteration: int = 0
    total: int = 0
    sec_per_step: float = 0.0
    eta_s: float = 0.0
    message: str = ""

    @property
    def active(self) -> bool:
        """Whether a training process is starting, running, stopping or being followed."""
        return self.status in (STARTING, RUNNING, STOPPING, FOLLOWING)


@evented
@dataclass
class SharedCheckpoints:
    """Checkpoints pushed by the training widget: ``gvsl`` (pre-training) and ``seg``."""

    gvsl: str = ""
    seg: str = ""


_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FALLBACK = SharedCheckpoints()


def shared_checkpoints(viewer) -> SharedCheckpoints:
    """The checkpoint channel of ``viewer`` (one per viewer, created on first use)."""
    if viewer is None:
        return _FALLBACK
    try:
        return _SHARED.setdefault(viewer, SharedCheckpoints())
    except TypeError:  # an object that cannot be weakly referenced
        return _FALLBACK


def format_seconds(seconds: float) -> str:
    """A short duration: ``1h05m``, ``3m07s`` or ``42s``."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")

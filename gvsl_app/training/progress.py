"""Typed progress reports that training loops yield, and the stop flag they obey."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Progress:
    """One report from a running job (training, matching, embedding).

    ``iteration``/``total`` count optimisation steps (or stages); ``losses`` maps each loss
    term to its value at this step; ``eta_s`` is the estimated remaining time; ``phase`` is
    ``"train"``, ``"validate"``, ``"checkpoint"``, ``"done"``, ``"stopped"`` or ``"error"``.
    """

    iteration: int
    total: int
    phase: str = "train"
    losses: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    sec_per_step: float = 0.0
    samples_per_s: float = 0.0
    data_wait_s: float = 0.0
    eta_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


class StopFlag:
    """A thread-safe request to stop at the next step boundary (GUI button, signal handler)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str = "stop requested") -> None:
        """Ask the loop to stop at its next step, saying why."""
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        """Whether a stop was asked for."""
        return self._event.is_set()

    __bool__ = is_set

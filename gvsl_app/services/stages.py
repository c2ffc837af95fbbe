"""Timing and progress of a service's stages, written once instead of at every stage."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ProgressFn = Callable[[str, float], None]


class StageClock:
    """Says each stage's start to ``progress`` (name, fraction of the job) and keeps how long
    it took, as ``seconds[f"{key}_s"]``; ``total_s`` sums them.
    """

    def __init__(self, progress: ProgressFn | None = None) -> None:
        self.say: ProgressFn = progress or (lambda stage, fraction: None)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, key: str, fraction: float, label: str | None = None) -> Iterator[None]:
        """Time the block as stage ``key`` (shown as ``label``, default the key with spaces)."""
        self.say(label or key.replace("_", " "), fraction)
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"{key}_s"] = self.seconds.get(f"{key}_s", 0.0) + time.perf_counter() - t

    def rounded(self) -> dict[str, float]:
        """Each stage's seconds and their ``total_s``, to 0.1 ms."""
        out = {k: round(v, 4) for k, v in self.seconds.items()}
        out["total_s"] = round(sum(self.seconds.values()), 4)
        return out

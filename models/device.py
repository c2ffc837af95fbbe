"""Device choice: ``auto`` picks CUDA, then Apple MPS, then CPU; nothing is hard-coded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a usable ``torch.device``.

    Raises ``ValueError`` with the available choices if the requested one is absent.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; choices: {available_devices()}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} does not exist; choices: {available_devices()}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device 'mps' requested but Apple MPS is not available; choices: {available_devices()}")
    return dev


def available_devices() -> list[str]:
    """Names a user can pick: ``auto``, ``cpu``, each ``cuda:N`` and ``mps`` where present."""
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA for the convolutions; a no-op context elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def threads_for_load(available: int | None = None, load: float | None = None) -> int:
    """CPU threads worth using now: the cores the last minute's load average leaves free, at
    least 1, at most ``available`` (torch's current setting).

    OpenMP threads that outnumber the free cores wait on each other at every operation: on
    the project's 2-core machine, with one core busy training, a ``gvsl match`` refinement
    took 303 s on two threads and 16 s on one.
    """
    import os

    available = available or torch.get_num_threads()
    cores = os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not on every platform
            return available
    return max(1, min(available, int(cores - load + 0.5)))


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads, then restore the setting it found (the
    setting is process-wide: a host application such as napari gets its own back).
    """
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)

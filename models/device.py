"""Device choice: ``auto`` picks CUDA, then Apple MPS, then CPU; nothing is hard-coded."""

from __future__ import annotations

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

"""Checkpoints as data: atomic writes, safe loads, and the official release's key names."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "gvsl-studio"

CHECKSUM_KEY = "model_sha256"
"""Where a checkpoint written by :func:`atomic_torch_save` keeps the checksum of its ``model``
state dict (:func:`state_checksum`); :func:`read_checkpoint` verifies it. Files without one
(older checkpoints, bare state dicts, the authors' release) load as before."""

# Official release prefix -> our module prefix. The backbone keeps the same names.
OFFICIAL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("f_conv.", "affine_head.conv."),
    ("fc_rot.", "affine_head.rotation."),
    ("fc_trans.", "affine_head.translation."),
    ("fc_scl.", "affine_head.scaling."),
    ("fc_shear.", "affine_head.shearing."),
    ("sp_conv.", "deformable_head.conv."),
    ("out_flow.", "deformable_head.flow."),
    ("res_conv.", "restoration_head.layers."),
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a model."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    source_format: str = FORMAT

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors ({self.source_format} format)"]
        if self.missing:
            lines.append(
                f"missing from checkpoint ({len(self.missing)}): "
                + ", ".join(self.missing[:8])
                + (" ..." if len(self.missing) > 8 else "")
            )
        if self.unexpected:
            lines.append(
                f"unexpected in checkpoint ({len(self.unexpected)}): "
                + ", ".join(self.unexpected[:8])
                + (" ..." if len(self.unexpected) > 8 else "")
            )
        return "\n".join(lines)


def state_checksum(state: Mapping[str, Any]) -> str:
    """SHA-256 of a state dict's tensors: each key, dtype, shape and the bytes of its values, in
    key order. It changes when any value does, so a damaged file is told from a good one.
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            continue
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _with_checksum(obj: Any) -> Any:
    """``obj`` with :data:`CHECKSUM_KEY` when it is a checkpoint dict holding a ``model`` state dict."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return {**obj, CHECKSUM_KEY: state_checksum(obj["model"])}
    return obj


def _write_failed(path: Path, exc: RuntimeError) -> OSError:
    """torch.save's "[enforce fail at inline_container.cc:...] ... file write failed" as an
    OSError naming the checkpoint being written (what a user can act on) and the free space.
    """
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OSError(f"disk full writing {path} (or a file size limit reached; {free}): {first}")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """Write with ``torch.save`` to a temporary file in the same folder, fsync, then rename.

    A crash or ``kill -9`` at any moment leaves either the previous file or the new one,
    never a half-written file. A checkpoint dict with a ``model`` state dict gets its
    checksum (:data:`CHECKSUM_KEY`), verified when it is read. A write that fails (a full
    disk) raises an ``OSError`` naming ``path``; the earlier file is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = _with_checksum(obj)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                torch.save(obj, fh)
                fh.flush()
                os.fsync(fh.fileno())
            except RuntimeError as exc:  # PyTorch's stream writer reports ENOSPC this way
                raise _write_failed(path, exc) from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint is shared data
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file as data (``weights_only=True``); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive; files from before PyTorch 1.6 are a pickle (protocol
    # byte 0x80). Anything else is not a checkpoint at all, and saying "it would run code"
    # (what the weights-only unpickler reports for random bytes) would send the user astray.
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint file (it starts with {head!r}; torch.save "
            "writes a zip archive starting with b'PK\\x03\\x04')"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise CheckpointError(
                f"{path}: refused to load: the file contains Python objects that would run code, "
                f"not only tensors ({str(exc).splitlines()[0]}). Re-save it as a plain state_dict "
                "with torch.save(model.state_dict(), ...)"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # torch raises KeyError, RuntimeError, EOFError... for foreign files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict (state_dict or checkpoint), got {type(obj).__name__}")
    stored = obj.get(CHECKSUM_KEY)
    if isinstance(stored, str) and isinstance(obj.get("model"), Mapping) and state_checksum(obj["model"]) != stored:
        raise CheckpointError(
            f"{path}: checksum mismatch, the file is damaged (its weights differ from those written); "
            "use another copy or re-create it"
        )
    return dict(obj)


def model_state(obj: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Extract a state dict from one of our checkpoints, a bare state dict or a wrapped one.

    Returns the state dict in our key names and the detected source format.
    """
    if obj.get("format") == FORMAT:
        return dict(obj["model"]), FORMAT
    for key in ("model", "state_dict", "net", "model_state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith(p) for k in state for p, _ in OFFICIAL_PREFIXES):
        return official_to_ours(state), "official GVSL"
    return state, "state_dict"


def _refuse_non_finite(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse weights with NaN or infinite values (a diverged training): a network with them
    maps every pair to nonsense (NaN features, an all-background warped image), and nothing
    downstream would say why.
    """
    bad = []
    for key, value in state.items():
        if value.is_floating_point() or value.is_complex():
            n = int((~torch.isfinite(value)).sum())
            if n:
                bad.append(f"{key} ({n} of {value.numel()})")
    if bad:
        raise CheckpointError(
            f"{where}the checkpoint holds non-finite parameters (NaN or inf): "
            + ", ".join(bad[:3])
            + (f" and {len(bad) - 3} more tensors" if len(bad) > 3 else "")
            + "; it is damaged or comes from a training that diverged: use another checkpoint"
        )


def official_to_ours(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the authors' release keys (``f_conv``, ``fc_rot``, ...) to ours."""
    out = {}
    for key, value in state.items():
        for old, new in OFFICIAL_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def load_state_into(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    strict: bool = True,
    source_format: str = FORMAT,
    prefix_filter: str | None = None,
    source: str | os.PathLike | None = None,
) -> LoadReport:
    """Copy tensors into ``model``; a shape mismatch always fails, naming the key.

    ``strict`` also fails on missing or unexpected keys. ``prefix_filter`` restricts the
    comparison to keys starting with it (e.g. ``"unet."`` to initialise only a backbone).
    ``source`` (the checkpoint's path) starts every error message, so the user knows which
    file does not fit.
    """
    where = f"{source}: " if source is not None else ""
    own = model.state_dict()
    if prefix_filter:
        own = {k: v for k, v in own.items() if k.startswith(prefix_filter)}
        state = {k: v for k, v in state.items() if k.startswith(prefix_filter)}
    report = LoadReport(source_format=source_format)
    report.missing = sorted(k for k in own if k not in state)
    report.unexpected = sorted(k for k in state if k not in own)
    bad = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if bad:
        widths = getattr(model, "widths", None)
        raise CheckpointError(
            f"{where}checkpoint does not fit the model (another width or architecture?); "
            f"model widths {widths}; mismatched shapes: "
            + "; ".join(bad[:5])
            + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        )
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(f"{where}checkpoint keys do not match the model:\n" + str(report))
    _refuse_non_finite({k: state[k] for k in own if k in state}, where)
    with torch.no_grad():
        for k, v in own.items():
            if k in state:
                v.copy_(state[k].to(v.dtype))
                report.loaded.append(k)
    return report

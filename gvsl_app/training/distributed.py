"""Multi-process training through torchrun: process group set-up and rank helpers.

Under ``torchrun --nproc_per_node=N`` the environment carries ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; we use NCCL on CUDA and gloo on CPU. Without them everything runs as a
single process (rank 0 of 1).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from models.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a distributed run: rank, number of ranks, GPU index on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether the run has more than one rank."""
        return self.world > 1


def setup(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=collective_timeout())
    return DistInfo(rank, world, local), dev


DEFAULT_TIMEOUT_S = 1800


def collective_timeout() -> datetime.timedelta:
    """How long a collective waits for the other ranks before it fails with the reason:
    ``GVSL_DIST_TIMEOUT_S`` seconds (default 30 minutes, torch's own; the tests set 2 minutes,
    so a rank that is gone fails their run with gloo's message instead of their time limit).
    """
    raw = os.environ.get("GVSL_DIST_TIMEOUT_S", "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"GVSL_DIST_TIMEOUT_S must be a number of seconds, got {raw!r}") from None
    if not 0 < seconds < float("inf"):
        raise ValueError(f"GVSL_DIST_TIMEOUT_S must be a positive number of seconds, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def teardown() -> None:
    """Leave the process group, every rank together.

    The ranks meet at a barrier first, then each destroys its group, so no rank closes its
    gloo connections while a peer may still be inside a collective with it (the last
    all-gather of ``finish``, while rank 0 then writes ``report.json``). A gloo rank whose peer
    closes a connection in the middle of an operation throws in gloo's own thread and ends
    with SIGABRT; that is the likely cause of issue #31's "rank 1 killed by SIGABRT inside a
    loaded full run", which was not reproduced here (about 100 torchrun runs, under load,
    with and without the barrier). A peer already gone (it failed) makes the barrier raise
    at once: there is nothing left to wait for.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
    except RuntimeError:
        pass
    dist.destroy_process_group()


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class PeerError(RuntimeError):
    """Another process of a multi-process run stopped with an error; this one stops too."""


@contextlib.contextmanager
def together(info: DistInfo, device: torch.device) -> Iterator[None]:
    """Run the block on every rank; when it raised on any, raise on every rank.

    Rank 0 alone checks and locks the run folder, and a rank that went on without it would
    wait in its next collective forever (NCCL) or die with a bare "connection closed" (gloo).
    The rank that failed raises its own error, the others :class:`PeerError`.
    """
    error: Exception | None = None
    try:
        yield
    except Exception as exc:
        error = exc
    failed = broadcast_flag(error is not None, info, device)
    if error is not None:
        raise error
    if failed:
        raise PeerError(f"rank {info.rank}: another rank of this run stopped with an error (rank 0 prints it)")

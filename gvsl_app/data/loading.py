"""Reproducible loading: per-item seeds, the training loops' sampler and DataLoader recipe.

Randomness is a pure function of ``(seed, epoch, index)``: every item builds its own
generator from those three numbers, so what an item holds does not depend on which worker
process or DDP rank loads it, on the number of workers, or on what was loaded before. An
index is either an ``int`` (the dataset's ``epoch`` attribute is used) or an
``(epoch, index)`` tuple. Training draws global sample indices in order from the step it
starts at (:class:`StepSampler`), so a resumed run sees exactly the samples it would have.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, epoch, index)``."""
    if index < 0 or epoch < 0:
        raise IndexError(f"index and epoch must be >= 0, got index {index}, epoch {epoch}")
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index)]).generate_state(
        2, np.uint32
    )
    return (int(state[0]) << 31) ^ int(state[1])


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded with :func:`item_seed`."""
    return torch.Generator().manual_seed(item_seed(seed, epoch, index))


def split_key(key, default_epoch: int) -> tuple[int, int]:
    """``(epoch, index)`` of a sampler key: a plain index or an ``(epoch, index)`` pair."""
    if isinstance(key, (tuple, list)):
        epoch, index = key
    else:
        epoch, index = default_epoch, key
    if isinstance(index, torch.Tensor):
        index = int(index)
    if isinstance(epoch, torch.Tensor):
        epoch = int(epoch)
    return int(epoch), int(index)


def batch_generator(batch: dict, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded from a batch's ``seed`` entries (for on-device augmentation)."""
    seeds = batch["seed"].reshape(-1).tolist()
    mixed = np.random.SeedSequence([int(s) & 0xFFFFFFFFFFFFFFFF for s in seeds]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed((int(mixed[0]) << 31) ^ int(mixed[1]))


def worker_init(worker_id: int) -> None:
    """One compute thread per worker (no oversubscription) and seeded numpy/random for any
    third-party code; our own items never use these global generators.
    """
    import random
    import signal

    # Ctrl-C in a terminal (and a GUI's or a scheduler's kill of the process group) reaches
    # the workers too; they must leave stopping to the main process, which saves last.pt
    # and then shuts them down. Orphaned workers still exit through DataLoader's watchdog.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


class StepSampler(Sampler[int]):
    """Global sample indices from ``start`` on, interleaved across ranks (what training uses).

    Sample ``k`` of rank ``r`` is ``k * world + r``; each index fully determines its pair
    (or patch) and augmentation, so a resumed run sees exactly the samples it would have
    seen, on any number of workers.
    """

    def __init__(self, start: int, count: int, rank: int = 0, world: int = 1):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, world={world})")
        self.start, self.count, self.rank, self.world = int(start), int(count), int(rank), int(world)

    def __iter__(self):
        for k in range(self.start, self.start + self.count):
            yield k * self.world + self.rank

    def __len__(self) -> int:
        return self.count


def step_loader(
    dataset: Dataset,
    *,
    start: int,
    count: int,
    batch: int,
    workers: int,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
    prefetch_factor: int = 4,
) -> DataLoader:
    """The training loops' DataLoader: ``count`` samples from global sample ``start`` on.

    :class:`StepSampler` order (resumable, sharded across ranks), ``workers`` persistent
    processes with ``prefetch_factor`` batches each in flight and one compute thread each
    (:func:`worker_init`), pinned memory for CUDA. Shut it down with :func:`close_loader`.
    """
    workers = max(0, int(workers))
    return DataLoader(
        dataset,
        batch_size=int(batch),
        sampler=StepSampler(start, count, rank, world),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=worker_init if workers > 0 else None,
        prefetch_factor=prefetch_factor if workers > 0 else None,
    )


def close_loader(iterator) -> None:
    """Shut DataLoader workers down through their done event, also when leaving on an
    exception; workers ignore SIGTERM (see :func:`worker_init`), so they must never be
    left for multiprocessing's exit hook to terminate.
    """
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()

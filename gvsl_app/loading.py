"""Reproducible loading: per-item seeds, epoch-aware sharding and the DataLoader recipe.

Randomness is a pure function of ``(seed, epoch, index)``: every item builds its own
generator from those three numbers, so what an item holds does not depend on which worker
process or DDP rank loads it, on the number of workers, or on what was loaded before. An
index is either an ``int`` (the dataset's ``epoch`` attribute is used) or an
``(epoch, index)`` tuple, which is what :class:`EpochShardSampler` yields so that the epoch
reaches persistent workers too.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, epoch, index)``."""
    if index < 0 or epoch < 0:
        raise IndexError(f"index and epoch must be >= 0, got index {index}, epoch {epoch}")
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index)]).generate_state(2, np.uint32)
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


class EpochShardSampler(Sampler):
    """DistributedSampler semantics (shuffle per epoch with ``seed + epoch``, pad to a
    multiple of ``world``, rank ``r`` takes every ``world``-th index from ``r``) that yields
    ``(epoch, index)`` keys, so the epoch reaches persistent worker processes.
    Call ``set_epoch(e)`` before each epoch. ``with_epoch=False`` yields plain indices.
    """

    def __init__(self, n: int, *, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True,
                 drop_last: bool = False, with_epoch: bool = True) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, world={world})")
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.rank, self.world = int(n), int(seed), int(rank), int(world)
        self.shuffle, self.drop_last, self.with_epoch, self.epoch = shuffle, drop_last, with_epoch, 0
        self.num_samples = self.n // self.world if drop_last else math.ceil(self.n / self.world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.num_samples * self.world
        if total > len(order):
            order = (order * math.ceil(total / len(order)))[:total]
        order = order[:total][self.rank:total:self.world]
        for i in order:
            yield (self.epoch, i) if self.with_epoch else i

    def __len__(self) -> int:
        return self.num_samples


def worker_init(worker_id: int) -> None:
    """One compute thread per worker (no oversubscription) and seeded numpy/random for any
    third-party code; our own items never use these global generators."""
    import random
    import signal

    # Ctrl-C in a terminal (and a GUI's or a scheduler's kill of the process group) reaches
    # the workers too; they must leave stopping to the main process, which saves last.pt
    # and then shuts them down. Orphaned workers still exit through DataLoader's watchdog.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    s = torch.initial_seed() % 2 ** 32
    np.random.seed(s)
    random.seed(s)


def make_loader(dataset: Dataset, batch: int, workers: int, seed: int, rank: int = 0, world: int = 1, *,
                shuffle: bool = True, drop_last: bool = False, pin_memory: bool | None = None,
                prefetch_factor: int = 4) -> DataLoader:
    """A DataLoader whose batches are reproducible for a given ``(seed, epoch)``.

    Sharding as ``DistributedSampler`` (:class:`EpochShardSampler`; call
    ``loader.sampler.set_epoch(epoch)`` each epoch), persistent workers with
    ``prefetch_factor`` batches each in flight, one thread per worker, ``pin_memory`` when
    CUDA is available (unless told otherwise).
    """
    sampler = EpochShardSampler(len(dataset), seed=seed, rank=rank, world=world, shuffle=shuffle,
                                drop_last=drop_last, with_epoch=getattr(dataset, "supports_epoch_keys", False))
    workers = max(0, int(workers))
    return DataLoader(
        dataset, batch_size=int(batch), sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0, prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(int(seed)),
    )

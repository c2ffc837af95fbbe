"""Memory estimated before a large allocation: refuse what cannot fit, saying how much it needs.

A volume's header, a label map's number of structures or a training batch tell how much
memory the work will take before any of it is allocated. Checking first turns what would be
a ``MemoryError`` traceback (or the kernel's OOM killer) minutes into a run into one line that
names the file or option, the estimate and the memory available, and says what to change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

GIB = 1024**3

FLOAT32 = 4
"""Bytes of one float32 voxel: the type every volume is processed in."""


class MemoryEstimateError(ValueError):
    """The work asked for needs more memory than is available; the message says how much."""


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom() -> int | None:
    """What a cgroup v2 memory limit (a container's) still allows this process, if one is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def available_bytes() -> int:
    """Memory this process can still allocate without swapping: the system's available memory
    (``MemAvailable``; psutil's figure where /proc is missing), capped by a container's limit.
    """
    found = [b for b in (_meminfo_available(), _cgroup_headroom()) if b is not None]
    if not found:
        try:
            import psutil

            found.append(int(psutil.virtual_memory().available))
        except ImportError:  # pragma: no cover - every platform we ship on has one of the three
            return 2**62
    return min(found)


def gib(n_bytes: float) -> str:
    """``n_bytes`` as GiB with one decimal (``5.0 GiB``)."""
    return f"{n_bytes / GIB:.1f} GiB"


def check_fits(needed: int, what: str, advice: str, free: int | None = None, where: str = "") -> None:
    """Refuse ``needed`` bytes when more than ``free`` (default :func:`available_bytes`): raise
    :class:`MemoryEstimateError` with ``what`` (the culprit and the estimate, e.g. ``"x.nii.gz
    declares 1100 x 1100 x 1100 voxels (5.0 GiB as float32 ...)"``), the memory available
    (``where``: on which device) and ``advice`` (what to change).
    """
    free = available_bytes() if free is None else free
    if needed > free:
        raise MemoryEstimateError(f"{what}, more than the {gib(free)} available{where}; {advice}")


def check_volume_fits(path: str | os.PathLike, size_xyz: tuple[int, ...], bytes_per_voxel: int, purpose: str) -> None:
    """Refuse a volume whose header declares more voxels than ``purpose`` can hold in memory.

    ``size_xyz`` is the header's size (x, y, z: what ITK reports); ``bytes_per_voxel`` what
    the command needs per voxel at its peak (a few float32 copies to read it, many more to
    match onto it).
    """
    n = 1
    for s in size_xyz[:3]:
        n *= int(s)
    shown = " x ".join(str(int(s)) for s in size_xyz[:3])
    check_fits(
        n * bytes_per_voxel,
        f"{path} declares {shown} voxels ({gib(n * FLOAT32)} as float32; {purpose} needs about "
        f"{gib(n * bytes_per_voxel)})",
        "crop or resample it",
    )


def one_hot_bytes(n_labels: int, n_voxels: int) -> int:
    """Memory of comparing two label maps structure by structure: a float32 one-hot of each
    (``n_labels`` channels of ``n_voxels``) and the boolean masks they are made from.
    """
    return n_labels * n_voxels * (2 * FLOAT32 + 2)


PRETRAIN_BYTES_PER_SAMPLE_VOXEL_WIDTH = 320
"""Peak memory of one pre-training sample per voxel of its cube and unit of base width: the
activations the backward pass keeps for both scans, the matching and the restoration (~295
bytes measured at --size 48 --width 4 on a CPU, batch 1 against 8)."""


FINETUNE_BYTES_PER_SAMPLE_VOXEL_WIDTH = 80
"""The same for one fine-tuning sample (one scan through the U-Net and its head): ~65 bytes
measured at --size 48 with widths 4 and 8 on a CPU (batch 1 against 4)."""


def check_training_fits(
    batch: int, size: int, width: int, device: Any, per_voxel_width: int = PRETRAIN_BYTES_PER_SAMPLE_VOXEL_WIDTH
) -> None:
    """Refuse a training batch whose activations cannot fit on ``device`` (a ``torch.device``:
    the GPU's free memory for CUDA, the host's available memory for the CPU; other devices are
    not checked), naming ``--batch``, ``--size`` and ``--width`` and the estimate, before
    anything is allocated. ``per_voxel_width`` is the job's bytes per sample, cube voxel and
    unit of base width (pre-training's by default, :data:`FINETUNE_BYTES_PER_SAMPLE_VOXEL_WIDTH`
    for fine-tuning).
    """
    if device.type == "cuda":
        import torch

        free, where = int(torch.cuda.mem_get_info(device)[0]), f" on {device}"
    elif device.type == "cpu":
        free, where = None, ""
    else:
        return
    needed = batch * size**3 * width * per_voxel_width
    check_fits(
        needed,
        f"--batch {batch} at --size {size} and --width {width} needs about {gib(needed)} for training",
        "lower --batch (or --size, --width)",
        free,
        where,
    )

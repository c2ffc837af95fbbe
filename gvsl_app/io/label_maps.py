"""Checks on label maps once read: whether their structures are few enough to compare one by one."""

from __future__ import annotations

import numpy as np

from gvsl_app.io.volume import Volume
from gvsl_app.memory import FLOAT32, check_fits, gib, one_hot_bytes


def check_labels_fit(*maps: Volume) -> int:
    """Refuse label maps whose structures are too many to compare one by one (Dice per label
    makes a one-hot of each map, :func:`gvsl_app.memory.one_hot_bytes`), naming the file with
    the most labels, the count and the estimate; returns the number of distinct labels.

    Call it on the label maps of one comparison (matching's fixed and moving labels, a
    segmentation and its reference) once they are read and before any per-label work.
    """
    present = [np.unique(m.array) for m in maps]
    if not present:
        return 0
    union = np.unique(np.concatenate(present))
    n_labels = int(np.count_nonzero(union))
    n_voxels = max(m.array.size for m in maps)
    worst = max(range(len(maps)), key=lambda i: np.count_nonzero(present[i]))
    name = maps[worst].source or "the label map"
    shape = " x ".join(str(s) for s in maps[worst].shape)
    check_fits(
        one_hot_bytes(n_labels, n_voxels),
        f"{name} holds {int(np.count_nonzero(present[worst]))} distinct labels ({n_labels} in all): Dice per "
        f"structure needs a {n_labels} x {shape} one-hot ({gib(n_labels * n_voxels * FLOAT32)} as float32, about "
        f"{gib(one_hot_bytes(n_labels, n_voxels))} in all)",
        "is it a label map? Merge or drop structures (keep those to compare) or crop it",
    )
    return n_labels

"""How the datasets read volumes and bring them to the network's input range and size.

Shared by the pre-training pairs (:mod:`gvsl_app.data.pair_dataset`) and the labelled
downstream datasets (:mod:`gvsl_app.data.labelled`). The readers and resamplers are imported
on first use, so importing a dataset module does not load SimpleITK.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gvsl_app.io.volume import Volume


def normalise_input(vol_or_array: Volume | np.ndarray, modality: str | None) -> np.ndarray:
    """Intensities scaled to [0, 1] as float32 (see :func:`gvsl_app.data.preprocess.normalise`).

    ``modality`` ``"auto"``, ``"ct"`` or ``"mr"`` selects the normalisation; ``None`` means the
    values are already in [0, 1], so they are only cleaned (NaN to 0) and clipped.
    """
    if modality is None:  # arrays already scaled to [0, 1]
        arr = vol_or_array.array if isinstance(vol_or_array, Volume) else np.asarray(vol_or_array)
        return np.clip(np.nan_to_num(arr.astype(np.float32, copy=False)), 0.0, 1.0)
    from gvsl_app.data.preprocess import normalise

    return normalise(vol_or_array, modality)


def resize(array: np.ndarray, shape: int | tuple[int, int, int], is_label: bool = False) -> np.ndarray:
    """``array`` resampled to ``shape`` (nearest neighbour for label maps)."""
    from gvsl_app.data.preprocess import resize_array

    return resize_array(array, shape, is_label=is_label)


def read_image(path: Path) -> Volume:
    """The image volume at ``path`` (any format :func:`gvsl_app.io.images.read_volume` reads)."""
    from gvsl_app.io.images import read_volume

    return read_volume(path)


def read_label(path: Path, reference: Volume) -> Volume:
    """The label map at ``path``, checked to lie on the grid of the image ``reference``."""
    from gvsl_app.io.images import read_labels

    return read_labels(path, reference=reference)

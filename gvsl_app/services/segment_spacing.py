"""The voxel spacings a segmenter was trained at, and the grid an image is resampled to for it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gvsl_app.io.volume import Volume

_CARDIAC = ("LV", "RV", "LA", "RA", "Myocardium", "Aorta", "Pulmonary artery")
KNOWN_TRAINING_SPACING: dict[tuple[str, tuple[str, ...]], dict[str, list]] = {
    ("runs/demo_seg_data", _CARDIAC): {
        "spacing": [1.1388, 1.1388, 1.6220],
        "spacing_range": [[0.9327, 0.9327, 1.3522], [1.1804, 1.1804, 1.7492]],
    },
    ("runs/brain_seg_data", ("Grey matter", "White matter", "CSF/other brain")): {
        "spacing": [1.6421, 2.0211, 1.6842],
        "spacing_range": [[1.6421, 2.0211, 1.6842], [1.6421, 2.0211, 1.6842]],
    },
}
"""Training voxel spacings (mm, ITK x, y, z: median and range) of the shipped segmenters, saved
before checkpoints recorded them: the training split of ``gvsl sample cardiac --n 10 --seed 5``
and ``gvsl sample brain --n 14 --seed 7`` at 96^3 (models/weights/README.md), keyed by the
training data folder and the label names (in label order) those checkpoints record."""

SPACING_SLACK = 0.10
"""An input spacing within 10 % of the training spacings on an axis keeps that axis (the fast
path: no resampling). Measured with the shipped cardiac segmenter: resampling a 96^3 phantom
by a few per cent moves its Dice by noise (+-0.04 either way), while a 40^3 scan at 2.8 mm
goes from 0.07 to 0.75; so only voxels clearly unlike the training ones are resampled."""


@dataclass(frozen=True)
class TrainingSpacing:
    """The voxel spacings (mm, ITK x, y, z) a segmenter was trained at: their median, their
    range (``low`` to ``high`` per axis; the median alone when the checkpoint records no
    range) and where this record comes from (``source``).
    """

    median: tuple[float, float, float]
    low: tuple[float, float, float]
    high: tuple[float, float, float]
    source: str

    def target(self, spacing: tuple[float, float, float]) -> tuple[float, float, float] | None:
        """The spacing to resample an image of ``spacing`` to, or ``None`` to keep its grid.

        Per axis: a spacing within :data:`SPACING_SLACK` of the training range is kept (the
        network was trained at voxels like it, and interpolation only costs), any other
        moves to the nearest training spacing (a coarse 40^3 scan is upsampled).
        """
        s = np.asarray(spacing, dtype=float)
        low, high = np.asarray(self.low), np.asarray(self.high)
        near = (s >= low / (1 + SPACING_SLACK)) & (s <= high * (1 + SPACING_SLACK))
        if near.all():
            return None
        out = np.where(near, s, np.clip(s, low, high))
        return (float(out[0]), float(out[1]), float(out[2]))


def _xyz(values) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def training_spacing(ck: dict) -> TrainingSpacing | None:
    """The training voxel spacing of a segmentation checkpoint: its ``preprocess`` record
    (``spacing`` and ``spacing_range``, written by ``gvsl finetune``), else that of a shipped
    segmenter (:data:`KNOWN_TRAINING_SPACING`), else ``None`` (unknown).
    """
    record, source = ck.get("preprocess") or {}, "checkpoint"
    if record.get("spacing") is None:
        names = ck.get("label_names") or {}
        key = (str((ck.get("config") or {}).get("data", "")), tuple(names[k] for k in sorted(names, key=int)))
        record, source = KNOWN_TRAINING_SPACING.get(key, {}), "shipped segmenter's training data"
    if record.get("spacing") is None:
        return None
    median = _xyz(record["spacing"])
    low, high = record.get("spacing_range") or (median, median)
    return TrainingSpacing(median, _xyz(low), _xyz(high), source)


def resampling_grid(image: Volume, spacing: tuple[float, float, float]) -> Volume:
    """An empty grid (a ``Volume`` of zeros) over ``image``'s field of view at ``spacing``.

    Same direction; the voxel count per axis keeps the extent (``n * s / s'``, rounded), and
    the first voxel is placed so that both grids share the field of view's corner, so a
    label map resampled back covers the image to its edges.
    """
    n_xyz = np.array(image.shape[::-1], dtype=float)
    old, new = np.array(image.spacing), np.array(spacing, dtype=float)
    size = np.maximum(1, np.round(n_xyz * old / new)).astype(int)
    shift = image.direction_matrix @ ((new - old) / 2.0)  # corner at origin - s/2 on both grids
    origin = np.array(image.origin) + shift
    zeros = np.zeros(tuple(int(v) for v in size[::-1]), dtype=np.uint8)
    return Volume(zeros, spacing=_xyz(new), origin=_xyz(origin), direction=image.direction)

"""Bundled sample data for the GUI, the demo and the ``gvsl sample`` command.

Nothing is downloaded: a "bundled" pair is regenerated deterministically from fixed seeds
(:data:`SAMPLE_PAIR_SEEDS`), the cardiac one from the synthetic phantom, the brain one from the
MNI template that ships with nilearn.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from gvsl_app.io.volume import Volume

__all__ = [
    "DATASET_ENTRIES",
    "DATASET_KINDS",
    "LABEL_TABLE",
    "SAMPLE_KINDS",
    "SAMPLE_PAIR_SEEDS",
    "sample_pair",
    "write_samples",
]

SAMPLE_KINDS = ("cardiac", "brain")
DATASET_KINDS = ("cardiac", "cardiac-hard", "brain")
"""What :func:`write_samples` (``gvsl sample``) writes: the sample pairs' kinds and
``cardiac-hard`` (:mod:`gvsl_app.data.cardiac_hard`), a downstream set with no bundled pair."""
SAMPLE_PAIR_SEEDS: dict[str, tuple[int, int]] = {"cardiac": (11, 12), "brain": (21, 22)}
"""(fixed, moving) subject seeds of the bundled pair of each kind."""

DATASET_ENTRIES = ("images", "labels", "labels.csv")
"""What :func:`write_samples` writes in its folder (``labels.csv`` only for classification):
what ``gvsl sample --overwrite`` replaces, so no subject of an earlier data set stays."""

LABEL_TABLE = "labels/labels.txt"
"""The structure names and colours of a written data set, an ITK-SNAP label description file
beside the label maps, where :func:`gvsl_app.io.label_tables.find_label_table` finds it (the
reader, the Label explorer and ``gvsl evaluate-labels`` then say LV, RV, not label 1, 2)."""


def _check_kind(kind: str, kinds: tuple[str, ...] = SAMPLE_KINDS) -> str:
    if kind not in kinds:
        raise ValueError(f"unknown sample kind {kind!r}; choose one of {', '.join(kinds)}")
    return kind


def _label_info(kind: str) -> tuple[dict, dict]:
    if kind in ("cardiac", "cardiac-hard"):
        from gvsl_app.data.synthetic import CARDIAC_COLORS, CARDIAC_LABELS

        return dict(CARDIAC_LABELS), dict(CARDIAC_COLORS)
    from gvsl_app.data.brain import BRAIN_COLORS, BRAIN_LABELS

    return dict(BRAIN_LABELS), dict(BRAIN_COLORS)


def _subject(kind: str, seed: int, shape) -> tuple[Volume, Volume]:
    if kind == "cardiac":
        from gvsl_app.data.synthetic import make_cardiac_subject

        return make_cardiac_subject(seed, shape)
    from gvsl_app.data.brain import make_brain_subject

    return make_brain_subject(seed, shape)


@lru_cache(maxsize=4)
def _pair(kind: str, shape) -> tuple[Volume, Volume, Volume, Volume]:
    fixed_seed, moving_seed = SAMPLE_PAIR_SEEDS[kind]
    return (*_subject(kind, fixed_seed, shape), *_subject(kind, moving_seed, shape))


def sample_pair(kind: str, shape=(96, 96, 96)) -> dict:
    """The bundled (fixed, moving) pair of ``kind`` ('cardiac' or 'brain').

    Returns a dict with ``fixed_image``, ``fixed_labels``, ``moving_image``, ``moving_labels``
    (:class:`Volume`, each on its own grid: the two subjects differ in pose, shape, and for the
    cardiac pair in voxel spacing), ``label_names`` ({value: name}), ``label_colors``
    ({value: (r, g, b)} 0-255), ``seeds`` ((fixed, moving)) and ``kind``. The pair is the same on
    every call and every machine; the volumes are fresh copies the caller may modify.
    """
    _check_kind(kind)
    key_shape = None if shape is None else tuple(int(s) for s in shape)
    if kind == "cardiac" and key_shape is None:
        raise ValueError("the cardiac sample needs an explicit shape")
    fi, fl, mi, ml = _pair(kind, key_shape)
    names, colors = _label_info(kind)

    def copy(v: Volume) -> Volume:
        return v.with_array(v.array.copy(), meta=dict(v.meta))

    return {
        "kind": kind,
        "fixed_image": copy(fi),
        "fixed_labels": copy(fl),
        "moving_image": copy(mi),
        "moving_labels": copy(ml),
        "label_names": names,
        "label_colors": colors,
        "seeds": SAMPLE_PAIR_SEEDS[kind],
    }


def write_samples(
    kind: str,
    out: str | os.PathLike,
    n: int = 8,
    seed: int = 0,
    classification: bool = False,
    *,
    shape=(96, 96, 96),
    contrast: str = "ct",
) -> Path:
    """Write a data folder of ``n`` subjects of ``kind`` (what ``gvsl sample`` runs); returns ``out``.

    ``cardiac``: :func:`gvsl_app.data.synthetic.cardiac_dataset` (``classification=True`` adds
    ``labels.csv`` with about half abnormal subjects); ``cardiac-hard``:
    :func:`gvsl_app.data.cardiac_hard.cardiac_hard_dataset` (CT, no classification); ``brain``:
    :func:`gvsl_app.data.brain.brain_dataset` (no classification variant). Subject ``i`` uses the seed
    ``seed * 100003 + i``. ``contrast="mr"`` (cardiac) renders the same subjects as cine MR.
    The structure names and colours go to :data:`LABEL_TABLE`.
    """
    from gvsl_app.io.label_tables import LabelTable, write_label_table

    _check_kind(kind, DATASET_KINDS)
    if kind == "cardiac":
        from gvsl_app.data.synthetic import cardiac_dataset

        folder = cardiac_dataset(out, n, seed, shape=shape, classification=classification, contrast=contrast)
    elif kind == "cardiac-hard":
        if contrast != "ct" or classification:
            raise ValueError(
                "cardiac-hard samples are CT segmentation subjects (no --contrast mr, no --classification)"
            )
        from gvsl_app.data.cardiac_hard import cardiac_hard_dataset

        folder = cardiac_hard_dataset(out, n, seed, shape=shape)
    else:
        if contrast != "ct":
            raise ValueError("--contrast mr is for the cardiac samples (the brain samples are MR already)")
        if classification:
            raise ValueError("classification datasets exist only for the cardiac samples")
        from gvsl_app.data.brain import brain_dataset

        folder = brain_dataset(out, n, seed, shape=shape)
    names, colors = _label_info(kind)
    write_label_table(LabelTable(names, colors), folder / LABEL_TABLE)
    return Path(folder)

"""Evaluation metrics (MONAI's Dice, scikit-learn's AUC and silhouette) on numpy arrays."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: list[int] | None = None) -> dict[int, float]:
    """Dice of each foreground label (MONAI ``compute_dice``); NaN for a label absent from both.

    A structure in neither map has no overlap to score (0/0): it is undefined, not perfect,
    as in ``gvsl evaluate-labels``. :func:`mean_dice` and :func:`mean_dice_over_cases` leave
    it out of their means; the JSON reports write it as ``null``.
    """
    from monai.metrics import compute_dice

    labels = (
        labels if labels is not None else sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v != 0)
    )
    if not labels:
        return {}
    p = torch.from_numpy(np.stack([pred == l for l in labels])[None].astype(np.float32))
    r = torch.from_numpy(np.stack([ref == l for l in labels])[None].astype(np.float32))
    d = compute_dice(p, r, include_background=True, ignore_empty=False)[0]
    # MONAI's ignore_empty=True would also blank a label missed entirely (empty reference,
    # labelled prediction: Dice 0), so only the both-empty case is made undefined here.
    absent = (p.sum(dim=(2, 3, 4)) + r.sum(dim=(2, 3, 4)))[0] == 0
    return {int(l): float("nan") if bool(e) else float(v) for l, v, e in zip(labels, d, absent)}


def _defined(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def dice_text(value: float | None, digits: int = 4) -> str:
    """A Dice for people to read: ``digits`` decimals, or ``n/a`` when undefined (NaN or ``None``:
    a structure in neither map).
    """
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def mean_dice(per_label: Mapping[Any, float | None]) -> float:
    """Mean of the defined Dice values (NaN or ``None``, a label absent from both, left out); NaN when none is."""
    vals = _defined(per_label.values())
    return float(np.mean(vals)) if vals else float("nan")


def mean_dice_over_cases(per_case: Iterable[Mapping[int, float]], labels: Iterable[int]) -> dict[int, float]:
    """Per label, the mean Dice over the cases where it is defined (NaN when it is in none).

    Averaging with ``np.mean`` would turn a label into NaN as soon as one case lacks it in
    both maps; this averages the cases that have something to score.
    """
    cases = list(per_case)
    out = {}
    for l in labels:
        vals = _defined(d.get(l) for d in cases)
        out[int(l)] = float(np.mean(vals)) if vals else float("nan")
    return out


def auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (scikit-learn); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(roc_auc_score(y_true, score))


def label_volumes_ml(labels: np.ndarray, spacing: tuple[float, float, float]) -> dict[int, float]:
    """Volume of each non-zero label in millilitres."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    values, counts = np.unique(labels[labels != 0], return_counts=True)
    return {int(v): float(c) * voxel_ml for v, c in zip(values, counts)}

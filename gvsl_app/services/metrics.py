"""Evaluation metrics (MONAI's Dice, scikit-learn's AUC and silhouette) on numpy arrays."""

from __future__ import annotations

import numpy as np
import torch


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: list[int] | None = None) -> dict[int, float]:
    """Dice of each foreground label (MONAI ``compute_dice``); a label absent from both is 1.0."""
    from monai.metrics import compute_dice

    labels = (
        labels if labels is not None else sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v != 0)
    )
    if not labels:
        return {}
    p = torch.from_numpy(np.stack([pred == l for l in labels])[None].astype(np.float32))
    r = torch.from_numpy(np.stack([ref == l for l in labels])[None].astype(np.float32))
    d = compute_dice(p, r, include_background=True, ignore_empty=False)[0]
    return {int(l): float(v) for l, v in zip(labels, d)}


def mean_dice(per_label: dict[int, float]) -> float:
    return float(np.mean(list(per_label.values()))) if per_label else float("nan")


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

"""Means and spreads of the paper-table study: the values one invocation measured, their mean
and standard deviation over the seeds per task, evaluation and method, and the mean silhouettes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .plan import METHODS, MODES, TASKS


def _per_seed_table() -> dict:
    return {task: {mode: {m: {} for m in METHODS} for mode in MODES} for task in TASKS}


@dataclass
class Measurements:
    """What one invocation measured and recorded, filled in seed by seed by the study's main loop."""

    per_seed: dict = field(default_factory=_per_seed_table)  # [task][mode][method][seed] -> test Dice / AUC
    sil_seed: dict[str, dict] = field(default_factory=lambda: {m: {} for m in METHODS})  # [method][seed] -> silhouette
    sil2d: dict[str, float] = field(default_factory=dict)  # [method] -> t-SNE silhouette of the first seed
    points: dict[str, dict] = field(default_factory=dict)  # [method] -> t-SNE xy and labels of the first seed
    run_walls: dict[str, float] = field(default_factory=dict)  # run -> its own compute seconds
    reused: int = 0  # runs reused from an earlier invocation


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values (NaN, NaN, 0 if none)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def summarise(per_seed: dict, seeds: list[int]) -> tuple[dict, dict]:
    """Mean/std/n per task, mode, method from ``per_seed[task][mode][method][seed]``."""
    mean: dict = {t: {m: {} for m in MODES} for t in TASKS}
    spread: dict = {t: {m: {} for m in MODES} for t in TASKS}
    for t in TASKS:
        for mode in MODES:
            for method in METHODS:
                vals = [per_seed[t][mode][method].get(s, float("nan")) for s in seeds]
                mu, sd, n = mean_std(vals)
                mean[t][mode][method] = mu
                spread[t][mode][method] = {"std": sd, "n": n}
    return mean, spread


def silhouette_summary(sil_seed: dict[str, dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation over the seeds of each method's silhouette, from ``sil_seed[method][seed]``."""
    sil = {m: mean_std(sil_seed[m].values())[0] for m in METHODS}
    sil_sd = {m: mean_std(sil_seed[m].values())[1] for m in METHODS}
    return sil, sil_sd

"""GVSL against every other row of the paper-table study, seed by seed: the paired
differences per task and evaluation (and of the silhouette) and their section of RESULTS.md.
"""

from __future__ import annotations

import math

from scipy import stats

from .plan import METHOD_TITLES, METHODS, MODES, TASK_SHORT, TASKS
from .stats import mean_std


def paired_t_p(mean: float, std: float, n: int) -> float:
    """Two-sided p-value of a paired t-test (``scipy.stats.ttest_rel``) from the differences'
    mean, sample standard deviation and count; NaN below two seeds or when every difference is equal.
    """
    if n < 2 or not math.isfinite(mean) or not std > 0:
        return float("nan")
    t = mean / (std / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1))


def seeds_for_p(mean: float, std: float, alpha: float = 0.05, most: int = 100) -> int | None:
    """How many seeds a paired t-test would need for ``p < alpha`` if the differences' mean and
    standard deviation stayed as measured (a planning figure, not a result); None beyond ``most``.
    """
    for n in range(2, most + 1):
        if paired_t_p(mean, std, n) < alpha:
            return n
    return None


def paired_difference(ref: dict, other: dict, seeds: list[int]) -> dict:
    """``ref[seed] - other[seed]`` over the seeds where both are finite: the differences, their
    mean, sample standard deviation and count, on how many seeds ``ref`` is ahead, the two-sided
    paired t-test p-value and how many seeds ``p < 0.05`` would take if mean and spread held.
    """
    diffs = [ref[s] - other[s] for s in seeds if s in ref and s in other and math.isfinite(ref[s] - other[s])]
    mu, sd, n = mean_std(diffs)
    return {
        "diffs": diffs,
        "mean": mu,
        "std": sd,
        "n": n,
        "wins": sum(d > 0 for d in diffs),
        "p": paired_t_p(mu, sd, n),
        "seeds_for_p05": seeds_for_p(mu, sd) if n > 1 else None,
    }


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input's order: the k-th smallest of m finite
    p-values is multiplied by ``m - k + 1``, made non-decreasing along that order and capped at 1;
    NaN stays NaN and does not count. Comparing an adjusted p with 0.05 keeps the chance of any
    false effect among all of them below 0.05 (hand-written: statsmodels' ``multipletests`` would
    bring statsmodels and pandas in for ten lines).
    """
    finite = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    out = [float("nan")] * len(pvalues)
    m, running = len(finite), 0.0
    for k, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - k) * p))
        out[i] = running
    return out


def _cells(node: dict) -> list[dict]:
    """The paired-difference dicts (those holding ``"diffs"``) anywhere below ``node``, in order."""
    if "diffs" in node:
        return [node]
    return [d for child in node.values() if isinstance(child, dict) for d in _cells(child)]


def add_holm(pair: dict) -> int:
    """Give every paired difference in ``pair`` (any nesting of dicts down to the difference
    dicts, which hold ``"p"``) its Holm-adjusted p-value ``"p_holm"`` over all of them; returns
    how many finite p-values the correction counted.
    """
    cells = _cells(pair)
    for d, adjusted in zip(cells, holm([d["p"] for d in cells]), strict=True):
        d["p_holm"] = adjusted
    return sum(math.isfinite(d["p"]) for d in cells)


def is_clear(d: dict | None) -> bool:
    """The table's rule for a clear effect: a paired difference larger than its standard
    deviation and ahead on every one of two or more seeds.
    """
    return bool(d) and d["n"] > 1 and d["mean"] > d["std"] and d["wins"] == d["n"]


def paired(per_seed: dict, seeds: list[int], sil_seed: dict | None = None, ref: str = "gvsl") -> dict:
    """``ref`` against every other method, seed by seed, in each task and evaluation.

    For ``[task][mode][other]``: the per-seed differences ``ref - other`` (seeds where both are
    finite), their mean and sample standard deviation, on how many seeds ``ref`` is ahead and the
    paired t-test's p-value, raw and Holm-adjusted over every comparison made; with ``sil_seed``
    (``[method][seed]``) also ``["silhouette"][other]``. A paired difference removes what a seed
    does to every method alike (its data order, its initialisation), which the spread of the
    means in Table 1 does not.
    """
    out: dict = {t: {m: {} for m in MODES} for t in TASKS}
    for t in TASKS:
        for mode in MODES:
            col = per_seed[t][mode]
            for other in METHODS:
                if other != ref:
                    out[t][mode][other] = paired_difference(col[ref], col[other], seeds)
    if sil_seed is not None:
        out["silhouette"] = {
            other: paired_difference(sil_seed[ref], sil_seed[other], seeds) for other in METHODS if other != ref
        }
    add_holm(out)
    return out


def _p(p: float) -> str:
    """A p-value as the paired table prints it: three decimals, or ``< 0.001``."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def md_paired(pair: dict) -> list[str]:
    """GVSL against every other row seed by seed (``pair`` from :func:`paired` with silhouettes):
    mean ± std of the paired difference, GVSL's wins and the p-value per cell, then which cells
    Holm's correction over the whole table keeps.
    """
    L = ["## GVSL against each row, seed by seed", ""]
    L.append(
        "Each cell: GVSL's value minus the row's, averaged over the seeds where both ran "
        "(± the standard deviation of those differences), in brackets on how many seeds GVSL is ahead and the "
        "two-sided paired t-test p-value over the seeds. A difference larger than its standard deviation and "
        "ahead on every seed is a clear effect; the spread of Table 1's means also holds what a seed does to "
        "every method alike, which this removes. The p-values in the cells are not corrected for the table's "
        "many comparisons (among them one or two p < 0.05 are expected by chance); the line below the table "
        "says which survive Holm's correction. results.json holds, per cell, the adjusted p (`p_holm`) and how "
        "many seeds p < 0.05 would take if the mean and spread held (`seeds_for_p05`)."
    )
    L.append("")
    head = (
        ["GVSL minus"]
        + [f"a) linear {TASK_SHORT[t]}" for t in TASKS]
        + [f"b) fine-tune {TASK_SHORT[t]}" for t in TASKS]
        + ["silhouette"]
    )
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))

    def cell(d: dict) -> str:
        if not d["n"]:
            return "n/a"
        sd = f" ± {d['std']:.3f}" if d["n"] > 1 else ""
        pv = d.get("p", float("nan"))
        p = f"; p {_p(pv)}" if math.isfinite(pv) else ""
        return f"{d['mean']:+.3f}{sd} ({d['wins']}/{d['n']}{p})"

    kept: list[str] = []
    for other in METHODS:
        if other == "gvsl":
            continue
        cells = [METHOD_TITLES[other]]
        for mode in MODES:
            for t in TASKS:
                d = pair[t][mode][other]
                cells.append(cell(d))
                if d.get("p_holm", 1.0) < 0.05:
                    kept.append(
                        f"{METHOD_TITLES[other]} on {mode} {TASK_SHORT[t]} ({d['mean']:+.3f}; {_p(d['p_holm'])})"
                    )
        sil = pair.get("silhouette", {}).get(other)
        cells.append(cell(sil) if sil else "n/a")
        if sil and sil.get("p_holm", 1.0) < 0.05:
            kept.append(f"{METHOD_TITLES[other]} on the silhouette ({sil['mean']:+.3f}; {_p(sil['p_holm'])})")
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    n = sum(math.isfinite(d.get("p", float("nan"))) for d in _cells(pair))
    if n:
        L.append(
            f"Holm's correction over the table's {n} comparisons (family-wise error 0.05) keeps GVSL minus: "
            + ("; ".join(kept) if kept else "none")
            + " (difference; adjusted p); any other p < 0.05 in the table may be chance."
        )
        L.append("")
    return L

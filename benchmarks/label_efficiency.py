"""Label efficiency (issue #33, item 2): fine-tuned test Dice against the number of labelled subjects.

Usage::

    python benchmarks/label_efficiency.py                      # 5 seeds, the full study (hours: see below)
    python benchmarks/label_efficiency.py --seeds 0            # one seed (resumable; add seeds later)
    python benchmarks/label_efficiency.py --smoke --work /tmp/le  # the plumbing at a tiny scale, seconds

For every seed it pre-trains each variant once (``restoration``, ``matching``, ``gvsl`` and
``paper-heads``, the engines' settings of the paper-table study, ``study.plan.VARIANT_ENGINE``)
on unlabelled images of both downstream domains (``synthetic:cardiac-hard+brain``: pairs are
drawn within a kind), and reuses that checkpoint (``last.pt``) for every label count. Then every
method (``scratch`` and the four variants) is fine-tuned, backbone and head, on

* ``heart_seg``: the seven heart structures of the hard cardiac phantoms
  (:mod:`gvsl_app.data.cardiac_hard`, data seed 9101);
* ``brain_seg``: grey matter, white matter and CSF of the MNI-derived brain MR subjects
  (:mod:`gvsl_app.data.brain`, data seed 9103);

with N = 1, 2, 4, 8, 16 labelled training subjects (the first N of the seed's training split:
the sets are nested, and validation and test splits are the same for every N and method).
Fine-tuning runs to convergence with validation-based early stopping: the validation split's
mean Dice is measured every ``val_every`` iterations, and the run stops when it has not improved
by 1e-4 for ``patience`` validations (at least ``min_iters`` iterations, at most ``max_iters``);
the best validation checkpoint is then scored once on the test split (the engine's ``best.pt``).

Resumable: every (task, seed, method, N) cell writes ``WORK/cells/TASK/METHOD/nN_seedS.json``
when it finishes, and an invocation skips the cells that have one; a pre-training run is
reused when its ``report.json`` says done, and resumed from ``last.pt`` when killed; a
fine-tuning run killed mid-way is started again. ``--seeds`` adds seeds to the same work folder.

Before any fine-tuning, every method's network (pre-trained, or the seeded random one for
scratch) is also embedded on three heart test subjects: the silhouette and 5-NN accuracy of
the seven structures at the last decoder level and in hypercolumns (``WORK/cells/clusters``).

Writes ``OUT/summary.md`` (the printed tables, the clusters and the verdict), ``OUT/curves.png``
and ``OUT/results.json`` as ``{"tasks": {TASK: {METHOD: {"N": [Dice per seed, in the order of
--seeds; null where the cell has not run]}}}}`` and prints, per task and N, each method's mean ±
std and GVSL's paired differences with scratch and restoration (Holm-adjusted over the task's
comparisons, and the seeds a paired t-test would need for p < 0.05 as in the medium study).
``OUT`` is ``docs/label_efficiency`` (``WORK/out`` for ``--smoke``, which is refused in docs/).

Time (the project's shared 2-core CPU, from the medium study's runs at the same sizes: 32^3
cube, width 8): pre-training ~9 min (restoration), ~9 min (matching), ~18 min (gvsl) and
~21 min (paper-heads) for 3000 iterations, ~57 min per seed; fine-tuning ~0.1 s per
iteration with validation, 2 tasks x 5 methods x 5 label counts = 50 runs of 100-600
iterations, ~15-55 min per seed: about 75-110 min per seed, 6-9 h for five seeds. That holds
on a quiet machine: on 2026-12-07, with the cores shared (load average ~8), one 32^3 fine-tuning
ran at 2-3 s per iteration, some 20x slower. The CPU plan recorded in docs/label_efficiency
(``--pre-iters 800 --max-iters 300 --patience 4 --threads 1``, two seeds side by side, the cores
shared with tests and benchmarks) took about 116 min per seed: ~30 min of pre-training and 50
fine-tunings of 89-118 s, nearly all of them reaching the 300-iteration cap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from study.paired import holm, paired_difference
from study.plan import BUDGETS, VARIANT_ENGINE, Budget
from study.runs import pretrain_config, run_job
from study.stats import mean_std
from study.timing import Clock, fmt_s

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("heart_seg", "brain_seg")
METHODS = ("scratch", "restoration", "matching", "gvsl", "paper-heads")
VARIANTS = METHODS[1:]
LABEL_COUNTS = (1, 2, 4, 8, 16)
SEEDS = (0, 1, 2, 3, 4)
DATA_SEEDS = {"heart_seg": 9101, "brain_seg": 9103}
DATA_KINDS = {"heart_seg": "cardiac-hard", "brain_seg": "brain"}
PRETRAIN_DATA = "synthetic:cardiac-hard+brain"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one invocation runs: sizes and schedules (the same for every method), and its grid."""

    budget: Budget  # pre-training and fine-tuning sizes, rates and batch (study.plan's)
    n_data: int  # subjects of each downstream set (train / val / test 50 / 20 / 30 %)
    label_counts: tuple[int, ...]
    max_iters: int
    min_iters: int
    val_every: int
    patience: int  # validations without improvement before stopping


def make_plan(
    smoke: bool, pre_iters: int | None = None, max_iters: int | None = None, patience: int | None = None
) -> Plan:
    """The full plan (the medium study's sizes, 34 subjects per task: 17 / 7 / 10) or the smoke one.

    ``pre_iters`` shortens pre-training (its rate decays over the second half, as in the medium
    study); ``max_iters`` caps fine-tuning (the minimum is a sixth of it) and ``patience`` is the
    number of validations without gain before a run stops: the CPU-sized study uses all three.
    """
    if smoke:
        budget = dataclasses.replace(BUDGETS["tiny"], n_synthetic=2)
        return Plan(budget, n_data=6, label_counts=(1, 2), max_iters=4, min_iters=2, val_every=1, patience=1)
    budget = BUDGETS["medium"]
    if pre_iters:
        budget = dataclasses.replace(budget, pre_iters=pre_iters, pre_decay_start=pre_iters // 2)
    most = max_iters or 600
    return Plan(
        budget,
        n_data=34,
        label_counts=LABEL_COUNTS,
        max_iters=most,
        min_iters=most // 6,
        val_every=25,
        patience=patience or 6,
    )


def make_data(plan: Plan, work: Path, clock: Clock) -> dict[str, Path]:
    """The two labelled downstream sets (reused when already written with the same spec)."""
    from gvsl_app.data.brain import brain_dataset
    from gvsl_app.data.cardiac_hard import cardiac_hard_dataset

    shape = (plan.budget.size,) * 3
    out = {}
    for task in TASKS:
        folder = work / "data" / task
        spec = {"kind": DATA_KINDS[task], "n": plan.n_data, "seed": DATA_SEEDS[task], "shape": list(shape)}
        marker = folder / "dataset.json"
        if marker.is_file():
            if json.loads(marker.read_text()) != spec:
                raise SystemExit(f"{folder} holds another data set; use a fresh --work folder")
        else:
            t = time.perf_counter()
            writer = cardiac_hard_dataset if task == "heart_seg" else brain_dataset
            writer(folder, plan.n_data, DATA_SEEDS[task], shape=shape)
            marker.write_text(json.dumps(spec))
            clock.say(f"data {task}: {plan.n_data} {DATA_KINDS[task]} subjects in {time.perf_counter() - t:.1f} s")
        out[task] = folder
    return out


def check_plan(plan: Plan, work: Path) -> None:
    """Record the plan in ``WORK/plan.json``; refuse a work folder whose cells ran under another."""
    spec = json.loads(json.dumps(dataclasses.asdict(dataclasses.replace(plan, label_counts=()))))
    marker = work / "plan.json"
    if marker.is_file() and json.loads(marker.read_text()) != spec:
        raise SystemExit(
            f"{work} holds cells of another plan ({marker}); use a fresh --work folder or the same options"
        )
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(spec, indent=1))


def check_disjoint(plan: Plan, seeds: list[int]) -> None:
    """No downstream subject may be a pre-training subject (both use ``subject_seed``)."""
    from gvsl_app.data.synthetic import subject_seed

    pre = {subject_seed(s, i) for s in seeds for i in range(plan.budget.n_synthetic)}
    for task, data_seed in DATA_SEEDS.items():
        if pre & {subject_seed(data_seed, i) for i in range(plan.n_data)}:
            raise SystemExit(f"seeds {seeds} overlap the {task} subjects (data seed {data_seed}): choose other seeds")


def pretrain(plan: Plan, seed: int, variant: str, work: Path, device: str, clock: Clock) -> Path:
    """Pre-train ``variant`` for ``seed`` once (reused, or resumed from ``last.pt``); its ``last.pt``."""
    run = work / f"seed{seed}" / "pretrain" / variant
    cfg = dataclasses.replace(pretrain_config(plan.budget, variant, seed, run, device), data=PRETRAIN_DATA)
    t = time.perf_counter()
    _, reused = run_job("pretrain", cfg, f"seed {seed} pretrain {variant}", clock)
    if not reused:
        clock.add(f"pretrain {variant}", time.perf_counter() - t)
    return run / "checkpoints" / "last.pt"


def _pretrained(run: Path) -> bool:
    """Whether the pre-training run in ``run`` finished (its report says ``done``)."""
    report = run / "report.json"
    return report.is_file() and json.loads(report.read_text()).get("status") == "done"


def cell_path(work: Path, task: str, method: str, n: int, seed: int) -> Path:
    """The JSON of one finished (task, seed, method, N) cell."""
    return work / "cells" / task / method / f"n{n}_seed{seed}.json"


def finetune_cell(
    plan: Plan, task: str, method: str, n: int, seed: int, init: str, data: Path, work: Path, device: str, clock: Clock
) -> dict:
    """Fine-tune one cell with validation-based early stopping; write and return its JSON."""
    from gvsl_app.training.config import FinetuneConfig
    from gvsl_app.training.finetune import finetune
    from gvsl_app.training.progress import StopFlag

    run = work / f"seed{seed}" / task / method / f"n{n}"
    if run.exists():  # killed before its cell was written: the early-stopping state is gone, start again
        shutil.rmtree(run)
    b = plan.budget
    cfg = FinetuneConfig(
        data=str(data),
        run=str(run),
        init=init,
        task="seg",
        iters=plan.max_iters,
        size=b.patch,
        width=b.width,
        batch=b.ft_batch,
        lr=b.ft_lr,
        device=device,
        seed=seed,
        workers=0,
        val_every=plan.val_every,
        val_fraction=b.val_fraction,
        test_fraction=b.test_fraction,
        n_train=n,
        log_every=max(1, plan.max_iters // 10),
    )
    stop, best, since, t = StopFlag(), -math.inf, 0, time.perf_counter()
    label = f"seed {seed} {task} {method} N={n}"
    last = None
    for p in finetune(cfg, stop):
        last = p
        if p.phase == "error":
            raise RuntimeError(f"{label}: {p.message}")
        if p.phase == "validate":
            value = float(p.metrics.get("mean_dice", float("nan")))
            if value > best + 1e-4:
                best, since = value, 0
            else:
                since += 1
            if since >= plan.patience and p.iteration >= plan.min_iters and not stop.is_set():
                stop.set(f"no validation gain in {plan.patience} validations")
    report = json.loads((run / "report.json").read_text())
    if len(report["splits"]["train"]) != n:
        raise SystemExit(f"{label}: the training split holds {len(report['splits']['train'])} subjects, not {n}")
    cell = {
        "task": task,
        "method": method,
        "n_train": n,
        "seed": seed,
        "dice": (report.get("test") or {}).get("mean_dice"),
        "best_val": report.get("best_val"),
        "iterations": report.get("iteration"),
        "stopped_early": report.get("status") == "stopped",
        "wall_s": time.perf_counter() - t,
        "init": init,
        "train": report["splits"]["train"],
    }
    path = cell_path(work, task, method, n, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell, indent=1))
    clock.add(f"{task} finetune", cell["wall_s"])
    clock.say(
        f"{label}: test Dice {cell['dice']:.4f} after {cell['iterations']} iterations"
        f"{' (early stop)' if cell['stopped_early'] else ''}; {getattr(last, 'message', '')}"
    )
    return cell


CLUSTER_LEVELS = ("decoder-4", "hypercolumn")  # the declared level (the last decoder level) and all four
CLUSTER_SUBJECTS = 3  # heart_seg test subjects embedded per seed and method


def clusters_cell(plan: Plan, method: str, seed: int, init: str, data: Path, work: Path, device: str) -> dict:
    """The silhouette and 5-NN accuracy of the seven heart structures in each pre-trained (or
    random, for scratch) network's features, before any fine-tuning, on the first
    ``CLUSTER_SUBJECTS`` test subjects of the seed's split, at the last decoder level and in
    hypercolumns (``gvsl embed --level``'s measures); written to ``WORK/cells/clusters``.
    """
    from gvsl_app.services.embed import level_scores
    from gvsl_app.services.weights import load_gvsl
    from models import resolve_device

    from study.clustering import _read_pair, _scratch_gvsl

    path = work / "cells" / "clusters" / method / f"seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    dev = resolve_device(device)
    model = _scratch_gvsl(plan.budget, seed) if init == "scratch" else load_gvsl(init, dev)[0]
    report = work / f"seed{seed}" / "heart_seg" / "scratch" / f"n{plan.label_counts[0]}" / "report.json"
    subjects = json.loads(report.read_text())["splits"]["test"][:CLUSTER_SUBJECTS]
    scores: dict[str, dict[str, list[float]]] = {lv: {"silhouette": [], "knn5": []} for lv in CLUSTER_LEVELS}
    for name in subjects:
        image, labels = _read_pair(data, name)
        scored = level_scores(
            model, image, np.asarray(labels.array), plan.budget.per_label, seed, plan.budget.size, dev
        )
        for lv in CLUSTER_LEVELS:
            for key in ("silhouette", "knn5"):
                scores[lv][key].append(float(scored[lv][key]))
    cell = {
        "method": method,
        "seed": seed,
        "subjects": subjects,
        **{lv: {k: float(np.mean(v)) for k, v in m.items()} for lv, m in scores.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell, indent=1))
    return cell


def verdict(results: dict, seeds: list[int]) -> list[str]:
    """Where GVSL beats scratch and restoration by more than the seed spread: the mean paired
    difference above the standard deviation of the differences (fine-tuned Dice per task and
    N; silhouette and 5-NN per level for the clusters), and the issue's bar (GVSL >= scratch +
    0.05 at N = 1 and 2 on the heart set, on every seed) met or not.
    """
    lines = []
    for task, methods in results["tasks"].items():
        for ref in ("scratch", "restoration"):
            won = []
            for n, gv in methods["gvsl"].items():
                d = [g - o for g, o in zip(gv, methods[ref][n]) if g is not None and o is not None]
                if len(d) >= 2 and np.mean(d) > max(np.std(d, ddof=1), 0.0):
                    won.append(n)
            lines.append(
                f"- {task}: GVSL beats {ref} by more than the seed spread at N = {', '.join(won)}"
                if won
                else f"- {task}: GVSL beats {ref} by more than the seed spread at no label count"
            )
    heart = results["tasks"]["heart_seg"]
    for n in ("1", "2"):
        d = [g - o for g, o in zip(heart["gvsl"].get(n, []), heart["scratch"].get(n, [])) if None not in (g, o)]
        met = bool(d) and len(d) == len(seeds) and min(d) >= 0.05
        worst = f"{min(d):+.3f}" if d else "-"
        lines.append(
            f"- heart_seg N = {n}: GVSL - scratch >= 0.05 on every seed: {'met' if met else 'NOT met'} (worst seed {worst})"
        )
    for lv, per in results.get("clusters", {}).items():
        for key in ("silhouette", "knn5"):
            g = per["gvsl"][key]
            for ref in ("scratch", "restoration"):
                d = [a - b for a, b in zip(g, per[ref][key]) if None not in (a, b)]
                if len(d) >= 2:
                    beat = np.mean(d) > np.std(d, ddof=1)
                    lines.append(
                        f"- clusters {lv} {key}: GVSL {'beats' if beat else 'does not beat'} {ref} by more than the "
                        f"seed spread ({np.mean(d):+.3f} ± {np.std(d, ddof=1):.3f}, ahead on {sum(x > 0 for x in d)}/{len(d)})"
                    )
    return lines


def figure(results: dict, out: Path) -> Path:
    """``OUT/curves.png``: fine-tuned test Dice (mean ± std over seeds) against N, per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, (task, methods) in zip(axes[0], tasks.items()):
        for method, per_n in methods.items():
            ns, mu, sd = [], [], []
            for n, values in per_n.items():
                v = [x for x in values if x is not None]
                if v:
                    ns.append(int(n))
                    mu.append(float(np.mean(v)))
                    sd.append(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
            if ns:
                ax.errorbar(ns, mu, yerr=sd, marker="o", capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labelled training subjects N")
        ax.set_ylabel("test Dice (mean ± std over seeds)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def collect(work: Path, plan: Plan, seeds: list[int]) -> dict:
    """``{"tasks": {TASK: {METHOD: {"N": [Dice per seed in --seeds order, None if not run]}}}}``."""
    tasks: dict = {}
    for task in TASKS:
        tasks[task] = {}
        for method in METHODS:
            tasks[task][method] = {}
            for n in plan.label_counts:
                values = []
                for s in seeds:
                    path = cell_path(work, task, method, n, s)
                    values.append(json.loads(path.read_text())["dice"] if path.is_file() else None)
                tasks[task][method][str(n)] = values
    clusters: dict = {}
    for lv in CLUSTER_LEVELS:
        clusters[lv] = {}
        for method in METHODS:
            cells = [work / "cells" / "clusters" / method / f"seed{s}.json" for s in seeds]
            per = [json.loads(c.read_text())[lv] if c.is_file() else None for c in cells]
            clusters[lv][method] = {k: [p[k] if p else None for p in per] for k in ("silhouette", "knn5")}
    return {"tasks": tasks, "clusters": clusters}


def summary(results: dict, seeds: list[int]) -> list[str]:
    """Per task and N: each method's mean ± std, and GVSL minus scratch and minus restoration
    seed by seed (mean ± std, seeds ahead, paired p Holm-adjusted over the task's comparisons,
    seeds for p < 0.05 if mean and spread held).
    """
    lines = []
    for task, methods in results["tasks"].items():
        counts = list(methods["gvsl"])
        lines += [f"\n{task}: test Dice, mean ± std over seeds", ""]
        lines.append("| N | " + " | ".join(methods) + " |")
        lines.append("|---" * (len(methods) + 1) + "|")
        for n in counts:
            cells = []
            for m in methods:
                mu, sd, k = mean_std(v for v in methods[m][n] if v is not None)
                cells.append(f"{mu:.3f} ± {sd:.3f} ({k})" if k else "-")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        per = {m: {n: dict(zip(seeds, methods[m][n])) for n in counts} for m in methods}
        diffs = []
        for ref in ("scratch", "restoration"):
            for n in counts:
                g = {s: v for s, v in per["gvsl"][n].items() if v is not None}
                o = {s: v for s, v in per[ref][n].items() if v is not None}
                diffs.append((ref, n, paired_difference(g, o, seeds)))
        adjusted = holm([d["p"] for _, _, d in diffs])
        lines += [
            "",
            "| N | GVSL minus | mean ± std | ahead | Holm p | seeds for p<0.05 |",
            "|---|---|---|---|---|---|",
        ]
        for (ref, n, d), p in zip(diffs, adjusted):
            need = d["seeds_for_p05"] if d["seeds_for_p05"] is not None else "> 100"
            lines.append(
                f"| {n} | {ref} | {d['mean']:+.3f} ± {d['std']:.3f} | {d['wins']}/{d['n']} | {p:.3g} | {need} |"
            )
    return lines


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=list(SEEDS), help="study seeds, in the order results.json lists them"
    )
    p.add_argument("--work", help="folder of the data, runs and cells (default runs/label_efficiency, smoke: required)")
    p.add_argument("--out", help="folder of results.json (default docs/label_efficiency; smoke: WORK/out)")
    p.add_argument(
        "--label-counts", type=int, nargs="+", help="labelled training subjects (default 1 2 4 8 16; smoke 1 2)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--pre-iters", type=int, help="pre-training iterations per variant (default the medium study's 3000)"
    )
    p.add_argument("--max-iters", type=int, help="fine-tuning iterations at most (default 600; the minimum is a sixth)")
    p.add_argument("--patience", type=int, help="validations without gain before a fine-tuning stops (default 6)")
    p.add_argument(
        "--smoke", action="store_true", help="the plumbing at a tiny scale: 16^3, width 4, a few iterations, N = 1, 2"
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write results.json, summary.md and curves.png from the cells that exist "
        "(null where a cell has not run), embedding the clusters of seeds whose pre-training finished",
    )
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.smoke and not args.work:
        raise SystemExit("--smoke needs --work (a scratch folder): its numbers mean nothing")
    plan = make_plan(args.smoke, args.pre_iters, args.max_iters, args.patience)
    if args.label_counts:
        most = round(plan.n_data * (1 - plan.budget.val_fraction - plan.budget.test_fraction))
        if not all(1 <= n <= most for n in args.label_counts):
            raise SystemExit(f"--label-counts must lie in 1..{most} (the training split of {plan.n_data} subjects)")
        plan = dataclasses.replace(plan, label_counts=tuple(dict.fromkeys(args.label_counts)))
    work = Path(args.work or ROOT / "runs" / "label_efficiency")
    out = Path(args.out) if args.out else (work / "out" if args.smoke else ROOT / "docs" / "label_efficiency")
    if args.smoke and (ROOT / "docs") in out.resolve().parents:
        raise SystemExit(f"{out}: a smoke run's numbers mean nothing; they are not written into docs/")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    seeds = list(dict.fromkeys(args.seeds))
    check_disjoint(plan, seeds)
    clock = Clock(args.quiet)
    check_plan(plan, work)
    data = make_data(plan, work, clock)
    for seed in seeds:
        inits = {"scratch": "scratch"}
        if args.report_only:  # no training: the clusters of the seeds whose pre-training finished
            done = {v: work / f"seed{seed}" / "pretrain" / v for v in VARIANTS}
            split = work / f"seed{seed}" / "heart_seg" / "scratch" / f"n{plan.label_counts[0]}" / "report.json"
            if split.is_file() and all(_pretrained(run) for run in done.values()):
                inits.update({v: str(run / "checkpoints" / "last.pt") for v, run in done.items()})
                for method in METHODS:
                    clusters_cell(plan, method, seed, inits[method], data["heart_seg"], work, args.device)
            continue
        for variant in VARIANTS:
            assert variant in VARIANT_ENGINE
            inits[variant] = str(pretrain(plan, seed, variant, work, args.device, clock))
        for task in TASKS:
            for n in plan.label_counts:
                for method in METHODS:
                    if cell_path(work, task, method, n, seed).is_file():
                        continue
                    finetune_cell(plan, task, method, n, seed, inits[method], data[task], work, args.device, clock)
        for method in METHODS:
            clusters_cell(plan, method, seed, inits[method], data["heart_seg"], work, args.device)
    results = collect(work, plan, seeds)
    out.mkdir(parents=True, exist_ok=True)
    lines = summary(results, seeds)
    lines += ["", "Clusters of the seven heart structures before fine-tuning (mean ± std over seeds):", ""]
    lines += ["| level | measure | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 2) + "|"]
    for lv, per in results["clusters"].items():
        for key in ("silhouette", "knn5"):
            cells = []
            for m in METHODS:
                mu, sd, k = mean_std(v for v in per[m][key] if v is not None)
                cells.append(f"{mu:+.3f} ± {sd:.3f} ({k})" if k else "-")
            lines.append(f"| {lv} | {key} | " + " | ".join(cells) + " |")
    lines += ["", "Verdict (computed from the numbers above):", ""] + verdict(results, seeds)
    results["verdict"] = verdict(results, seeds)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    figure(results, out)
    command = "python benchmarks/label_efficiency.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    head = [
        "# Label efficiency" + (" (smoke run: the numbers mean nothing)" if args.smoke else ""),
        "",
        f"`{command}`, seeds {', '.join(map(str, seeds))}; fine-tuned test Dice per label count N "
        "(benchmarks/label_efficiency.py's docstring has the protocol).",
    ]
    (out / "summary.md").write_text("\n".join(head + lines) + "\n")
    if not args.quiet:
        print("\n".join(lines))
        print(f"\nwrote {out / 'results.json'} ({command}); wall {fmt_s(clock.elapsed())}")
    return results


if __name__ == "__main__":
    main()

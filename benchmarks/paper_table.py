"""The paper's evidence in miniature: Table 1 (linear and fine-tuning) and the clustering of Fig. 7.

Usage::

    python benchmarks/paper_table.py --budget small                 # <= 90 min on a 2-core CPU
    python benchmarks/paper_table.py --budget small --seeds 0 1 2   # three times that, with spread
    python benchmarks/paper_table.py --budget paper --device cuda   # the paper's sizes (GPU, days)
    python benchmarks/paper_table.py --budget tiny --out /tmp/smoke # plumbing check, seconds
    python benchmarks/paper_table.py --budget small --dry-run       # plan and time estimate only
    python benchmarks/paper_table.py --budget gpu --seeds 0 1 2 --jobs 15 --device cuda  # ~8 min, one H200

For every seed it pre-trains, with the same budget each, the five variants ``restoration``
(Models Genesis-style fundament only), ``matching`` (Z-Matching only), ``no-affine`` and
``gvsl`` (whole, the studio's Z-Matching heads) and ``paper-heads`` (whole, the paper's heads)
on synthetic cardiac CT subjects; ``scratch`` has no pre-training. Every
method is then evaluated downstream with linear evaluation (frozen backbone) and fine-tuning:

* ``heart_seg``: seven cardiac structures on held-out synthetic cardiac subjects, few
  labelled training subjects, mean Dice on the test split (inner scene);
* ``heart_cls``: abnormal/normal myocardium on a synthetic classification set, AUC on the
  test split (inner scene, global task);
* ``brain_seg``: grey/white matter/CSF on MNI-derived brain MR subjects, mean Dice on the
  test split (inter scene).

Downstream data are generated with their own seeds; the script checks that no downstream or
embedding subject is a pre-training subject. The engine keeps the best checkpoint on the
validation split and evaluates it on the test split once, at the end; every method gets
the same hyper-parameters (fixed per budget before any result was seen), no per-method tuning.

Clustering (Fig. 7): silhouette of the seven structures in local-feature space (mean over a
few held-out cardiac subjects and the seeds) and a t-SNE scatter per method.

Beside the means, GVSL is compared with every other row seed by seed (paired differences).
``--jobs N`` runs N pre-training, then N downstream runs at once in separate processes (on a
GPU, small networks leave the card mostly idle); the results are the same runs either way.

Writes ``OUT/RESULTS.md``, ``OUT/results.json`` and ``OUT/figures/*.png``. ``--out`` defaults
to ``docs/results/study_BUDGET`` for ``small``, ``medium``, ``gpu`` and ``paper`` (so no
budget overwrites another's results) and ``WORK/out`` for ``tiny`` (a tiny
run is a smoke test and is labelled so; it is refused in ``docs/``). Runs live in ``--work``
(default ``runs/paper_table/BUDGET``); a run whose ``report.json`` exists with the same
configuration is reused, an interrupted one resumes from its ``last.pt``. ``--from-record
FILE [FILE ...]`` takes the asked seeds that earlier ``results.json`` files of the same budget
hold from them (their values, silhouettes and diagnostics; a seed two files hold from the first)
and runs only the others; the output says which seeds came from which record and by which command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

from study.clustering import clustering
from study.figures import draw_figures
from study.plan import BUDGETS, DATA_SEEDS, METHODS, MODES, TASKS, VARIANTS, Budget, check_disjoint
from study.record import add_record, load_records
from study.report import write_outputs
from study.runs import (
    downstream_config,
    downstream_value,
    make_data,
    pretrain_config,
    pretrain_diagnostics,
    run_job,
    run_jobs_side_by_side,
)
from study.stats import Measurements, silhouette_summary
from study.timing import Clock, calibrate, estimate, fmt_s

ROOT = Path(__file__).resolve().parents[1]


def default_out(budget_name: str, work: Path) -> Path:
    """The folder a study writes RESULTS.md, results.json and figures/ into without ``--out``.

    Each budget has its own folder, so that running one budget never overwrites another's
    recorded results: ``docs/results/study_small`` (the first study), ``docs/results/study_BUDGET``
    (medium, gpu, paper), ``WORK/out`` for the tiny smoke test.
    """
    if budget_name == "tiny":
        return work / "out"
    return ROOT / "docs" / "results" / f"study_{budget_name}"


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    p.add_argument(
        "--seeds", type=int, nargs="+", help="study seeds (default: the budget's: tiny/small 0, medium/gpu/paper 0 1 2)"
    )
    p.add_argument(
        "--out",
        help="folder for RESULTS.md, results.json and figures/ (default: docs/results/study_BUDGET for "
        "small/medium/gpu/paper, WORK/out for tiny)",
    )
    p.add_argument("--work", help="folder of the data and run folders (default runs/paper_table/BUDGET)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads",
        default="auto",
        help="torch CPU threads: a number, or auto = 1 when the machine is already loaded (load average "
        ">= cores; oversubscribed OpenMP threads make small 3D convolutions several times slower), "
        "else torch's default",
    )
    p.add_argument("--pre-iters", type=int, help="override the budget's pre-training iterations (recorded)")
    p.add_argument("--ft-iters", type=int, help="override the budget's fine-tuning iterations (recorded)")
    p.add_argument("--linear-iters", type=int, help="override the budget's linear-probe iterations (recorded)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs side by side in separate processes (default 1): all pre-training runs first, then all "
        "downstream runs; worth it on a GPU, where small networks leave the card mostly idle",
    )
    p.add_argument(
        "--from-record",
        metavar="RESULTS_JSON",
        nargs="+",
        help="take the asked seeds that these earlier results.json files of the same budget hold from them "
        "instead of running them (their work folders may be gone; a seed two files hold comes from the first); "
        "the output names each record and its command",
    )
    p.add_argument("--no-estimate", action="store_true", help="skip the step-time calibration and the estimate")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate, run nothing")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def choose_threads(spec: str, device_type: str) -> tuple[int, str]:
    import torch

    if device_type != "cpu":
        return torch.get_num_threads(), "torch default (not a CPU run)"
    if spec != "auto":
        return max(1, int(spec)), "--threads"
    try:
        load = os.getloadavg()[0]
    except OSError:
        return torch.get_num_threads(), "torch default (no load average)"
    cores = os.cpu_count() or 1
    if load >= cores:
        return 1, f"auto: load average {load:.1f} >= {cores} cores"
    return torch.get_num_threads(), f"auto: load average {load:.1f} < {cores} cores"


def main(argv: list[str] | None = None) -> dict:
    import torch

    threads_before = torch.get_num_threads()
    try:
        return _main(argv)
    finally:
        torch.set_num_threads(threads_before)


def _budget_and_folders(args) -> tuple[Budget, list[int], Path, Path]:
    """The budget with the command line's iteration overrides (recorded in its note), the seeds, WORK and OUT."""
    budget = BUDGETS[args.budget]
    changes = {
        k: v
        for k, v in (("pre_iters", args.pre_iters), ("ft_iters", args.ft_iters), ("linear_iters", args.linear_iters))
        if v is not None
    }
    if any(v < 1 for v in changes.values()):
        raise SystemExit("--pre-iters, --ft-iters and --linear-iters must be positive")
    if changes:
        budget = dataclasses.replace(
            budget,
            note=budget.note
            + "; MODIFIED: "
            + ", ".join(f"{k}={v} (budget {getattr(budget, k)})" for k, v in changes.items()),
            **changes,
        )
    seeds = list(args.seeds if args.seeds else budget.seeds)
    suffix = "".join(f"-{k.split('_')[0]}{v}" for k, v in changes.items())
    work = Path(args.work) if args.work else ROOT / "runs" / "paper_table" / (budget.name + suffix)
    out = Path(args.out) if args.out else default_out(budget.name, work)
    if budget.name == "tiny" and out.resolve().is_relative_to((ROOT / "docs").resolve()):
        raise SystemExit("the tiny budget is a smoke test; it does not write into docs/ (pass another --out)")
    return budget, seeds, work, out


def _device(args):
    """Resolve ``--device``, set torch's CPU threads (``--threads``) and describe both; returns (device, description)."""
    import torch

    from models import resolve_device

    dev = resolve_device(args.device)
    threads, why = choose_threads(args.threads, dev.type)
    torch.set_num_threads(threads)
    device_desc = f"{dev}" + (
        f" ({torch.cuda.get_device_name(dev)})"
        if dev.type == "cuda"
        else f" ({os.cpu_count()} cores, {threads} torch thread(s), {why})"
    )
    return dev, device_desc


def _time_estimate(args, budget: Budget, seeds: list[int], dev, clock: Clock) -> dict | None:
    """Measure the step times now and print the time estimate; None with --no-estimate or where it would be useless."""
    if args.no_estimate:
        return None
    if budget.name == "paper" and dev.type == "cpu":
        clock.say("estimate skipped: the paper budget on a CPU would take months (use a GPU)")
        return None
    t = time.perf_counter()
    steps = calibrate(budget, args.device)
    est = estimate(budget, len(seeds), steps)
    clock.say(
        "measured step times: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in steps.items())
        + f" (calibration {time.perf_counter() - t:.1f} s)"
    )
    clock.say("ESTIMATE: " + ", ".join(f"{k} {fmt_s(v)}" for k, v in est.items()) + " (at the current machine load)")
    if budget.name == "small" and est["total"] > 90 * 60:
        clock.say(
            "WARNING: the estimate exceeds the 90 minutes planned for the small budget "
            "(a busy machine?); the run goes on"
        )
    return est


def _number(v) -> float:
    """A report's number, NaN where it is missing or null (a JSON report writes NaN as null)."""
    return float("nan") if v is None else float(v)


def _pretrain_jobs(budget: Budget, seed: int, base: Path, device: str) -> list[tuple[str, object, str]]:
    """The pre-training runs of one seed as ``(kind, config, label)``, one per variant."""
    return [
        ("pretrain", pretrain_config(budget, v, seed, base / "pretrain" / v, device), f"pretrain {v} seed {seed}")
        for v in VARIANTS
    ]


def _starts(base: Path) -> dict[str, str | None]:
    """The weights each method's downstream runs start from: None for scratch, else its pre-training's ``last.pt``."""
    ckpts: dict[str, str | None] = {"scratch": None}
    ckpts.update({v: str(base / "pretrain" / v / "checkpoints" / "last.pt") for v in VARIANTS})
    return ckpts


def _downstream_jobs(budget: Budget, seed: int, base: Path, data: dict, device: str) -> list[tuple]:
    """The downstream runs of one seed as ``(kind, config, label, task, mode, method)``."""
    ckpts = _starts(base)
    jobs = []
    for task in TASKS:
        for mode in MODES:
            for method in METHODS:
                cfg = downstream_config(
                    budget,
                    task,
                    mode,
                    ckpts[method] or "scratch",
                    seed,
                    data[task],
                    base / task / mode / method,
                    device,
                )
                jobs.append(("finetune", cfg, f"{task} {mode} {method} seed {seed}", task, mode, method))
    return jobs


def _pretrain_seed(budget: Budget, seed: int, base: Path, device: str, clock: Clock, measured: Measurements) -> dict:
    """Pre-train every variant for one seed; returns the checkpoint each method starts from (None for scratch)."""
    for v, (kind, cfg, label) in zip(VARIANTS, _pretrain_jobs(budget, seed, base, device), strict=True):
        t = time.perf_counter()
        clock.say(f"seed {seed}: pre-training {v} ({budget.pre_iters} iterations)")
        report, was = run_job(kind, cfg, label, clock)
        measured.reused += was
        measured.run_walls[f"seed{seed}/pretrain/{v}"] = _number(report.get("wall_s"))
        dt = time.perf_counter() - t
        clock.add(f"pretrain {v}", dt)
        clock.say(f"seed {seed}: pre-training {v} finished in {fmt_s(dt)}")
    return _starts(base)


def _downstream_seed(
    budget: Budget, seed: int, base: Path, data: dict, device: str, clock: Clock, measured: Measurements
) -> None:
    """Run every task × evaluation × method for one seed and record its test-split value in ``measured``."""
    t = time.perf_counter()
    for kind, cfg, label, task, mode, method in _downstream_jobs(budget, seed, base, data, device):
        report, was = run_job(kind, cfg, label, clock)
        measured.reused += was
        measured.run_walls[f"seed{seed}/{task}/{mode}/{method}"] = _number(report.get("wall_s"))
        value = downstream_value(report, task)
        measured.per_seed[task][mode][method][seed] = value
        clock.say(
            f"seed {seed}: {task} {mode} {method}: test "
            f"{'AUC' if task == 'heart_cls' else 'Dice'} {value:.4f} "
            f"(best val {_number(report.get('best_val')):.4f})"
        )
        if method == METHODS[-1]:
            clock.add(f"{task} {mode}", time.perf_counter() - t)
            t = time.perf_counter()


def _side_by_side(budget: Budget, seeds: list[int], work: Path, data: dict, args, clock: Clock) -> None:
    """With ``--jobs N``: every seed's pre-training runs, then every downstream run, N at a time.

    The sequential pass that follows finds them finished and only reads their reports.
    """
    t = time.perf_counter()
    pre = [j for s in seeds for j in _pretrain_jobs(budget, s, work / f"seed{s}", args.device)]
    run_jobs_side_by_side(pre, args.jobs, clock)
    clock.add("pretrain (side by side)", time.perf_counter() - t)
    t = time.perf_counter()
    down = [j[:3] for s in seeds for j in _downstream_jobs(budget, s, work / f"seed{s}", data, args.device)]
    run_jobs_side_by_side(down, args.jobs, clock)
    clock.add("downstream (side by side)", time.perf_counter() - t)


def _cluster_seed(
    budget: Budget,
    seed: int,
    first: bool,
    ckpts: dict,
    embed_dir: Path,
    device: str,
    clock: Clock,
    measured: Measurements,
) -> None:
    """Silhouette of every method for one seed; for the ``first`` seed also its t-SNE points and 2D silhouette."""
    t = time.perf_counter()
    for method in METHODS:
        res = clustering(budget, method, seed, ckpts[method], embed_dir, device, figure=first)
        measured.sil_seed[method][seed] = res["silhouette"]
        if first:
            measured.points[method] = {"xy": res["xy"], "labels": res["labels"]}
            measured.sil2d[method] = res.get("silhouette_2d")
        clock.say(f"seed {seed}: clustering {method}: silhouette {res['silhouette']:.4f}")
    clock.add("clustering", time.perf_counter() - t)


def _main(argv: list[str] | None) -> dict:
    args = parse_args(argv)
    argv_used = list(sys.argv[1:] if argv is None else argv)
    command = "python benchmarks/paper_table.py " + shlex.join(argv_used)
    budget, seeds, work, out = _budget_and_folders(args)
    clock = Clock(args.quiet)
    check_disjoint(budget, seeds)
    records = load_records([Path(f) for f in args.from_record or []], budget, seeds, DATA_SEEDS)
    recorded = [s for r in records for s in r.seeds]
    to_run = [s for s in seeds if s not in recorded]
    if not to_run:
        raise SystemExit(f"every seed asked for ({seeds}) is in {', '.join(args.from_record)}: nothing to run")
    dev, device_desc = _device(args)
    n_runs = len(to_run) * (len(VARIANTS) + len(TASKS) * len(MODES) * len(METHODS))
    clock.say(
        f"budget {budget.name}: seeds {to_run}, {len(to_run) * len(VARIANTS)} pre-training runs of "
        f"{budget.pre_iters} iterations, {len(to_run) * len(TASKS) * len(MODES) * len(METHODS)} downstream "
        f"runs of {budget.ft_iters} (fine-tuning) / {budget.linear_iters} (linear) iterations ({n_runs} runs); device {device_desc}; work {work}; out {out}"
        + "".join(f"; seeds {r.seeds} from {r.path}" for r in records)
    )
    est = _time_estimate(args, budget, to_run, dev, clock)
    if args.dry_run:
        return {"estimate_s": est, "budget": dataclasses.asdict(budget), "seeds": to_run}

    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    data = make_data(budget, work, clock)
    clock.add("data", time.perf_counter() - t)

    if args.jobs > 1:
        _side_by_side(budget, to_run, work, data, args, clock)
    measured = Measurements()
    for record in records:
        add_record(measured, record)
    for si, seed in enumerate(to_run):
        base = work / f"seed{seed}"
        ckpts = _pretrain_seed(budget, seed, base, args.device, clock, measured)
        _downstream_seed(budget, seed, base, data, args.device, clock, measured)
        _cluster_seed(budget, seed, si == 0, ckpts, data["embed"], args.device, clock, measured)

    t = time.perf_counter()
    sil_mean = silhouette_summary(measured.sil_seed)[0]
    figures = draw_figures(measured.points, sil_mean, out / "figures", smoke=budget.name == "tiny")
    clock.add("figures", time.perf_counter() - t)
    diag = [d for r in records for d in r.diag] + pretrain_diagnostics(work, to_run)
    md, js = write_outputs(
        out, budget, seeds, measured, clock, command, device_desc, est, figures, diag, records, first_seed=to_run[0]
    )
    clock.say(f"wrote {md}, {js} and {len(figures)} figures in {out / 'figures'}; total {fmt_s(clock.elapsed())}")
    return json.loads(js.read_text())


if __name__ == "__main__":
    main()

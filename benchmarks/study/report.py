"""The written results of the paper-table study: ``results.json`` (means, silhouettes and the
``meta`` record of how they were made) and ``RESULTS.md`` (Table 1, the clustering table, the
computed discussion, the pre-training diagnostics and the budget with its wall time).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import platform
from pathlib import Path

from .discussion import discussion
from .paired import md_paired, paired
from .plan import DATA_SEEDS, METHOD_TITLES, METHODS, MODES, TASK_SHORT, TASKS, Budget
from .record import Record, md_record
from .stats import Measurements, silhouette_summary, summarise
from .timing import Clock, fmt_s


def _nan_to_none(x):
    """JSON has no NaN: non-finite floats become null, through nested dicts, lists and tuples."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def _cell(mean: float, std: float, n: int, base: float | None, best: bool, several: bool) -> str:
    """One cell of Table 1: the value, ± std over several seeds, the difference to Scratch in brackets; bold if best."""
    if not math.isfinite(mean):
        return "n/a"
    s = f"{mean:.3f}"
    if several and n > 1:
        s += f" ± {std:.3f}"
    if base is not None and math.isfinite(base):
        s += f" ({mean - base:+.3f})"
    return f"**{s}**" if best else s


def _meta(
    budget: Budget,
    seeds: list[int],
    measured: Measurements,
    clock: Clock,
    command: str,
    device_desc: str,
    est: dict | None,
    spread: dict,
    sil_sd: dict,
    diag: list[dict],
) -> dict:
    """The ``meta`` record of results.json: budget, seeds, command, machine, wall times and the per-seed values."""
    return {
        "budget": budget.name,
        "smoke": budget.name == "tiny",
        "budget_config": dataclasses.asdict(budget),
        "seeds": seeds,
        "data_seeds": DATA_SEEDS,
        "command": command,
        "device": device_desc,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "wall_s": {**clock.phases, "total": clock.elapsed()},
        "run_wall_s": measured.run_walls,
        "runs_reused": measured.reused,
        "estimate_s": est,
        "per_seed": measured.per_seed,
        "std": {t: {m: {k: v["std"] for k, v in spread[t][m].items()} for m in MODES} for t in TASKS},
        "silhouette_per_seed": measured.sil_seed,
        "silhouette_std": sil_sd,
        "silhouette_2d": measured.sil2d,
        "pretrain_diagnostics": diag,
        "protocol": "pre-training checkpoint = last.pt of the run (same iterations for every variant); downstream "
        "model selected on the validation split (best mean Dice / AUC), evaluated once on the test "
        "split; identical hyper-parameters for every method",
    }


def _write_json(out: Path, mean: dict, sil: dict, meta: dict) -> Path:
    """Write ``out/results.json``: the mean per task, evaluation and method, the mean silhouettes and ``meta``."""
    results = {t: {mode: dict(mean[t][mode]) for mode in MODES} for t in TASKS}
    results["silhouette"] = sil
    results["meta"] = meta
    json_path = out / "results.json"
    json_path.write_text(json.dumps(_nan_to_none(results), indent=2, default=str) + "\n", encoding="utf-8")
    return json_path


def _md_intro(budget: Budget, seeds: list[int], device_desc: str, date: str, command: str, several: bool) -> list[str]:
    """Title, the smoke warning of a ``tiny`` run, budget, seeds, device, date and command, and how to read Table 1."""
    smoke = budget.name == "tiny"
    L = []
    title = "GVSL Studio: the paper's Table 1 and Fig. 7 in miniature"
    L.append(f"# {title}" + (" — SMOKE OUTPUT" if smoke else ""))
    L.append("")
    if smoke:
        L.append(
            "> **SMOKE OUTPUT of the `tiny` budget: it checks the plumbing, the numbers mean nothing.** "
            "Do not quote them; run `--budget small` or `--budget paper` for results."
        )
        L.append("")
    L.append(
        f"Budget **{budget.name}** ({budget.note}); seeds {', '.join(map(str, seeds))}; device {device_desc}; {date}."
    )
    L.append("")
    L.append("Command:")
    L.append("")
    L.append(f"```\n{command}\n```")
    L.append("")
    L.append(
        "Rows: pre-training; columns: downstream task × evaluation. Each cell: test-split value "
        + ("(mean ± std over seeds) " if several else "")
        + "and, in brackets, the difference to Scratch. Bold: best in the column. "
        "Dice = mean Dice over the structures; AUC = ROC AUC of abnormal vs normal myocardium."
    )
    L.append("")
    return L


def _md_table1(budget: Budget, mean: dict, spread: dict, several: bool) -> list[str]:
    """Table 1: one row per pre-training method, one column per task and evaluation, then the tasks' description."""
    L = []
    head = (
        ["Pre-training"]
        + [f"a) linear {TASK_SHORT[t]}" for t in TASKS]
        + [f"b) fine-tune {TASK_SHORT[t]}" for t in TASKS]
    )
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    best = {
        (t, mode): max((v for v in mean[t][mode].values() if math.isfinite(v)), default=float("nan"))
        for t in TASKS
        for mode in MODES
    }
    for method in METHODS:
        cells = [METHOD_TITLES[method]]
        for mode in MODES:
            for t in TASKS:
                v = mean[t][mode][method]
                base = None if method == "scratch" else mean[t][mode]["scratch"]
                cells.append(
                    _cell(
                        v,
                        spread[t][mode][method]["std"],
                        spread[t][mode][method]["n"],
                        base,
                        math.isfinite(v) and v == best[(t, mode)],
                        several,
                    )
                )
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append(
        "Tasks: heart_seg = seven cardiac structures on held-out synthetic cardiac CT "
        f"({budget.n_heart} subjects, {budget.n_train} labelled for training), heart_cls = abnormal vs "
        f"normal myocardium ({budget.n_cls} synthetic subjects, half abnormal), brain_seg = grey/white "
        f"matter/CSF on MNI-derived brain MR ({budget.n_brain} subjects, {budget.n_train} labelled for "
        "training). Splits: 20 % validation (checkpoint selection only), 30 % test."
    )
    L.append("")
    return L


def _md_clustering(
    out: Path,
    budget: Budget,
    figures: list[Path],
    sil: dict,
    sil_sd: dict,
    sil2d: dict,
    several: bool,
    tsne_seed: int,
) -> list[str]:
    """The clustering section: silhouettes per method with links to their t-SNE figures, and the Fig. 7 panel."""
    L = []
    L.append("## Clustering of the local features (cf. Fig. 7)")
    L.append("")
    L.append(
        f"Silhouette of the seven structures in the local-feature space f^l ({budget.per_label} voxels per "
        f"structure, mean over {budget.n_embed} held-out cardiac subject(s)"
        + (" and the seeds" if several else "")
        + "); Scratch is a randomly initialised network. "
        f"t-SNE and its silhouette are of the first subject of seed {tsne_seed}."
    )
    L.append("")
    L.append("| Pre-training | silhouette (features) | silhouette (t-SNE 2D) | figure |")
    L.append("|---|---|---|---|")
    rel = {}
    for f in figures:
        try:
            rel[f.stem] = f.relative_to(out).as_posix()
        except ValueError:
            rel[f.stem] = str(f)
    for method in METHODS:
        s = sil[method]
        cell = "n/a" if not math.isfinite(s) else (f"{s:.3f}" + (f" ± {sil_sd[method]:.3f}" if several else ""))
        s2 = sil2d.get(method)
        cell2 = f"{s2:.3f}" if s2 is not None and math.isfinite(s2) else "n/a"
        fig = rel.get(f"tsne_{method}")
        L.append(f"| {METHOD_TITLES[method]} | {cell} | {cell2} | {f'[png]({fig})' if fig else '-'} |")
    L.append("")
    if "fig7_tsne" in rel:
        L.append(f"![t-SNE of the local features per method]({rel['fig7_tsne']})")
        L.append("")
    return L


def _md_discussion(
    out: Path, budget: Budget, mean: dict, spread: dict, sil: dict, several: bool, pair: dict
) -> list[str]:
    """The computed discussion, then a person's findings from ``out/findings_BUDGET.md`` (not for a smoke run)."""
    L = []
    L.append("## Discussion (computed from the numbers above)")
    L.append("")
    L.extend(discussion(mean, spread, sil, several, pair))
    L.append("")
    # Written by a person after reading a run, kept in its own file so a rerun never erases it.
    findings = out / f"findings_{budget.name}.md"
    L.append("### Findings of a person")
    L.append("")
    if findings.is_file() and budget.name != "tiny":
        L.append(
            f"_From [`{findings.name}`]({findings.name}), written after reading a run; check it against the "
            "numbers above, which this command regenerates._"
        )
        L.append("")
        L.append(findings.read_text().strip())
    else:
        L.append(
            f"_Not written yet: put what the numbers show, where GVSL does not win and what was investigated "
            f"into `{findings.name}` next to this file; the next run includes it here._"
        )
    L.append("")
    return L


def _md_diagnostics(diag: list[dict]) -> list[str]:
    """The pre-training diagnostics table: loss terms first → last and the last validation of every run."""
    L = []
    L.append("## Pre-training diagnostics")
    L.append("")
    L.append(
        "Training loss terms averaged over the first and last 10 % of logged steps, and the last "
        "validation on the fixed un-augmented pair (NCC is negative; lower is better; `ncc_before` is the "
        "NCC of the pair without any warp)."
    )
    L.append("")
    L.append(
        "| seed | variant | iters | train NCC first → last | train MSE first → last | val NCC | val NCC before | val MSE |"
    )
    L.append("|---|---|---|---|---|---|---|---|")

    def f(row, key):
        return f"{row[key]:.4f}" if key in row else "-"

    for r in diag:
        ncc = f"{f(r, 'train_ncc_first')} → {f(r, 'train_ncc_last')}" if "train_ncc_first" in r else "-"
        mse = f"{f(r, 'train_mse_first')} → {f(r, 'train_mse_last')}" if "train_mse_first" in r else "-"
        L.append(
            f"| {r['seed']} | {r['variant']} | {r['iters']} | {ncc} | {mse} | {f(r, 'val_ncc')} | "
            f"{f(r, 'val_ncc_before')} | {f(r, 'val_mse')} |"
        )
    L.append("")
    return L


def _md_budget(budget: Budget, clock: Clock, reused: int, est: dict | None) -> list[str]:
    """The budget's sizes and schedules, the wall time per phase of this invocation, reused runs and the estimate."""
    L = []
    L.append("## Budget and wall time")
    L.append("")
    b = budget
    L.append(
        f"- pre-training: {b.pre_iters} iterations per variant, batch {b.pre_batch}, Adam lr {b.pre_lr:g}, "
        f"{b.size}^3 working cube, base width {b.width}, {b.n_synthetic} synthetic cardiac subjects per seed "
        "(subject seeds derived from the study seed); checkpoint used downstream: `last.pt`."
    )
    L.append(
        f"- downstream: fine-tuning {b.ft_iters} iterations at Adam lr {b.ft_lr:g}; linear probe (frozen "
        f"backbone, 1x1x1 convolution or linear layer) {b.linear_iters} iterations at lr {b.linear_lr:g}; "
        f"batch {b.ft_batch}, segmentation patches {b.patch}^3 with sliding-window inference, classification "
        f"volumes {b.cls_size}^3, validation every {b.validate_every('finetune')} "
        f"(fine-tuning) / {b.validate_every('linear')} (linear) iterations."
    )
    L.append(
        f"- data seeds: {', '.join(f'{k} {v}' for k, v in DATA_SEEDS.items())} (checked disjoint from the "
        "pre-training subjects)."
    )
    L.append("")
    L.append("| phase | wall time in this invocation |")
    L.append("|---|---|")
    for k, v in clock.phases.items():
        L.append(f"| {k} | {fmt_s(v)} |")
    L.append(f"| **total** | **{fmt_s(clock.elapsed())}** |")
    L.append("")
    if reused:
        L.append(
            f"{reused} run(s) were reused from an earlier invocation (their report.json existed); their own "
            "compute time is in `results.json` → `meta.run_wall_s`."
        )
        L.append("")
    if est:
        L.append(
            f"Estimate printed at the start: {fmt_s(est['total'])} "
            f"({', '.join(f'{k} {fmt_s(v)}' for k, v in est.items() if k != 'total')})."
        )
        L.append("")
    return L


def write_outputs(
    out: Path,
    budget: Budget,
    seeds: list[int],
    measured: Measurements,
    clock: Clock,
    command: str,
    device_desc: str,
    est: dict | None,
    figures: list[Path],
    diag: list[dict],
    records: list[Record] | None = None,
    first_seed: int | None = None,
) -> tuple[Path, Path]:
    """Write ``out/results.json`` and then ``out/RESULTS.md`` (the figures are already in ``figures``); returns both paths.

    ``records``: the earlier results.json files some seeds came from; ``first_seed``: the t-SNE's seed (default ``seeds[0]``).
    """
    out.mkdir(parents=True, exist_ok=True)
    several = len(seeds) > 1
    tsne_seed = seeds[0] if first_seed is None else first_seed
    mean, spread = summarise(measured.per_seed, seeds)
    sil, sil_sd = silhouette_summary(measured.sil_seed)
    meta = _meta(budget, seeds, measured, clock, command, device_desc, est, spread, sil_sd, diag)
    meta["tsne_seed"] = tsne_seed
    if records:
        meta["from_record"] = [r.provenance() for r in records]
    pair = paired(measured.per_seed, seeds, measured.sil_seed)
    meta["paired_gvsl_minus"] = pair
    json_path = _write_json(out, mean, sil, meta)
    lines = [
        *_md_intro(budget, seeds, device_desc, meta["date"], command, several),
        *md_record(records or []),
        *_md_table1(budget, mean, spread, several),
        *md_paired(pair),
        *_md_clustering(out, budget, figures, sil, sil_sd, measured.sil2d, several, tsne_seed),
        *_md_discussion(out, budget, mean, spread, sil, several, pair),
        *_md_diagnostics(diag),
        *_md_budget(budget, clock, measured.reused, est),
    ]
    md_path = out / "RESULTS.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md_path, json_path

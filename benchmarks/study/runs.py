"""Data sets and runs of the paper-table study: the generated downstream data, the configurations
of the pre-training and downstream runs, running (or reusing, or resuming) them, and what their
reports and metrics logs say.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from .plan import DATA_SEEDS, VARIANT_ENGINE, VARIANTS, Budget
from .timing import Clock, fmt_s


def make_data(budget: Budget, work: Path, clock: Clock) -> dict[str, Path]:
    """The downstream and embedding data sets (reused when already written with the same spec)."""
    from gvsl_app.data.brain import brain_dataset
    from gvsl_app.data.synthetic import cardiac_dataset

    shape = (budget.size,) * 3
    specs = {
        "heart_seg": ("cardiac", budget.n_heart, False),
        "heart_cls": ("cardiac", budget.n_cls, True),
        "brain_seg": ("brain", budget.n_brain, False),
        "embed": ("cardiac", budget.n_embed, False),
    }
    out = {}
    for name, (kind, n, cls) in specs.items():
        folder = work / "data" / name
        spec = {"kind": kind, "n": n, "seed": DATA_SEEDS[name], "shape": list(shape), "classification": cls}
        marker = folder / "dataset.json"
        if marker.is_file():
            have = json.loads(marker.read_text())
            if have != spec:
                raise SystemExit(f"{folder} holds another data set ({have}); use a fresh --work folder")
            out[name] = folder
            continue
        t = time.perf_counter()
        if kind == "cardiac":
            cardiac_dataset(folder, n, DATA_SEEDS[name], shape=shape, classification=cls)
        else:
            brain_dataset(folder, n, DATA_SEEDS[name], shape=shape)
        marker.write_text(json.dumps(spec))
        clock.say(
            f"data {name}: {n} {kind} subjects {shape[0]}^3 (seed {DATA_SEEDS[name]}) in "
            f"{time.perf_counter() - t:.1f} s"
        )
        out[name] = folder
    return out


_IGNORED_KEYS = ("resume", "device", "workers", "log_every")


def _same_config(run: Path, cfg) -> bool:
    """Whether the run's ``config.yaml`` holds ``cfg``, apart from keys that do not change the result."""
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        return False
    have = yaml.safe_load(path.read_text()) or {}
    want = dataclasses.asdict(cfg)
    # an option added after the run was made counts as equal when it is at its default
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    return all(_same_value(k, have.get(k, defaults.get(k)), v) for k, v in want.items() if k not in _IGNORED_KEYS)


_PATH_KEYS = ("run", "init", "data")


def _same_value(key: str, have, want) -> bool:
    """Equal values; paths count as equal when they name the same file (a work folder given
    relative once and absolute once is the same study).
    """
    if key in _PATH_KEYS and isinstance(have, str) and isinstance(want, str) and have != want:
        return Path(have).resolve() == Path(want).resolve()
    return have == want


def run_job(kind: str, cfg, label: str, clock: Clock) -> tuple[dict, bool]:
    """Run (or reuse, or resume) one pre-training / downstream run; returns (report, reused)."""
    from gvsl_app.training.finetune import finetune
    from gvsl_app.training.pretrain import pretrain

    run = Path(cfg.run)
    report_path = run / "report.json"
    if run.exists() and (run / "config.yaml").is_file() and not _same_config(run, cfg):
        raise SystemExit(
            f"{run}: an existing run has another configuration; use a fresh --work folder or delete that run"
        )
    report = finished_report(run)
    if report is not None:
        clock.say(f"{label}: reused ({report_path})")
        return report, True
    if (run / "checkpoints" / "last.pt").is_file():
        cfg = dataclasses.replace(cfg, resume=True)
        clock.say(f"{label}: resuming from {run / 'checkpoints' / 'last.pt'}")
    fn = pretrain if kind == "pretrain" else finetune
    every = max(1, cfg.iters // 4)
    next_print = every
    t = time.perf_counter()
    last = None
    for p in fn(cfg):
        last = p
        if p.phase == "error":
            raise RuntimeError(f"{label}: {p.message}")
        if p.phase == "train" and p.iteration >= next_print:
            next_print = (p.iteration // every + 1) * every
            losses = " ".join(f"{k}={v:.4f}" for k, v in p.losses.items())
            clock.say(f"  {label} {p.iteration}/{p.total} {losses} ({p.sec_per_step:.2f} s/step, eta {fmt_s(p.eta_s)})")
    if last is None or last.phase not in ("done",):
        raise RuntimeError(f"{label}: ended in phase {getattr(last, 'phase', None)!r}")
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"status": "done"}
    report.setdefault("wall_s", time.perf_counter() - t)
    return report, False


def _worker_threads(threads: int) -> None:
    """Initialise a worker process of :func:`run_jobs_side_by_side`: its share of the CPU threads."""
    import torch

    torch.set_num_threads(threads)


def _run_in_worker(kind: str, cfg, label: str, quiet: bool) -> str:
    """One run in a worker process; returns its label (the report stays in the run's folder)."""
    run_job(kind, cfg, label, Clock(quiet))
    return label


def run_jobs_side_by_side(jobs: list[tuple[str, object, str]], n: int, clock: Clock) -> None:
    """Run independent ``(kind, config, label)`` jobs in ``n`` spawned processes at once.

    Each process gets ``cores // n`` torch threads. Nothing is returned: every run leaves its
    report and checkpoints in its folder, and the study's usual sequential pass then reuses them,
    so results, resumption and reporting stay one code path. Small networks on a GPU are bound by
    kernel launches, not arithmetic, so several runs side by side use the card far better than one.
    A failed run stops the rest and is raised here.
    """
    todo = [j for j in jobs if finished_report(Path(j[1].run)) is None]
    if not todo:
        return
    threads = max(1, (os.cpu_count() or 1) // n)
    clock.say(f"running {len(todo)} runs side by side in {n} processes ({threads} torch thread(s) each)")
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(_run_in_worker, kind, cfg, label, clock.quiet) for kind, cfg, label in todo]
        try:
            for f in as_completed(futures):
                clock.say(f"{f.result()}: finished")
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def finished_report(run: Path) -> dict | None:
    """The run's report if it says the run finished, else None."""
    path = run / "report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if report.get("status") == "done" else None


def pretrain_config(budget: Budget, variant: str, seed: int, run: Path, device: str):
    """The engine's configuration of the pre-training run of ``variant`` for one study seed."""
    from gvsl_app.training.config import PretrainConfig

    return PretrainConfig(
        data="synthetic:cardiac",
        run=str(run),
        **VARIANT_ENGINE[variant],
        iters=budget.pre_iters,
        size=budget.size,
        width=budget.width,
        batch=budget.pre_batch,
        lr=budget.pre_lr,
        decay_start=budget.pre_decay_start,
        device=device,
        seed=seed,
        workers=budget.workers,
        n_synthetic=budget.n_synthetic,
        log_every=max(1, min(10, budget.pre_iters // 20)),
        ckpt_every=min(budget.ckpt_every, budget.pre_iters),
        val_every=max(1, min(budget.pre_iters, max(budget.val_every, budget.pre_iters // 4))),
    )


def downstream_config(budget: Budget, task: str, mode: str, init: str, seed: int, data: Path, run: Path, device: str):
    """The engine's configuration of one downstream run: ``task`` in ``mode`` from the weights ``init``."""
    from gvsl_app.training.config import FinetuneConfig

    seg = task != "heart_cls"
    iters = budget.iters(mode)
    return FinetuneConfig(
        data=str(data),
        run=str(run),
        init=init,
        task="seg" if seg else "cls",
        linear=mode == "linear",
        iters=iters,
        size=budget.patch if seg else budget.cls_size,
        width=budget.width,
        batch=budget.ft_batch,
        lr=budget.linear_lr if mode == "linear" else budget.ft_lr,
        device=device,
        seed=seed,
        workers=0,
        val_every=budget.validate_every(mode),
        val_fraction=budget.val_fraction,
        test_fraction=budget.test_fraction,
        n_train=budget.n_train if seg else 0,
        log_every=max(1, iters // 20),
    )


def downstream_value(report: dict, task: str) -> float:
    """The test-split value of a downstream run: AUC for ``heart_cls``, mean Dice otherwise (NaN if missing)."""
    key = "auc" if task == "heart_cls" else "mean_dice"
    v = (report.get("test") or {}).get(key)
    return float(v) if v is not None else float("nan")


def pretrain_diagnostics(work: Path, seeds: list[int]) -> list[dict]:
    """Loss terms at the start and end of each pre-training run and its last validation, from ``metrics.jsonl``."""
    from gvsl_app.training.runs import read_metrics

    rows = []
    for s in seeds:
        for v in VARIANTS:
            path = work / f"seed{s}" / "pretrain" / v / "metrics.jsonl"
            if not path.is_file():
                continue
            recs = read_metrics(path)
            train = [r for r in recs if "loss" in r and r.get("event") is None]
            vals = [r for r in recs if r.get("event") == "validate"]
            row = {"seed": s, "variant": v, "iters": train[-1]["iteration"] if train else 0}
            if train:
                k = max(1, len(train) // 10)
                for key in ("ncc", "mse"):
                    first = [r[key] for r in train[:k] if key in r]
                    lastv = [r[key] for r in train[-k:] if key in r]
                    if first and lastv:
                        row[f"train_{key}_first"] = float(np.mean(first))
                        row[f"train_{key}_last"] = float(np.mean(lastv))
            if vals:
                last = vals[-1]
                for key in ("val_ncc", "val_ncc_before", "val_mse", "val_smooth"):
                    if key in last:
                        row[key] = float(last[key])
            rows.append(row)
    return rows

"""What each ``gvsl`` subcommand does: build the engine's config or inputs from the parsed
arguments, run it (training with progress lines and clean stops), print the summary.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path

from gvsl_app.training.progress import StopFlag

UNDEFINED_DICE = "absent from both the prediction and the reference: Dice undefined, left out of the mean"
"""What an ``n/a`` Dice means, printed under the tables and written in the reports' notes."""


def dice_cell(value: float | None, width: int = 7) -> str:
    """A Dice value for a printed table: 4 decimals, or ``n/a`` when undefined (NaN or ``None``)."""
    from gvsl_app.services.metrics import dice_text

    return f"{dice_text(value):>{width}}"


def given_inputs(*pairs: tuple[str, str | Path | None]) -> list[tuple[str, Path]]:
    """``(what, path)`` of the inputs given (``None``: option not used), for ``prepare_output``."""
    return [(what, Path(p)) for what, p in pairs if p]


def list_empty_cases(results, with_reference: bool) -> None:
    """Give every case without any structure its row saying so (else the table would drop it)."""
    from gvsl_app.services.label_metrics import nothing_to_compare

    for res in results:
        if not res.rows:
            res.rows.append(nothing_to_compare(with_reference))
            res.notes.append(f"{res.case}: {res.rows[0].note}")


def _install_stop_handlers(stop: StopFlag) -> None:
    def handler(signum, _frame):
        if stop.is_set():  # second Ctrl-C: leave now
            raise KeyboardInterrupt
        stop.set(f"signal {signal.Signals(signum).name}")
        print(
            f"\n{signal.Signals(signum).name}: stopping at the next step boundary and saving last.pt "
            "(press again to abort)",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _signal_status(reason: str) -> int:
    """128 + the signal's number for a stop reason ``"signal NAME"``, else 0."""
    name = reason.removeprefix("signal ").strip()
    sig = getattr(signal.Signals, name, None) if name.startswith("SIG") else None
    return 128 + int(sig) if sig is not None else 0


def _drive(progress_iter, quiet: bool = False, stop: StopFlag | None = None) -> int:
    """Consume a training generator with a tqdm bar showing ETA and the loss terms.

    Returns 0 when done, 3 on a training error, and for a run stopped by a signal the
    shell's convention 128 + signal number (130 for Ctrl-C, 143 for SIGTERM), so a
    scheduler or script can tell an interrupted run from a finished one (the run folder
    still holds last.pt and a report saying ``stopped``).
    """
    from tqdm import tqdm

    bar = None
    rc = 0
    for p in progress_iter:
        if bar is None:
            bar = tqdm(
                total=p.total, initial=p.iteration, unit="it", dynamic_ncols=True, disable=quiet, file=sys.stderr
            )
        if p.phase == "train" and p.losses:
            bar.update(p.iteration - bar.n)
            bar.set_postfix({k: f"{v:.4f}" for k, v in p.losses.items()}, refresh=False)
        elif p.phase == "validate":
            bar.write(f"[{p.iteration}] validation: " + ", ".join(f"{k}={v:.4f}" for k, v in p.metrics.items()))
        elif p.phase in ("done", "stopped"):
            bar.update(p.iteration - bar.n)
            bar.close()
            print(p.message)
            if p.phase == "stopped" and stop is not None:
                rc = _signal_status(stop.reason)
        elif p.phase == "error":
            bar.close()
            print(f"error: {p.message}", file=sys.stderr)
            rc = 3
        elif p.message:
            bar.write(p.message)
    return rc


def _config_from_args(cls, args: argparse.Namespace):
    """A training config from ``--config`` and the command-line options named like its fields
    (an option left out is ``None``: the YAML's value or the config's default applies).
    """
    from dataclasses import fields

    from gvsl_app.training.config import load_config

    return load_config(
        cls, args.config, **{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    )


def cmd_pretrain(args: argparse.Namespace) -> int:
    """``gvsl pretrain``: GVSL pre-training with the CLI's options; Ctrl-C stops at the next step."""
    from gvsl_app.training.config import PretrainConfig
    from gvsl_app.training.pretrain import pretrain

    cfg = _config_from_args(PretrainConfig, args)
    stop = StopFlag()
    _install_stop_handlers(stop)
    return _drive(pretrain(cfg, stop), quiet=args.quiet, stop=stop)


def cmd_finetune(args: argparse.Namespace) -> int:
    """``gvsl finetune``: downstream fine-tuning with the CLI's options; Ctrl-C stops at the next step."""
    from gvsl_app.training.config import FinetuneConfig
    from gvsl_app.training.finetune import finetune

    cfg = _config_from_args(FinetuneConfig, args)
    stop = StopFlag()
    _install_stop_handlers(stop)
    return _drive(finetune(cfg, stop), quiet=args.quiet, stop=stop)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``gvsl evaluate``: score a fine-tuning run's best checkpoint on a data folder; print the table."""
    from gvsl_app.training.finetune import evaluate_run

    res = evaluate_run(args.run, args.data, device=args.device)
    if "dice" in res:
        print(f"{'label':>8} {'Dice':>7}")
        for k, v in res["dice"].items():
            print(f"{k:>8} {dice_cell(v)}")
        print(f"{'mean':>8} {dice_cell(res['mean_dice'])}   ({res['n']} cases, {args.data})")
        if any(not math.isfinite(v) for v in res["dice"].values()):
            print(f"{'n/a':>8}: {UNDEFINED_DICE}")
    else:
        print(f"AUC {res['auc']:.4f} ({res['n']} cases, {args.data})")
    return 0


def cmd_evaluate_labels(args: argparse.Namespace) -> int:
    """``gvsl evaluate-labels``: Dice, HD95 and ASSD of label maps against references, per case."""
    from gvsl_app.io.outputs import prepare_output
    from gvsl_app.services.label_cohort import evaluate_cohort, pair_cases, structure_summary, write_table

    inputs = given_inputs(("label map", args.labels), ("reference", args.reference))
    out = prepare_output(args.out, None, args.overwrite, inputs)
    pairs = pair_cases(args.labels, args.reference)
    names = _label_names(args.names, pairs[0][1])
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(pairs), unit="case", dynamic_ncols=True)
    try:
        results = evaluate_cohort(
            pairs,
            names,
            resample=args.resample,
            distances=not args.no_distances,
            progress=(lambda done, total, case: bar.update(1)) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    summary = structure_summary(results)
    list_empty_cases(results, with_reference=args.reference is not None)
    write_table(results, out)
    for res in results:
        for note in res.notes:
            print(f"note: {note}")
    print(f"{'structure':<24} {'n':>3} {'volume mL':>10} {'Dice':>13} {'HD95 mm':>13} {'ASSD mm':>13}")
    for name, s in summary.items():

        def cell(key: str) -> str:
            m = s[key]
            return f"{m['mean']:6.3f}+-{m['std']:<6.3f}" if m["mean"] is not None else f"{'-':>13}"

        print(
            f"{name[:24]:<24} {s['volume_ml']['n']:>3} {s['volume_ml']['mean']:10.2f} {cell('dice'):>13} "
            f"{cell('hd95_mm'):>13} {cell('assd_mm'):>13}"
        )
    print(f"wrote {out} ({len(results)} case(s))")
    return 0


def _label_names(names_file: str | None, first_label_map: Path) -> dict[int, str]:
    """Names from ``--names`` (an error if unreadable), else from a label table found next to
    the label maps (skipped with a note if unreadable: it may be another kind of file, such
    as a classification ``labels.csv``), else none.
    """
    from gvsl_app.io.label_tables import LabelTableError, find_label_table, read_label_table

    if names_file:
        return dict(read_label_table(names_file).names)
    found = find_label_table(first_label_map)
    if found is None:
        return {}
    try:
        table = read_label_table(found)
    except LabelTableError as exc:
        print(f"note: {found} is not a label table ({exc}); structures are named by value", file=sys.stderr)
        return {}
    print(f"structure names from {found}")
    return dict(table.names)


SAMPLE_MAX_N = 10_000
SAMPLE_SHAPE_RANGE = (16, 512)
"""``gvsl sample --shape``: the networks need 16 voxels (four poolings); 512³ is 256 MB an image."""


def cmd_sample(args: argparse.Namespace) -> int:
    """``gvsl sample``: write a synthetic or downloaded sample data set (images/, labels/)."""
    from gvsl_app.data.samples import DATASET_ENTRIES, write_samples
    from gvsl_app.io.outputs import prepare_output, staged_folder
    from gvsl_app.training.config import MAX_SEED, check_range

    check_range("--n", args.n, 1, SAMPLE_MAX_N)
    check_range("--shape", args.shape, *SAMPLE_SHAPE_RANGE)
    check_range("--seed", args.seed, 0, MAX_SEED)

    out = prepare_output(args.out, DATASET_ENTRIES, args.overwrite)
    # Written beside and swapped in whole: a re-run never leaves subjects of two data sets
    # (other shapes, seeds or counts) side by side in images/ and labels/.
    with staged_folder(out, DATASET_ENTRIES) as stage:
        write_samples(
            args.kind,
            stage,
            n=args.n,
            seed=args.seed,
            classification=args.classification,
            shape=(args.shape,) * 3,
            contrast=getattr(args, "contrast", "ct"),
        )
    print(f"wrote {args.n} {args.kind} subjects to {out}")
    return 0

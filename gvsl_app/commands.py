"""What each ``gvsl`` subcommand does: build the engine's config or inputs from the parsed
arguments, run it (training with progress lines and clean stops), print the summary."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from gvsl_app.io.jsonio import dumps_strict
from gvsl_app.training.progress import StopFlag


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
    (an option left out is ``None``: the YAML's value or the config's default applies)."""
    from dataclasses import fields

    from gvsl_app.training.config import load_config

    return load_config(
        cls, args.config, **{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    )


def cmd_pretrain(args: argparse.Namespace) -> int:
    from gvsl_app.training.config import PretrainConfig
    from gvsl_app.training.pretrain import pretrain

    cfg = _config_from_args(PretrainConfig, args)
    stop = StopFlag()
    _install_stop_handlers(stop)
    return _drive(pretrain(cfg, stop), quiet=args.quiet, stop=stop)


def cmd_finetune(args: argparse.Namespace) -> int:
    from gvsl_app.training.config import FinetuneConfig
    from gvsl_app.training.finetune import finetune

    cfg = _config_from_args(FinetuneConfig, args)
    stop = StopFlag()
    _install_stop_handlers(stop)
    return _drive(finetune(cfg, stop), quiet=args.quiet, stop=stop)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gvsl_app.training.finetune import evaluate_run

    res = evaluate_run(args.run, args.data, device=args.device)
    if "dice" in res:
        print(f"{'label':>8} {'Dice':>7}")
        for k, v in res["dice"].items():
            print(f"{k:>8} {v:7.4f}")
        print(f"{'mean':>8} {res['mean_dice']:7.4f}   ({res['n']} cases, {args.data})")
    else:
        print(f"AUC {res['auc']:.4f} ({res['n']} cases, {args.data})")
    return 0


def cmd_evaluate_labels(args: argparse.Namespace) -> int:
    from gvsl_app.services.label_cohort import evaluate_cohort, pair_cases, structure_summary, write_table

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
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
    write_table(results, out)
    for res in results:
        for note in res.notes:
            print(f"note: {note}")
    summary = structure_summary(results)
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
    as a classification ``labels.csv``), else none."""
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


def prepare_output(path: str | Path, ours: tuple[str, ...] | None, overwrite: bool) -> Path:
    """Refuse to mix a command's outputs with an earlier run's; with ``overwrite``, clear ours.

    ``ours`` lists the files a folder-writing command writes (``None``: ``path`` is one file).
    A non-empty folder, or an existing file, is refused unless ``--overwrite``, which then
    deletes exactly what this command writes, so no stale file of an earlier call (say
    ``warped_labels.nii.gz`` of another pair) stays beside the new outputs. Checked before
    any work is done.
    """
    path = Path(path)
    parent = path.parent if ours is None else path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {parent} is a file, not a folder; choose another --out")
    if ours is None:
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; choose another --out or pass --overwrite to replace it")
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; --out names the label file to write (e.g. seg.nii.gz)")
        return path
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; --out names the folder to write the outputs into")
    present = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if present and not overwrite:
        shown = ", ".join(present[:5]) + (" ..." if len(present) > 5 else "")
        raise FileExistsError(
            f"{path} is not empty ({shown}); choose another --out or pass --overwrite, which "
            f"replaces this command's outputs there ({', '.join(ours)})"
        )
    for name in ours if overwrite else ():
        (path / name).unlink(missing_ok=True)
    return path


def cmd_match(args: argparse.Namespace) -> int:
    from gvsl_app.io.images import read_labels, read_volume
    from gvsl_app.services.match_result import MATCH_OUTPUTS
    from gvsl_app.services.matching import match

    prepare_output(args.out, MATCH_OUTPUTS, args.overwrite)
    fixed, moving = read_volume(args.fixed), read_volume(args.moving)
    ml = read_labels(args.moving_labels, moving) if args.moving_labels else None
    fl = read_labels(args.fixed_labels, fixed) if args.fixed_labels else None
    res = match(
        fixed,
        moving,
        weights=args.weights,
        size=args.size,
        device=args.device,
        moving_labels=ml,
        fixed_labels=fl,
        refine=args.refine_preset if args.refine else False,
        fallback=args.fallback,
        passes=args.passes,
    )
    out = res.save(args.out)
    r = res.report
    refined = f", refinement {r['seconds']['refine_s']:.2f} s" if args.refine else ""
    for line in r["warnings"] + r["fallback"]:
        print(f"warning: {line}", file=sys.stderr)
    print(
        f"matched {args.moving} -> {args.fixed} on {r['device']} in {r['seconds']['total_s']:.2f} s "
        f"(network {r['seconds']['network_s']:.2f} s{refined})"
    )
    print(f"  NCC {r['ncc_before']:.4f} -> {r['ncc_after']:.4f}; folding {r['folding_percent']:.3f} %")
    if "mean_dice_after" in r:
        print(f"  mean Dice {r['mean_dice_before']:.4f} -> {r['mean_dice_after']:.4f}")
    print(f"  wrote {out}/: {', '.join(res.written_files())}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from gvsl_app.io.images import read_labels, read_volume, write_volume
    from gvsl_app.services.segment import segment

    if Path(args.image).is_dir():
        return _segment_folder(args)
    report_path = Path(args.report) if args.report else Path(str(args.out).split(".nii")[0] + "_report.json")
    prepare_output(args.out, None, args.overwrite)
    prepare_output(report_path, None, args.overwrite)
    image = read_volume(args.image)
    ref = read_labels(args.reference, image) if args.reference else None
    res = segment(image, args.weights, device=args.device, reference=ref)
    if args.weights is None:
        print(res.report["segmenter"])
    write_volume(res.labels, args.out, is_label=True)
    report_path.write_text(dumps_strict(res.report))
    names = res.report["label_names"]
    print(f"{'label':>18} {'mL':>9}" + (f" {'Dice':>7}" if ref is not None else ""))
    for k, v in res.report["volume_ml"].items():
        dice = f" {res.report['dice'].get(k, float('nan')):7.4f}" if ref is not None else ""
        print(f"{names.get(k, k):>18} {v:9.2f}{dice}")
    if ref is not None:
        print(f"{'mean Dice':>18} {'':>9} {res.report['mean_dice']:7.4f}")
    print(f"wrote {args.out} and {report_path}")
    return 0


def _segment_folder(args: argparse.Namespace) -> int:
    """``gvsl segment FOLDER --out DIR``: every volume, then one table of volumes (and, with
    references, Dice/HD95/ASSD) per structure and case in ``DIR/metrics.csv``."""
    from gvsl_app.io.folders import images_folder, list_volume_files, require_volumes
    from gvsl_app.io.images import read_volume, write_volume
    from gvsl_app.services.label_cohort import evaluate_cohort, structure_summary, write_table
    from gvsl_app.services.segment import segment

    folder = Path(args.image)
    images = require_volumes(images_folder(folder))
    ref_dir = Path(args.reference) if args.reference else (folder / "labels" if (folder / "labels").is_dir() else None)
    refs = list_volume_files(ref_dir) if ref_dir is not None else {}
    ours = (*(f"{n}.nii.gz" for n in images), "metrics.csv", "report.json")
    out = prepare_output(args.out, ours, args.overwrite)
    names: dict[int, str] = {}
    bar = None
    if not getattr(args, "quiet", False):
        from tqdm import tqdm

        bar = tqdm(total=len(images), unit="volume", dynamic_ncols=True)
    pairs: list[tuple[str, Path, Path | None]] = []
    try:
        for name, path in images.items():
            res = segment(read_volume(path), args.weights, device=args.device)
            if args.weights is None and not pairs:
                print(res.report["segmenter"])  # once: a folder is one modality
            names = {int(k): v for k, v in res.report["label_names"].items()}
            seg_path = write_volume(res.labels, out / f"{name}.nii.gz", is_label=True)
            pairs.append((name, Path(seg_path), refs.get(name)))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    with_ref = [p for p in pairs if p[2] is not None]
    results = evaluate_cohort(with_ref, names) + evaluate_cohort([p for p in pairs if p[2] is None], names)
    write_table(results, out / "metrics.csv")
    summary = structure_summary(results)
    (out / "report.json").write_text(
        dumps_strict({"images": str(folder), "references": str(ref_dir) if refs else None, "summary": summary})
    )
    print(f"{'structure':<18} {'n':>3} {'volume mL':>10}" + (f" {'Dice':>7}" if with_ref else ""))
    for name, s in summary.items():
        dice = s["dice"]["mean"]
        cell = (f" {dice:7.4f}" if dice is not None else f" {'-':>7}") if with_ref else ""
        print(f"{name[:18]:<18} {s['volume_ml']['n']:>3} {s['volume_ml']['mean']:10.2f}{cell}")
    print(f"wrote {len(pairs)} segmentation(s), {out / 'metrics.csv'} and {out / 'report.json'}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from gvsl_app.io.images import read_labels, read_volume
    from gvsl_app.services.embed import embed

    prepare_output(args.out, ("embedding.csv", "report.json"), args.overwrite)
    image = read_volume(args.image)
    labels = read_labels(args.labels, image)
    res = embed(
        image,
        labels,
        weights=args.weights,
        per_label=args.per_label,
        size=args.size,
        seed=args.seed,
        device=args.device,
    )
    out = res.save(args.out)
    r = res.report
    fmt = lambda v: "n/a (one label)" if v is None else f"{v:.4f}"  # noqa: E731
    print(
        f"{r['n_points']} voxels embedded; silhouette: features {fmt(r['silhouette_features'])}, "
        f"2D {fmt(r['silhouette_2d'])}; wrote {out}/embedding.csv and report.json"
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from gvsl_app.data.samples import write_samples

    out = write_samples(
        args.kind, args.out, n=args.n, seed=args.seed, classification=args.classification, shape=(args.shape,) * 3
    )
    print(f"wrote {args.n} {args.kind} subjects to {out}")
    return 0

"""The ``gvsl`` command line: the same engine functions the GUI calls."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from gvsl_app.allocator import tune_cpu_allocator
from gvsl_app.io.jsonio import dumps_strict
from gvsl_app.training.progress import StopFlag


def _add_common_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with options (command-line options override it)")
    p.add_argument("--iters", type=int, help="optimisation steps")
    p.add_argument("--size", type=int, help="working cube side / patch side in voxels")
    p.add_argument("--width", type=int, help="base width (paper: 32; each level doubles it)")
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--resume", action="store_true", default=None, help="continue from RUN/checkpoints/last.pt")
    p.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="start afresh in a run folder that holds a run (the earlier run moves to RUN/history/)",
    )


def _add_output_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier call at --out")


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


def cmd_pretrain(args: argparse.Namespace) -> int:
    from gvsl_app.training.config import PretrainConfig, load_config
    from gvsl_app.training.pretrain import pretrain

    cfg = load_config(
        PretrainConfig,
        args.config,
        data=args.data,
        run=args.run,
        variant=args.variant,
        iters=args.iters,
        size=args.size,
        width=args.width,
        batch=args.batch,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        workers=args.workers,
        resume=args.resume,
        overwrite=args.overwrite,
        compile=args.compile,
        n_synthetic=args.n_synthetic,
        affine_warmup=args.affine_warmup,
        affine_head=args.affine_head,
        deformable_head=args.deformable_head,
        snapshot_every=args.snapshot_every,
        similarity=args.similarity,
        match_input=args.match_input,
        w_affine=args.w_affine,
        relative_pose=args.relative_pose,
    )
    stop = StopFlag()
    _install_stop_handlers(stop)
    return _drive(pretrain(cfg, stop), quiet=args.quiet, stop=stop)


def cmd_finetune(args: argparse.Namespace) -> int:
    from gvsl_app.training.config import FinetuneConfig, load_config
    from gvsl_app.training.finetune import finetune

    cfg = load_config(
        FinetuneConfig,
        args.config,
        data=args.data,
        run=args.run,
        init=args.init,
        task=args.task,
        linear=args.linear,
        iters=args.iters,
        size=args.size,
        width=args.width,
        batch=args.batch,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        workers=args.workers,
        resume=args.resume,
        overwrite=args.overwrite,
        n_train=args.n_train,
        val_every=args.val_every,
    )
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
        refine=args.refine,
        fallback=args.fallback,
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

    report_path = Path(args.report) if args.report else Path(str(args.out).split(".nii")[0] + "_report.json")
    prepare_output(args.out, None, args.overwrite)
    prepare_output(report_path, None, args.overwrite)
    image = read_volume(args.image)
    ref = read_labels(args.reference, image) if args.reference else None
    res = segment(image, args.weights, device=args.device, reference=ref)
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


COMMANDS_GROUP = "gvsl.commands"
"""Entry-point group through which installed front ends add subcommands (``gvsl app`` comes
from the napari plugin this way): the engine never imports a layer above it."""


def _add_plugin_commands(sub) -> None:
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # a front end whose own dependencies are missing: skip it, say why
            logging.getLogger(__name__).debug("gvsl: command %r unavailable: %s", ep.name, exc)
            continue
        register(sub)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gvsl", description="GVSL Studio: self-supervised pre-training and Z-Matching of 3D medical volumes."
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="GVSL pre-training (or an ablation variant)")
    p.add_argument(
        "--data",
        help="folder of volumes (images/ or the folder itself), synthetic:cardiac, "
        "synthetic:brain or synthetic:cardiac+brain",
    )
    # --run-dir: torchrun's own parser takes a bare "--run" for its --run-path option
    p.add_argument("--run", "--run-dir", dest="run", help="run folder to write (--run-dir under torchrun)")
    p.add_argument("--variant", choices=["gvsl", "restoration", "matching", "no-affine"])
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    p.add_argument("--n-synthetic", type=int, help="subjects generated per kind for synthetic:...")
    p.add_argument("--affine-warmup", type=int, help="first N iterations match with the affine head alone")
    p.add_argument(
        "--similarity",
        choices=["multiscale-ncc", "ncc"],
        help="matching loss (default multiscale-ncc; ncc = the paper's full-resolution local NCC)",
    )
    p.add_argument(
        "--match-input",
        choices=["clean", "transformed"],
        help="what the matching sees: clean scans (default; restoration gets the transformed scan in a "
        "second pass) or the appearance-transformed moving scan (the paper)",
    )
    p.add_argument("--snapshot-every", type=int, help="also keep the weights of every N-th iteration")
    p.add_argument(
        "--affine-head",
        choices=["keypoints", "paper"],
        help="global matching head (default keypoints; paper = pooled bottleneck regression)",
    )
    p.add_argument(
        "--deformable-head",
        choices=["pyramid", "pyramid-wide", "pyramid-corr", "pyramid-full", "paper"],
        help="local matching head (default pyramid: 1/4 then 1/2 resolution; pyramid-wide: its heads 8x "
        "wider; pyramid-corr adds a local correlation cost volume to each level; pyramid-full adds full "
        "resolution; paper = one full-resolution head)",
    )
    p.add_argument(
        "--w-affine",
        type=float,
        help="weight of the similarity after the affine part alone (default 0: only the whole map is scored)",
    )
    p.add_argument(
        "--relative-pose",
        action="store_true",
        default=None,
        help="also move the moving scan alone by a random affine (rotation 10 deg, scale 10 %%, shift 6 %%)",
    )
    p.add_argument("--quiet", action="store_true")
    _add_common_training(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune or linearly evaluate on a downstream task")
    p.add_argument("--data", required=False, help="folder with images/ and labels/ (seg) or labels.csv (cls)")
    p.add_argument("--run", "--run-dir", dest="run", help="run folder to write (--run-dir under torchrun)")
    p.add_argument("--init", help="scratch, one of our checkpoints, or the authors' GVSL checkpoint")
    p.add_argument("--task", choices=["seg", "cls"])
    p.add_argument("--linear", action="store_true", default=None, help="freeze the backbone: linear probe")
    p.add_argument("--n-train", type=int, help="use only the first N training subjects")
    p.add_argument("--val-every", type=int)
    p.add_argument("--quiet", action="store_true")
    _add_common_training(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="Dice per label or AUC of a run's best checkpoint on a data folder")
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("match", help="Z-Matching of MOVING onto FIXED")
    p.add_argument("fixed")
    p.add_argument("moving")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", help="GVSL checkpoint (default: shipped demo weights)")
    p.add_argument("--moving-labels")
    p.add_argument("--fixed-labels")
    p.add_argument("--size", type=int, help="working cube side (default: the weights' training size)")
    p.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="polish the network's map on this pair by instance optimisation (default; ~5 s for a "
        "128^3 pair on a 2-core CPU); --no-refine returns the network's map alone (~2 s)",
    )
    p.add_argument(
        "--fallback",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the identity when the network's map lowers the similarity (default); "
        "--no-fallback keeps the network's map whatever it does",
    )
    p.add_argument("--device", default="auto")
    _add_output_overwrite(p)
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("segment", help="segment a volume with a fine-tuned checkpoint")
    p.add_argument("image")
    p.add_argument("--weights", help="segmentation checkpoint (default: shipped demo)")
    p.add_argument("--out", required=True)
    p.add_argument("--reference", help="ground-truth labels: adds Dice to the report")
    p.add_argument("--report", help="report JSON path (default: next to --out)")
    p.add_argument("--device", default="auto")
    _add_output_overwrite(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("embed", help="t-SNE of local features per anatomical label")
    p.add_argument("image")
    p.add_argument("labels")
    p.add_argument("--out", required=True)
    p.add_argument("--weights")
    p.add_argument("--per-label", type=int, default=500)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    _add_output_overwrite(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("sample", help="write synthetic cardiac CT or brain MR subjects")
    p.add_argument("kind", choices=["cardiac", "brain"])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classification", action="store_true", help="cardiac: add labels.csv with abnormal cases")
    p.add_argument("--shape", type=int, default=96, help="side of the written cubes in voxels")
    p.set_defaults(func=cmd_sample)

    _add_plugin_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if getattr(args, "tune_allocator", True):
        # A job process: reusing freed tensor memory saves the page faults of every large
        # activation (~20 % of a CPU forward or training step). An interactive front end
        # (`gvsl app`) sets tune_allocator=False to stay a good neighbour instead.
        tune_cpu_allocator()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # The second Ctrl-C of _install_stop_handlers: leave at once, without a traceback.
        print(
            f"gvsl {args.command}: aborted by a second interrupt; the run folder keeps the last checkpoint "
            "written (resume with --resume)",
            file=sys.stderr,
        )
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        # User-facing failures (bad input, files, checkpoints: CheckpointError is a RuntimeError)
        # become one line; a TypeError or KeyError is a bug of ours and keeps its traceback.
        if args.verbose:
            raise
        print(f"gvsl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

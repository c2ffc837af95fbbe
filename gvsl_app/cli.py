"""The ``gvsl`` command line: the parser and ``main``; the commands live in :mod:`gvsl_app.commands`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing

from gvsl_app import commands as c
from gvsl_app import volume_commands as vc
from gvsl_app.allocator import tune_cpu_allocator
from gvsl_app.options import (
    AffineHead,
    DeformableHead,
    EmbedOptions,
    MatchInput,
    MatchOptions,
    PoseRange,
    SegmentOptions,
    Task,
    TrainingSimilarity,
    Variant,
)


def add_options(parser: argparse.ArgumentParser, options_cls: type) -> None:
    """One command-line option per field of an options dataclass (:mod:`gvsl_app.options`),
    with its default, choices and help from the field: ``--field-name``, or ``--name/--no-name``
    for a switch. :func:`gvsl_app.options.from_args` turns the parsed values back into the dataclass.
    """
    hints = typing.get_type_hints(options_cls)
    for f in dataclasses.fields(options_cls):
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        kind = hints[f.name]
        default = f.default
        help_text = meta.get("help", "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif meta.get("choices") is not None:
            parser.add_argument(flag, choices=meta["choices"].values(), default=str(default), help=help_text)
        else:
            number = int if int in (typing.get_args(kind) or (kind,)) else str
            parser.add_argument(flag, type=number, default=default, help=help_text)


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
    """The ``gvsl`` parser: every subcommand, those of installed front ends (``gvsl app``) included."""
    ap = argparse.ArgumentParser(
        prog="gvsl", description="GVSL Studio: self-supervised pre-training and Z-Matching of 3D medical volumes."
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    _add_pretrain(sub)
    _add_finetune(sub)
    _add_evaluate(sub)
    _add_evaluate_labels(sub)
    _add_match(sub)
    _add_segment(sub)
    _add_embed(sub)
    _add_sample(sub)
    _add_plugin_commands(sub)
    return ap


def _add_pretrain(sub) -> None:
    """``gvsl pretrain``."""
    p = sub.add_parser("pretrain", help="GVSL pre-training (or an ablation variant)")
    p.add_argument(
        "--data",
        help="folder of volumes (images/ or the folder itself), synthetic:cardiac, "
        "synthetic:brain, synthetic:cardiac+brain or synthetic:cardiac-hard",
    )
    # --run-dir: torchrun's own parser takes a bare "--run" for its --run-path option
    p.add_argument("--run", "--run-dir", dest="run", help="run folder to write (--run-dir under torchrun)")
    p.add_argument("--variant", choices=Variant.values())
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    p.add_argument("--n-synthetic", type=int, help="subjects generated per kind for synthetic:...")
    p.add_argument("--affine-warmup", type=int, help="first N iterations match with the affine head alone")
    p.add_argument(
        "--decay-start",
        type=int,
        help="from this iteration to the last, lower the learning rate along a half cosine (0: constant)",
    )
    p.add_argument("--snapshot-every", type=int, help="also keep the weights of every N-th iteration")
    p.add_argument(
        "--relative-pose",
        nargs="?",
        const="small",
        choices=PoseRange.values(),
        help="also move the moving scan alone by a random affine: small (the flag alone: rotation 10 deg, "
        "scale 10 %%, shift 6 %%) or large (rotation 30 deg, scale 20 %%, shift 15 %%)",
    )
    p.add_argument("--init", help="start the network from a GVSL checkpoint's weights (default: scratch)")
    p.add_argument("--quiet", action="store_true")
    _add_matching_objective(p)
    _add_common_training(p)
    p.set_defaults(func=c.cmd_pretrain)


def _add_matching_objective(p: argparse.ArgumentParser) -> None:
    """``gvsl pretrain``'s Z-Matching heads and loss."""
    p.add_argument(
        "--similarity",
        choices=TrainingSimilarity.values(),
        help="matching loss (default multiscale-ncc; ncc = the paper's full-resolution local NCC)",
    )
    p.add_argument(
        "--ncc-eps",
        type=float,
        help="damping of the NCC's denominator on window means (default 1e-5; the authors' 1e-5 on window "
        "sums is about 1.9e-11 here, docs/results/matching.md)",
    )
    p.add_argument(
        "--match-input",
        choices=MatchInput.values(),
        help="what the matching sees: clean scans (default; restoration gets the transformed scan in a "
        "second pass) or the appearance-transformed moving scan (the paper)",
    )
    p.add_argument(
        "--affine-head",
        choices=AffineHead.values(),
        help="global matching head (default keypoints; paper = pooled bottleneck regression)",
    )
    p.add_argument(
        "--deformable-head",
        choices=DeformableHead.values(),
        help="local matching head (default pyramid: 1/4 then 1/2 resolution; pyramid-wide: its heads 8x "
        "wider; pyramid-corr adds a local correlation cost volume to each level; pyramid-full adds full "
        "resolution; paper = one full-resolution head)",
    )
    p.add_argument(
        "--w-affine",
        type=float,
        help="weight of the similarity after the affine part alone (default 0: only the whole map is scored)",
    )


def _add_finetune(sub) -> None:
    """``gvsl finetune``."""
    p = sub.add_parser("finetune", help="fine-tune or linearly evaluate on a downstream task")
    p.add_argument("--data", required=False, help="folder with images/ and labels/ (seg) or labels.csv (cls)")
    p.add_argument("--run", "--run-dir", dest="run", help="run folder to write (--run-dir under torchrun)")
    p.add_argument("--init", help="scratch, one of our checkpoints, or the authors' GVSL checkpoint")
    p.add_argument("--task", choices=Task.values())
    p.add_argument("--linear", action="store_true", default=None, help="freeze the backbone: linear probe")
    p.add_argument("--n-train", type=int, help="use only the first N training subjects")
    p.add_argument("--val-every", type=int)
    p.add_argument("--quiet", action="store_true")
    _add_common_training(p)
    p.set_defaults(func=c.cmd_finetune)


def _add_evaluate(sub) -> None:
    """``gvsl evaluate``."""
    p = sub.add_parser("evaluate", help="Dice per label or AUC of a run's best checkpoint on a data folder")
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=c.cmd_evaluate)


def _add_evaluate_labels(sub) -> None:
    """``gvsl evaluate-labels``."""
    p = sub.add_parser(
        "evaluate-labels",
        help="volumes, Dice, HD95 and ASSD per structure of label maps made anywhere, against references",
    )
    p.add_argument("labels", help="a label map or a folder of them (cases paired by file name)")
    p.add_argument("reference", nargs="?", help="the reference label map or folder (omit for volumes only)")
    p.add_argument("--out", required=True, help="CSV table to write (one row per case and structure)")
    p.add_argument(
        "--names",
        help="label names and colours: ITK-SNAP label descriptions, a 3D Slicer colour table, CSV or JSON "
        "(default: a table found next to the label maps)",
    )
    p.add_argument(
        "--resample",
        action="store_true",
        help="put a label map on another grid onto its reference's with nearest neighbour (default: refuse)",
    )
    p.add_argument("--no-distances", action="store_true", help="skip HD95/ASSD (the slow part for large maps)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out table")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=c.cmd_evaluate_labels)


def _add_match(sub) -> None:
    """``gvsl match``."""
    p = sub.add_parser("match", help="Z-Matching of MOVING onto FIXED")
    p.add_argument("fixed")
    p.add_argument("moving")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", help="GVSL checkpoint (default: shipped demo weights)")
    p.add_argument("--moving-labels")
    p.add_argument("--fixed-labels")
    p.add_argument("--fixed-series", metavar="UID", help="series to read when FIXED is a DICOM folder of several")
    p.add_argument("--moving-series", metavar="UID", help="series to read when MOVING is a DICOM folder of several")
    add_options(p, MatchOptions)
    _add_output_overwrite(p)
    p.set_defaults(func=vc.cmd_match)


def _add_segment(sub) -> None:
    """``gvsl segment``."""
    p = sub.add_parser("segment", help="segment a volume (or every volume of a folder) with a fine-tuned checkpoint")
    p.add_argument(
        "image",
        help="a volume (a file or a DICOM series folder), or a folder of volumes (a data folder's images/ is used "
        "when present)",
    )
    p.add_argument("--series", metavar="UID", help="series to read when IMAGE is a DICOM folder of several")
    p.add_argument("--weights", help="segmentation checkpoint (default: shipped demo)")
    p.add_argument("--out", required=True, help="label map to write (a folder when IMAGE is a folder)")
    p.add_argument(
        "--reference",
        help="ground-truth labels (a folder for a folder; default there: the data folder's labels/): adds "
        "Dice (and, for folders, HD95/ASSD) to the report",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar (folders)")
    p.add_argument("--report", help="report JSON path (default: next to --out)")
    add_options(p, SegmentOptions)
    _add_output_overwrite(p)
    p.set_defaults(func=vc.cmd_segment)


def _add_embed(sub) -> None:
    """``gvsl embed``."""
    p = sub.add_parser("embed", help="t-SNE of local features per anatomical label")
    p.add_argument("image", help="a volume (a file or a DICOM series folder)")
    p.add_argument("labels")
    p.add_argument("--out", required=True)
    p.add_argument("--series", metavar="UID", help="series to read when IMAGE is a DICOM folder of several")
    p.add_argument("--weights", help="GVSL checkpoint (default: shipped demo weights)")
    add_options(p, EmbedOptions)
    _add_output_overwrite(p)
    p.set_defaults(func=vc.cmd_embed)


def _add_sample(sub) -> None:
    """``gvsl sample``."""
    p = sub.add_parser("sample", help="write synthetic cardiac CT or brain MR subjects")
    p.add_argument("kind", choices=["cardiac", "cardiac-hard", "brain"])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classification", action="store_true", help="cardiac: add labels.csv with abnormal cases")
    p.add_argument("--shape", type=int, default=96, help="side of the written cubes in voxels")
    p.add_argument(
        "--contrast",
        choices=["ct", "mr"],
        default="ct",
        help="cardiac: ct (contrast-enhanced CT, default) or mr (the same subjects as cine MR: matching CT to MR)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the data set already in --out (its images/, labels/ and labels.csv)",
    )
    p.set_defaults(func=c.cmd_sample)


def _after_abort(args: argparse.Namespace) -> str:
    """What to do after an aborted command: resume from its run's last checkpoint, or (none
    written yet) run it again, which starts afresh in the same folder.
    """
    run = getattr(args, "run", None)
    if not run:
        return "nothing was written (outputs are swapped in only when complete)"
    from pathlib import Path

    last = Path(run) / "checkpoints" / "last.pt"
    if last.is_file():
        return f"{last} is the last checkpoint written: continue with --resume"
    return f"no checkpoint was written yet: run the same command again (without --resume) to start afresh in {run}"


def main(argv: list[str] | None = None) -> int:
    """Run ``gvsl`` with ``argv``; a user's error is one line on stderr and exit status 2."""
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
        print(f"gvsl {args.command}: aborted by a second interrupt; {_after_abort(args)}", file=sys.stderr)
        return 130
    except MemoryError as exc:
        # Inputs and options are estimated before large allocations (gvsl_app.memory); one
        # that was not still ends in one line rather than a traceback.
        if args.verbose:
            raise
        print(f"gvsl {args.command}: error: out of memory ({exc}); use smaller inputs or options", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as exc:
        # User-facing failures (bad input, files, checkpoints: CheckpointError is a RuntimeError)
        # become one line; a TypeError or KeyError is a bug of ours and keeps its traceback.
        if args.verbose:
            raise
        print(f"gvsl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``gvsl`` subcommands that read volumes and write files next to them: ``match``,
``segment`` and ``embed``.

Each one checks its outputs first (never mixed with an earlier run's, never over one of its
own inputs, writable), then reads and validates every input, computes, and only then
writes, into a hidden folder inside ``--out`` whose files replace the earlier outputs when it is
complete (:mod:`gvsl_app.io.outputs`); a failure anywhere leaves the earlier outputs intact.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from gvsl_app.commands import UNDEFINED_DICE, dice_cell, given_inputs, list_empty_cases
from gvsl_app.io.jsonio import dumps_strict
from gvsl_app.io.volume import Volume

EMBED_OUTPUTS = ("embedding.csv", "report.json")

MATCH_BYTES_PER_VOXEL = 200
"""Peak memory of ``gvsl match`` per voxel of the fixed scan (its grid carries the outputs: the
displacement field, its sampling grid, the warped image and labels, the Jacobian): about 145
bytes without the refinement and 200 with it, measured on a 160^3 pair (a 2-core CPU)."""
SEGMENT_BYTES_PER_VOXEL = 32
"""Peak memory of ``gvsl segment`` per input voxel (the input, its resampled copy and the label
map back on its grid; the network works on a fixed-size cube)."""


def _series(**volumes: Volume | None) -> dict[str, str]:
    """The UID of the DICOM series each volume read from a DICOM folder came from ({role: UID}),
    so that a folder of several series is reproducible.
    """
    return {role: v.meta["dicom"]["series_uid"] for role, v in volumes.items() if v is not None and "dicom" in v.meta}


def record_series(report: dict, **volumes: Volume | None) -> None:
    """Add to ``report`` the DICOM series read (``dicom_series``: {role: UID}), when any was."""
    chosen = _series(**volumes)
    if chosen:
        report["dicom_series"] = chosen


def default_report_path(out: str | Path) -> Path:
    """``seg.nii.gz`` -> ``seg_report.json`` beside it: the label file's own name without its
    volume ending (``.nii.gz``, ``.mha``...), whatever dots the folders' names hold.
    """
    from gvsl_app.io.folders import volume_suffix

    out = Path(out)
    suffix = volume_suffix(out.name)
    stem = out.name[: -len(suffix)] if suffix and len(suffix) < len(out.name) else out.stem
    return out.with_name(f"{stem}_report.json")


def _undefined_dice_notes(dice: dict | None, names: dict) -> list[str]:
    """A note per label absent from both maps (its Dice undefined; the services' means already
    leave it out).
    """
    return [
        f"{names.get(k, k)} (label {k}): {UNDEFINED_DICE}"
        for k, v in (dice or {}).items()
        if v is None or not math.isfinite(v)
    ]


def _note_undefined_dice(report: dict, dice_key: str) -> None:
    """The notes of :func:`_undefined_dice_notes` added to a report dict's ``notes``."""
    notes = _undefined_dice_notes(report.get(dice_key), report.get("label_names", {}))
    if notes:
        report.setdefault("notes", []).extend(n for n in notes if n not in report.get("notes", []))


def _check_series_option(args: argparse.Namespace, *pairs: tuple[str, str | None]) -> None:
    """Refuse a series UID given for an input that is not a DICOM folder (it would be ignored)."""
    for option, path in pairs:
        uid = getattr(args, option.lstrip("-").replace("-", "_"), None)
        if uid and path and not Path(path).is_dir():
            raise ValueError(f"{option} {uid} names a DICOM series, but {path} is a file, not a DICOM folder")


def cmd_match(args: argparse.Namespace) -> int:
    """``gvsl match``: match MOVING onto FIXED, write the outputs, print the summary and the verdict."""
    from gvsl_app.io.images import read_labels, read_volume
    from gvsl_app.io.label_maps import check_labels_fit
    from gvsl_app.io.outputs import prepare_output, staged_folder
    from gvsl_app.options import MatchOptions, from_args
    from gvsl_app.services.match_quality import quality_message
    from gvsl_app.services.match_result import MATCH_OUTPUTS
    from gvsl_app.services.matching import match

    _check_series_option(args, ("--fixed-series", args.fixed), ("--moving-series", args.moving))
    inputs = given_inputs(
        ("fixed image", args.fixed),
        ("moving image", args.moving),
        ("fixed labels", args.fixed_labels),
        ("moving labels", args.moving_labels),
    )
    out = prepare_output(args.out, MATCH_OUTPUTS, args.overwrite, inputs)
    fixed = read_volume(
        args.fixed,
        series_uid=args.fixed_series,
        series_option="--fixed-series",
        bytes_per_voxel=MATCH_BYTES_PER_VOXEL,
        purpose="matching onto it",
    )
    moving = read_volume(args.moving, series_uid=args.moving_series, series_option="--moving-series")
    ml = read_labels(args.moving_labels, moving) if args.moving_labels else None
    fl = read_labels(args.fixed_labels, fixed) if args.fixed_labels else None
    if ml is not None and fl is not None:
        check_labels_fit(fl, ml)  # Dice per structure, before any per-label work
    res = match(fixed, moving, from_args(MatchOptions, args), weights=args.weights, moving_labels=ml, fixed_labels=fl)
    r = res.report
    assert r is not None  # every match has its report
    series = _series(fixed=fixed, moving=moving)
    r.dicom_series = series or None
    for key in ("dice_before", "dice_after"):
        r.notes += [n for n in _undefined_dice_notes(getattr(r, key), {}) if n not in r.notes]
    with staged_folder(out, MATCH_OUTPUTS) as stage:
        res.save(stage)
    refine_s = r.seconds.get("refine_s")  # none where the pair could not be refined (a flat scan)
    refined = f", refinement {refine_s:.2f} s" if refine_s is not None else ""
    verdict = quality_message(r.quality)
    for line in r.warnings + r.fallback + ([verdict] if verdict else []):
        print(f"warning: {line}", file=sys.stderr)
    print(
        f"matched {args.moving} -> {args.fixed} on {r.device} in {r.seconds['total_s']:.2f} s "
        f"(network {r.seconds['network_s']:.2f} s{refined})"
    )
    init = r.init
    print(
        f"  initial alignment: {init['chosen']} (rotation {init['rotation_deg']:.1f} deg, shift "
        f"{math.dist(init['translation_mm'], (0, 0, 0)):.1f} mm); similarity {r.similarity} ({r.similarity_reason})"
    )
    if r.overlap_masked:
        print(f"  compared where the moving scan has data ({100 * r.moving_data_share:.0f} % of the fixed grid)")
    print(f"  NCC {r.ncc_before:.4f} -> {r.ncc_after:.4f}; folding {r.folding_percent:.3f} %")
    if r.has_dice:
        print(f"  mean Dice {dice_cell(r.mean_dice_before, 0)} -> {dice_cell(r.mean_dice_after, 0)}")
    print(f"  quality: {r.quality.status}" + (f" ({'; '.join(r.quality.reasons)})" if r.quality.reasons else ""))
    print(f"  wrote {out}/: {', '.join(res.written_files())}")
    return 0


def _is_dicom_folder(path: Path) -> bool:
    from gvsl_app.io.dicom import holds_dicom_series

    return path.is_dir() and not (path / "images").is_dir() and holds_dicom_series(path)


def cmd_segment(args: argparse.Namespace) -> int:
    """``gvsl segment``: one volume (or a folder of them) to a label map, with volumes and Dice."""
    from gvsl_app.io.images import read_labels, read_volume, write_volume
    from gvsl_app.io.label_maps import check_labels_fit
    from gvsl_app.io.outputs import prepare_output
    from gvsl_app.services.segment import segment
    from gvsl_app.services.segment_brain import brain_notes

    image_path = Path(args.image)
    if image_path.is_dir() and not _is_dicom_folder(image_path):
        return _segment_folder(args)
    _check_series_option(args, ("--series", args.image))
    out = Path(args.out)
    report_path = Path(args.report) if args.report else default_report_path(out)
    inputs = given_inputs(("input image", args.image), ("reference labels", args.reference))
    prepare_output(out, None, args.overwrite, inputs)
    prepare_output(report_path, None, args.overwrite, [*inputs, ("label map --out names", out)], option="--report")
    image = read_volume(
        image_path,
        series_uid=args.series,
        series_option="--series",
        bytes_per_voxel=SEGMENT_BYTES_PER_VOXEL,
        purpose="segmenting it",
    )
    ref = read_labels(args.reference, image) if args.reference else None
    if ref is not None:
        check_labels_fit(ref)
    res = segment(image, args.weights, device=args.device, reference=ref, skull_strip=args.skull_strip)
    if args.weights is None:
        print(res.report["segmenter"])
    record_series(res.report, image=image)
    _note_undefined_dice(res.report, "dice")
    write_volume(res.labels, out, is_label=True)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(dumps_strict(res.report))
    names = res.report["label_names"]
    print(f"{'label':>18} {'mL':>9}" + (f" {'Dice':>7}" if ref is not None else ""))
    for k, v in res.report["volume_ml"].items():
        dice = f" {dice_cell(res.report['dice'].get(k))}" if ref is not None else ""
        print(f"{names.get(k, k):>18} {v:9.2f}{dice}")
    if ref is not None:
        print(f"{'mean Dice':>18} {'':>9} {dice_cell(res.report['mean_dice'])}")
        if any(v is None or not math.isfinite(v) for v in res.report["dice"].values()):
            print(f"{'n/a':>18}: {UNDEFINED_DICE}")
    for line in brain_notes(res.record):
        print(line)
    print(f"wrote {out} and {report_path}")
    return 0


def _segment_each(
    args: argparse.Namespace, images: dict[str, Path], refs: dict[str, Path], stage: Path
) -> tuple[list[tuple[str, Path, Path | None]], dict[int, str], dict[str, str], dict[str, dict]]:
    """Segment every image into ``stage``: (name, label map, reference) per case, the
    structures' names, the DICOM series read and, per case, what the brain tissue
    segmenter's brain-mask and CSF steps did and its volume flags; with a progress bar
    unless ``--quiet``.
    """
    from gvsl_app.io.images import read_volume, write_volume
    from gvsl_app.services.segment import segment

    names: dict[int, str] = {}
    series: dict[str, str] = {}
    brain: dict[str, dict] = {}
    bar = None
    if not getattr(args, "quiet", False):
        from tqdm import tqdm

        bar = tqdm(total=len(images), unit="volume", dynamic_ncols=True)
    pairs: list[tuple[str, Path, Path | None]] = []
    try:
        for name, path in images.items():
            image = read_volume(path, bytes_per_voxel=SEGMENT_BYTES_PER_VOXEL, purpose="segmenting it")
            if "dicom" in image.meta:
                series[name] = image.meta["dicom"]["series_uid"]
            res = segment(image, args.weights, device=args.device, skull_strip=args.skull_strip)
            if args.weights is None and not pairs:
                print(res.report["segmenter"])  # once: a folder is one modality
            names = {int(k): v for k, v in res.report["label_names"].items()}
            if res.record.brain_mask is not None:
                brain[name] = {k: res.report[k] for k in ("brain_mask", "volume_flags") if k in res.report}
            seg_path = write_volume(res.labels, stage / f"{name}.nii.gz", is_label=True)
            pairs.append((name, Path(seg_path), refs.get(name)))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return pairs, names, series, brain


def _segment_folder(args: argparse.Namespace) -> int:
    """``gvsl segment FOLDER --out DIR``: every volume, then one table of volumes (and, with
    references, Dice/HD95/ASSD) per structure and case in ``DIR/metrics.csv``.
    """
    from gvsl_app.io.folders import images_folder, list_volume_files, require_volumes
    from gvsl_app.io.outputs import prepare_output, staged_folder
    from gvsl_app.services.label_cohort import evaluate_cohort, structure_summary, write_table

    if args.series:
        raise ValueError(f"--series names one DICOM series; {args.image} is a folder of volumes (one per case)")
    folder = Path(args.image)
    image_dir = images_folder(folder)
    images = require_volumes(image_dir)
    ref_dir = Path(args.reference) if args.reference else (folder / "labels" if (folder / "labels").is_dir() else None)
    refs = list_volume_files(ref_dir) if ref_dir is not None else {}
    ours = (*(f"{n}.nii.gz" for n in images), "metrics.csv", "report.json")
    inputs = [("images folder", image_dir), *(("input image", p) for p in images.values())]
    if ref_dir is not None:
        inputs += [("reference labels folder", ref_dir), *(("reference label map", p) for p in refs.values())]
    out = prepare_output(args.out, ours, args.overwrite, inputs)
    with staged_folder(out, ours) as stage:
        pairs, names, series, brain = _segment_each(args, images, refs, stage)
        with_ref = [p for p in pairs if p[2] is not None]
        results = evaluate_cohort(with_ref, names) + evaluate_cohort([p for p in pairs if p[2] is None], names)
        summary = structure_summary(results)
        list_empty_cases(results, with_reference=bool(with_ref))
        write_table(results, stage / "metrics.csv")
        report: dict[str, object] = {
            "images": str(folder),
            "references": str(ref_dir) if refs else None,
            "summary": summary,
        }
        if series:
            report["dicom_series"] = series
        if brain:
            report["brain"] = brain
        (stage / "report.json").write_text(dumps_strict(report))
    print(f"{'structure':<18} {'n':>3} {'volume mL':>10}" + (f" {'Dice':>7}" if with_ref else ""))
    for name, s in summary.items():
        cell = f" {dice_cell(s['dice']['mean'])}" if with_ref else ""
        print(f"{name[:18]:<18} {s['volume_ml']['n']:>3} {s['volume_ml']['mean']:10.2f}{cell}")
    for name, record in brain.items():
        for flag in record.get("volume_flags", {}).values():
            print(f"warning: {name}: {flag}")
    print(f"wrote {len(pairs)} segmentation(s), {out / 'metrics.csv'} and {out / 'report.json'}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """``gvsl embed``: t-SNE of a volume's local features per structure, to a table and a report."""
    from gvsl_app.io.images import read_labels, read_volume
    from gvsl_app.io.outputs import prepare_output, staged_folder
    from gvsl_app.options import EmbedOptions, from_args
    from gvsl_app.services.embed import embed

    opts = from_args(EmbedOptions, args)  # ranges checked before any file is read
    _check_series_option(args, ("--series", args.image))
    inputs = given_inputs(("input image", args.image), ("label map", args.labels))
    out = prepare_output(args.out, EMBED_OUTPUTS, args.overwrite, inputs)
    image = read_volume(args.image, series_uid=args.series, series_option="--series")
    labels = read_labels(args.labels, image)
    res = embed(
        image,
        labels,
        weights=args.weights,
        per_label=opts.per_label,
        size=opts.size,
        seed=opts.seed,
        level=opts.level,
        device=opts.device,
    )
    record_series(res.report, image=image)
    with staged_folder(out, EMBED_OUTPUTS) as stage:
        res.save(stage)
    r = res.report
    fmt = lambda v: "n/a (one label)" if v is None else f"{v:.4f}"  # noqa: E731
    print(
        f"{r['n_points']} voxels embedded at {r['level']}; silhouette: features {fmt(r['silhouette_features'])}, "
        f"2D {fmt(r['silhouette_2d'])}; 5-NN accuracy {fmt(r['knn5'])}; wrote {out}/embedding.csv and report.json"
    )
    print(f"{'level':<12} {'dim':>4} {'silhouette':>10} {'5-NN':>6}")
    for name, row in r["levels"].items():
        print(f"{name:<12} {row['feature_dim']:>4} {fmt(row['silhouette']):>10} {fmt(row['knn5']):>6}")
    return 0

"""Matching quality and speed: GVSL Z-Matching vs a classical SimpleITK registration.

Usage:
  python benchmarks/bench_match.py [--pairs 5] [--shape 96] [--size 48] [--weights CKPT|random]
                                   [--metric mi|cc] [--device auto] [--latency-shape 128]
                                   [--latency-size 96] [--repeats 3] [--cli] [--json OUT] [--quick]

1) Held-out synthetic cardiac pairs: subject seeds ``--seed-base`` + 2i (fixed) and + 2i + 1
   (moving), default 1000+; the demo weights were trained on ``synthetic:cardiac`` with seed
   0, i.e. subject seeds 0..N-1, so none of these was seen in training. Each pair differs in
   shape, pose, deformation, intensities and voxel spacing. For each pair: mean Dice over the
   7 structures (LV, RV, LA, RA, myocardium, aorta, pulmonary artery)

   * before matching: moving labels resampled onto the fixed grid in physical space (identity);
   * after GVSL matching (``gvsl_app.services.matching.match``, the demo weights or ``--weights``, the
     working cube ``--size``; the demo was trained at 48), with its folding percentage;
   * after GVSL matching + instance optimisation (``match(..., refine=True)``, i.e.
     ``gvsl match --refine``: the default ``models.RefineSchedule``), and as an ablation the
     same refinement started from an untrained network's (near-identity) map, which shows
     what the GVSL prediction adds (``--no-refine`` skips both). The schedule was chosen on
     the default pairs (seeds 1000-1005); ``--seed-base 3000`` gives pairs it never saw;
   * after a classical SimpleITK registration: affine (centred by geometry, regular-step
     gradient descent, scales from physical shift, 100 iterations per level) then cubic
     B-spline (3^3 mesh refined x2 per level to 12^3; gradient descent with line search as
     in SimpleITK's multi-resolution B-spline example, or ``--bspline-optimizer lbfgs2``;
     50 iterations per level), both multi-resolution (shrink 4/2/1, smoothing 2/1/0
     voxels), Mattes mutual information (``--metric mi``, default) or correlation (``cc``),
     10 % random sampling with a fixed seed; labels warped by nearest neighbour through the
     composed transform. (LBFGSB cannot be used: SimpleITK 2.5 fails when the B-spline
     grid is refined between levels.)

   Seconds per pair are wall-clock for the whole job (GVSL: preprocessing, network,
   displacement, warping image and labels, the network loaded once beforehand;
   classical: both registrations and the label warp). Targets (issue #5): GVSL Dice >= the
   classical one, >= 20x faster per pair, folding < 1 %.

2) Latency: a ``--latency-shape``^3 fixed grid (128 by default) matched at working size
   ``--latency-size`` (96) end to end: read both NIfTI files from disk, match, write every
   output (warped image, displacement field, affine .tfm, Jacobian, report). Timed twice:
   *first match of a process* (a fresh Python process per repeat that imports the engine
   and loads the weights untimed, then times read -> written once: what one ``gvsl match``
   costs beyond its start-up) and *warm* (repeats in one process with the network loaded
   once: what the GUI and a server see). ``--cli`` also times the whole ``gvsl match``
   command (process start and imports included). Like the ``gvsl`` command, the benchmark
   tunes the C allocator (``gvsl_app.allocator``; ``GVSL_TUNE_MALLOC=0`` turns that off).
   Target: < 2 s on the project's 2-core CPU; on a GPU < 50 ms for the network (the
   network's GPU time is printed when CUDA is present).

``--weights random`` uses a random-init width-8 network (a smoke run before the demo
weights exist); final numbers use the demo weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from classical_registration import classical_registration, folding_percent, warp_labels  # noqa: E402

# ----------------------------------------------------------------------------- GVSL


def run_pairs(args, model, info) -> dict:
    identity = None if args.no_refine else load_model("random", args.device)[0]
    print(
        f"{'pair':>4} {'seeds':>11} | {'before':>6} | {'GVSL':>6} {'s':>6} {'fold%':>6} | {'+IO':>6} {'s':>6} "
        f"{'fold%':>6} | {'IO only':>7} | {'classic':>7} {'s':>6} {'fold%':>6}",
        flush=True,
    )
    rows = []
    for i in range(args.pairs):
        rows.append(_pair_row(args, model, identity, i))
        _print_row(i, rows[-1])
    return summarise(rows, args, info)


def _pair_row(args, model, identity, i: int) -> dict:
    """Pair ``i``: Dice before, after GVSL, after GVSL + IO and IO alone (unless --no-refine), classical."""
    from gvsl_app.data.preprocess import resample_to
    from gvsl_app.data.synthetic import make_cardiac_subject
    from gvsl_app.services.matching import match

    shape = (args.shape,) * 3
    fs, ms = args.seed_base + 2 * i, args.seed_base + 2 * i + 1
    fixed, fl = make_cardiac_subject(fs, shape)
    moving, ml = make_cardiac_subject(ms, shape)
    before = mean_dice(resample_to(ml, fixed, is_label=True).array, fl.array)
    labels = {"moving_labels": ml, "fixed_labels": fl}
    t0 = time.perf_counter()
    # fallback=False: the network's own map, even where it is worse than the identity
    res = match(
        fixed,
        moving,
        model=model,
        size=args.size,
        device=args.device,
        **labels,
        fallback=False,
        passes=args.passes,
        refine=False,
        init="none",
    )
    g_s = time.perf_counter() - t0
    row = {
        "fixed_seed": fs,
        "moving_seed": ms,
        "dice_before": before,
        "gvsl_dice": mean_dice(res.warped_labels.array, fl.array),
        "gvsl_s": g_s,
        "gvsl_folding_percent": res.report.folding_percent,
        "gvsl_network_s": res.report.seconds["network_s"],
        "gvsl_ncc_before": res.report.ncc_before,
        "gvsl_ncc_after": res.report.ncc_after,
    }
    if identity is not None:
        t0 = time.perf_counter()
        res = match(
            fixed, moving, model=model, size=args.size, device=args.device, **labels, passes=args.passes, init="none"
        )
        row.update(
            refined_dice=mean_dice(res.warped_labels.array, fl.array),
            refined_s=time.perf_counter() - t0,
            refined_folding_percent=res.report.folding_percent,
        )
        # ablation: the same refinement from the identity map (an untrained network), i.e. without GVSL
        res = match(fixed, moving, model=identity, size=args.size, device=args.device, **labels, init="none")
        row.update(
            io_only_dice=mean_dice(res.warped_labels.array, fl.array),
            io_only_folding_percent=res.report.folding_percent,
        )
    if not args.no_classical:
        row.update(_classical_row(args, fixed, moving, ml, fl, i))
    return row


def _classical_row(args, fixed, moving, ml, fl, i: int) -> dict:
    """The classical SimpleITK registration of a pair: Dice, seconds, folding."""
    t0 = time.perf_counter()
    tf = classical_registration(
        fixed,
        moving,
        metric=args.metric,
        affine_iters=args.affine_iters,
        bspline_iters=args.bspline_iters,
        mesh=args.mesh,
        seed=i,
        sampling=args.sampling,
        optimizer=args.bspline_optimizer,
    )
    c_warped = warp_labels(ml, fixed, tf)
    c_s = time.perf_counter() - t0
    return {
        "classical_dice": mean_dice(c_warped, fl.array),
        "classical_s": c_s,
        "classical_folding_percent": folding_percent(tf, fixed),
    }


def _print_row(i: int, row: dict) -> None:
    c = (
        f"{row['classical_dice']:7.4f} {row['classical_s']:6.1f} {row['classical_folding_percent']:6.2f}"
        if "classical_dice" in row
        else f"{'-':>7} {'-':>6} {'-':>6}"
    )
    io = (
        f"{row['refined_dice']:6.4f} {row['refined_s']:6.2f} {row['refined_folding_percent']:6.2f} | "
        f"{row['io_only_dice']:7.4f}"
        if "refined_dice" in row
        else f"{'-':>6} {'-':>6} {'-':>6} | {'-':>7}"
    )
    fs, ms = row["fixed_seed"], row["moving_seed"]
    print(
        f"{i:>4} {fs:>5}/{ms:<5} | {row['dice_before']:6.4f} | {row['gvsl_dice']:6.4f} {row['gvsl_s']:6.2f} "
        f"{row['gvsl_folding_percent']:6.2f} | {io} | {c}",
        flush=True,
    )


def _ms(values) -> str:
    return f"{np.mean(values):.4f} ({np.std(values):.4f})"


def summarise(rows: list[dict], args, info: str) -> dict:
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    summary = {
        "dice_before": float(np.mean(col("dice_before"))),
        "gvsl_dice": float(np.mean(col("gvsl_dice"))),
        "gvsl_s": float(np.mean(col("gvsl_s"))),
        "gvsl_folding_percent": float(np.mean(col("gvsl_folding_percent"))),
        "gvsl_folding_percent_max": float(np.max(col("gvsl_folding_percent"))),
    }
    print(f"\n{'method':<34} {'mean Dice (sd)':>17} {'s/pair':>8} {'folding %':>10}")
    print(f"{'before (physical identity)':<34} {_ms(col('dice_before')):>17} {'':>8} {'':>10}")
    print(
        f"{'GVSL, working size ' + str(args.size):<34} {_ms(col('gvsl_dice')):>17} {summary['gvsl_s']:8.2f} "
        f"{summary['gvsl_folding_percent']:10.3f}"
    )
    if "refined_dice" in rows[0]:
        summary.update(
            refined_dice=float(np.mean(col("refined_dice"))),
            refined_s=float(np.mean(col("refined_s"))),
            refined_folding_percent=float(np.mean(col("refined_folding_percent"))),
            refined_folding_percent_max=float(np.max(col("refined_folding_percent"))),
            io_only_dice=float(np.mean(col("io_only_dice"))),
        )
        print(
            f"{'GVSL + instance optimisation':<34} {_ms(col('refined_dice')):>17} {summary['refined_s']:8.2f} "
            f"{summary['refined_folding_percent']:10.3f}"
        )
        print(
            f"{'  ablation: IO from identity':<34} {_ms(col('io_only_dice')):>17} {'':>8} "
            f"{float(np.mean(col('io_only_folding_percent'))):10.3f}"
        )
    if "classical_dice" in rows[0]:
        summary.update(
            classical_dice=float(np.mean(col("classical_dice"))),
            classical_s=float(np.mean(col("classical_s"))),
            classical_folding_percent=float(np.mean(col("classical_folding_percent"))),
        )
        summary["speed_ratio"] = summary["classical_s"] / summary["gvsl_s"]
        print(
            f"{'SimpleITK affine+B-spline (' + args.metric + ', ' + args.bspline_optimizer + ')':<34} {_ms(col('classical_dice')):>17} "
            f"{summary['classical_s']:8.2f} {summary['classical_folding_percent']:10.3f}"
        )
        print(f"\nGVSL is {summary['speed_ratio']:.1f}x faster per pair than the classical registration")
        print(
            f"targets: Dice >= classical: {'yes' if summary['gvsl_dice'] >= summary['classical_dice'] else 'NO'}; "
            f">= 20x faster: {'yes' if summary['speed_ratio'] >= 20 else 'NO'}; folding < 1 %: "
            f"{'yes' if summary['gvsl_folding_percent_max'] < 1 else 'NO'}"
        )
        if "refined_dice" in summary:
            ratio = summary["classical_s"] / summary["refined_s"]
            summary["refined_speed_ratio"] = ratio
            print(
                f"with instance optimisation: Dice >= classical: "
                f"{'yes' if summary['refined_dice'] >= summary['classical_dice'] else 'NO'}; {ratio:.1f}x faster "
                f"(>= 20x: {'yes' if ratio >= 20 else 'NO'}); folding < 1 % on every pair: "
                f"{'yes' if summary['refined_folding_percent_max'] < 1 else 'NO'}"
            )
    print(f"weights: {info}")
    return {"rows": rows, "summary": summary}


from match_latency import _cold_match, run_latency  # noqa: E402
from match_models import load_model, mean_dice  # noqa: E402


def _parse_args(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--shape", type=int, default=96, help="side of the synthetic subjects")
    ap.add_argument("--size", type=int, default=48, help="GVSL working cube (the demo was trained at 48; 96 works)")
    ap.add_argument("--weights", help="GVSL checkpoint (default: the demo weights); 'random' = untrained smoke run")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed-base", type=int, default=1000, help="first held-out subject seed")
    ap.add_argument("--metric", choices=["mi", "cc"], default="mi", help="classical: Mattes MI or correlation")
    ap.add_argument("--affine-iters", type=int, default=100)
    ap.add_argument("--bspline-iters", type=int, default=50, help="B-spline optimiser iterations per level")
    ap.add_argument("--bspline-optimizer", choices=["gd", "lbfgs2"], default="gd")
    ap.add_argument("--sampling", type=float, default=0.1, help="classical: fraction of voxels sampled by the metric")
    ap.add_argument("--mesh", type=int, default=3, help="B-spline mesh at the coarsest level (x2 per level)")
    ap.add_argument("--no-classical", action="store_true")
    ap.add_argument(
        "--passes",
        type=int,
        default=1,
        help="network passes of the GVSL rows (gvsl match --passes)",
    )
    ap.add_argument(
        "--no-refine", action="store_true", help="skip the instance-optimisation rows (gvsl match --refine)"
    )
    ap.add_argument("--latency-shape", type=int, default=128)
    ap.add_argument("--latency-size", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cli", action="store_true", help="also time the `gvsl match` command")
    ap.add_argument("--skip-pairs", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 pairs of 64^3 at size 32, short classical, latency 64^3 at 48, 2 repeats",
    )
    ap.add_argument("--json", help="write all results to this JSON file")
    ap.add_argument("--cold-match", metavar="DIR", help=argparse.SUPPRESS)  # the latency benchmark's child
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.cold_match:
        return _cold_match(args.cold_match, args.latency_size, args.device, args.weights)
    from gvsl_app.allocator import tune_cpu_allocator

    tuned = tune_cpu_allocator()  # as the gvsl command does
    if args.quick:
        args.pairs, args.shape, args.size = 2, 64, 32
        args.affine_iters, args.bspline_iters, args.sampling = 20, 8, 0.05
        args.latency_shape, args.latency_size, args.repeats = 64, 48, 2

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; SimpleITK "
        f"{sitk.Version.VersionString()}, {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} threads; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; allocator tuned: {tuned}",
        flush=True,
    )
    t0 = time.perf_counter()
    model, info = load_model(args.weights, args.device)
    load_s = time.perf_counter() - t0
    results: dict = {"args": vars(args), "weights": info, "load_average": os.getloadavg()[0]}
    if not args.skip_pairs:
        print(
            f"\n1) {args.pairs} held-out cardiac pairs ({args.shape}^3, seeds from {args.seed_base}), "
            f"GVSL at {args.size}^3",
            flush=True,
        )
        results["pairs"] = run_pairs(args, model, info)
    if not args.skip_latency:
        print(
            f"\n2) latency: {args.latency_shape}^3 fixed grid at working size {args.latency_size}, read -> written",
            flush=True,
        )
        results["latency"] = run_latency(args, model, load_s)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

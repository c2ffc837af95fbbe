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
   * after GVSL matching (``gvsl_app.matching.match``, the demo weights or ``--weights``, the
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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

LABELS = list(range(1, 8))


# ----------------------------------------------------------------------------- classical

def _float_image(volume) -> sitk.Image:
    from gvsl_app.io import volume_to_sitk

    return sitk.Cast(volume_to_sitk(volume), sitk.sitkFloat32)


def _method(metric: str, sampling: float, seed: int, shrink, sigmas) -> sitk.ImageRegistrationMethod:
    r = sitk.ImageRegistrationMethod()
    if metric == "mi":
        r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    elif metric == "cc":
        r.SetMetricAsCorrelation()
    else:
        raise ValueError(f"unknown metric {metric!r}: mi or cc")
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(sampling, seed)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetShrinkFactorsPerLevel(list(shrink))
    r.SetSmoothingSigmasPerLevel(list(sigmas))
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return r


def classical_registration(fixed, moving, *, metric: str = "mi", affine_iters: int = 100,
                           bspline_iters: int = 50, mesh: int = 3, sampling: float = 0.1, seed: int = 0,
                           optimizer: str = "gd", shrink=(4, 2, 1), sigmas=(2, 1, 0)) -> sitk.Transform:
    """Affine then B-spline registration; returns the composed fixed->moving transform.

    B-spline optimiser: ``gd`` = gradient descent with line search (SimpleITK's own
    multi-resolution B-spline example), ``lbfgs2`` = limited-memory BFGS. LBFGSB is not
    offered: in SimpleITK 2.5 it fails as soon as the control grid is refined between
    levels ("Size of scales (648) must equal number of local parameters (2187)").
    """
    f, m = _float_image(fixed), _float_image(moving)

    r = _method(metric, sampling, seed, shrink, sigmas)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=affine_iters,
                                               gradientMagnitudeTolerance=1e-6, relaxationFactor=0.5)
    r.SetOptimizerScalesFromPhysicalShift()
    init = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    r.SetInitialTransform(init, inPlace=False)
    affine = r.Execute(f, m)

    r = _method(metric, sampling, seed, shrink, sigmas)
    bspline = sitk.BSplineTransformInitializer(f, [mesh] * 3, 3)
    r.SetMovingInitialTransform(affine)
    r.SetInitialTransformAsBSpline(bspline, inPlace=True, scaleFactors=[1, 2, 4][:len(shrink)])
    if optimizer == "gd":
        r.SetOptimizerAsGradientDescentLineSearch(learningRate=5.0, numberOfIterations=bspline_iters,
                                                  convergenceMinimumValue=1e-4, convergenceWindowSize=5)
    elif optimizer == "lbfgs2":
        r.SetOptimizerAsLBFGS2(solutionAccuracy=1e-5, numberOfIterations=bspline_iters, deltaConvergenceTolerance=0.01)
    else:
        raise ValueError(f"unknown B-spline optimiser {optimizer!r}: gd or lbfgs2")
    r.Execute(f, m)
    # composite transforms apply the last added first: x -> affine(bspline(x))
    return sitk.CompositeTransform([affine, bspline])


def _grid(volume) -> sitk.Image:
    ref = sitk.Image([int(s) for s in volume.shape[::-1]], sitk.sitkUInt8)
    ref.SetSpacing(volume.spacing)
    ref.SetOrigin(volume.origin)
    ref.SetDirection(volume.direction)
    return ref


def warp_labels(labels, fixed, transform: sitk.Transform) -> np.ndarray:
    from gvsl_app.io import volume_to_sitk

    out = sitk.Resample(volume_to_sitk(labels), _grid(fixed), transform, sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out)


def folding_percent(transform: sitk.Transform, fixed) -> float:
    ref = _grid(fixed)
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(),
                                              ref.GetSpacing(), ref.GetDirection())
    jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
    return float((jac <= 0).mean() * 100.0)


# ----------------------------------------------------------------------------- GVSL

def load_model(weights: str | None, device: str):
    from gvsl_app.weights import DEMO_GVSL, load_gvsl
    from models import DEMO_WIDTHS, GVSL, PAPER_HEADS, resolve_device

    if weights == "random":
        # The paper's heads start at the identity map (to ~1e-5); the keypoint head does not.
        torch.manual_seed(0)
        return (GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS).to(resolve_device(device)).eval(),
                "random init, widths 8, paper heads: the identity map (NOT trained)")
    if weights is None and not DEMO_GVSL.is_file():
        sys.exit(f"demo weights not found at {DEMO_GVSL}; pass --weights CKPT (or --weights random for a smoke run)")
    return load_gvsl(weights, resolve_device(device))


def mean_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    from gvsl_app.metrics import dice_per_label

    return float(np.mean(list(dice_per_label(pred, ref, LABELS).values())))


def run_pairs(args, model, info) -> dict:
    from gvsl_app.matching import match
    from gvsl_app.preprocess import resample_to
    from gvsl_app.synthetic import make_cardiac_subject

    shape = (args.shape,) * 3
    rows = []
    identity = None if args.no_refine else load_model("random", args.device)[0]
    print(f"{'pair':>4} {'seeds':>11} | {'before':>6} | {'GVSL':>6} {'s':>6} {'fold%':>6} | {'+IO':>6} {'s':>6} "
          f"{'fold%':>6} | {'IO only':>7} | {'classic':>7} {'s':>6} {'fold%':>6}", flush=True)
    for i in range(args.pairs):
        fs, ms = args.seed_base + 2 * i, args.seed_base + 2 * i + 1
        fixed, fl = make_cardiac_subject(fs, shape)
        moving, ml = make_cardiac_subject(ms, shape)
        before = mean_dice(resample_to(ml, fixed, is_label=True).array, fl.array)

        t0 = time.perf_counter()
        # fallback=False: the network's own map, even where it is worse than the identity
        res = match(fixed, moving, model=model, size=args.size, device=args.device, moving_labels=ml,
                    fixed_labels=fl, fallback=False)
        g_s = time.perf_counter() - t0
        g_dice = mean_dice(res.warped_labels.array, fl.array)
        row = {"fixed_seed": fs, "moving_seed": ms, "dice_before": before, "gvsl_dice": g_dice, "gvsl_s": g_s,
               "gvsl_folding_percent": res.report["folding_percent"], "gvsl_network_s": res.report["seconds"]["network_s"],
               "gvsl_ncc_before": res.report["ncc_before"], "gvsl_ncc_after": res.report["ncc_after"]}
        if identity is not None:
            t0 = time.perf_counter()
            res = match(fixed, moving, model=model, size=args.size, device=args.device, moving_labels=ml,
                        fixed_labels=fl, refine=True)
            row.update(refined_dice=mean_dice(res.warped_labels.array, fl.array), refined_s=time.perf_counter() - t0,
                       refined_folding_percent=res.report["folding_percent"])
            # ablation: the same refinement from the identity map (an untrained network), i.e. without GVSL
            res = match(fixed, moving, model=identity, size=args.size, device=args.device, moving_labels=ml,
                        fixed_labels=fl, refine=True)
            row.update(io_only_dice=mean_dice(res.warped_labels.array, fl.array),
                       io_only_folding_percent=res.report["folding_percent"])
        if not args.no_classical:
            t0 = time.perf_counter()
            tf = classical_registration(fixed, moving, metric=args.metric, affine_iters=args.affine_iters,
                                        bspline_iters=args.bspline_iters, mesh=args.mesh, seed=i,
                                        sampling=args.sampling, optimizer=args.bspline_optimizer)
            c_warped = warp_labels(ml, fixed, tf)
            c_s = time.perf_counter() - t0
            row.update(classical_dice=mean_dice(c_warped, fl.array), classical_s=c_s,
                       classical_folding_percent=folding_percent(tf, fixed))
        rows.append(row)
        c = (f"{row['classical_dice']:7.4f} {row['classical_s']:6.1f} {row['classical_folding_percent']:6.2f}"
             if "classical_dice" in row else f"{'-':>7} {'-':>6} {'-':>6}")
        io = (f"{row['refined_dice']:6.4f} {row['refined_s']:6.2f} {row['refined_folding_percent']:6.2f} | "
              f"{row['io_only_dice']:7.4f}" if "refined_dice" in row else f"{'-':>6} {'-':>6} {'-':>6} | {'-':>7}")
        print(f"{i:>4} {fs:>5}/{ms:<5} | {before:6.4f} | {g_dice:6.4f} {g_s:6.2f} {row['gvsl_folding_percent']:6.2f} | "
              f"{io} | {c}", flush=True)
    return summarise(rows, args, info)


def _ms(values) -> str:
    return f"{np.mean(values):.4f} ({np.std(values):.4f})"


def summarise(rows: list[dict], args, info: str) -> dict:
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    summary = {"dice_before": float(np.mean(col("dice_before"))), "gvsl_dice": float(np.mean(col("gvsl_dice"))),
               "gvsl_s": float(np.mean(col("gvsl_s"))), "gvsl_folding_percent": float(np.mean(col("gvsl_folding_percent"))),
               "gvsl_folding_percent_max": float(np.max(col("gvsl_folding_percent")))}
    print(f"\n{'method':<34} {'mean Dice (sd)':>17} {'s/pair':>8} {'folding %':>10}")
    print(f"{'before (physical identity)':<34} {_ms(col('dice_before')):>17} {'':>8} {'':>10}")
    print(f"{'GVSL, working size ' + str(args.size):<34} {_ms(col('gvsl_dice')):>17} {summary['gvsl_s']:8.2f} "
          f"{summary['gvsl_folding_percent']:10.3f}")
    if "refined_dice" in rows[0]:
        summary.update(refined_dice=float(np.mean(col("refined_dice"))), refined_s=float(np.mean(col("refined_s"))),
                       refined_folding_percent=float(np.mean(col("refined_folding_percent"))),
                       refined_folding_percent_max=float(np.max(col("refined_folding_percent"))),
                       io_only_dice=float(np.mean(col("io_only_dice"))))
        print(f"{'GVSL + instance optimisation':<34} {_ms(col('refined_dice')):>17} {summary['refined_s']:8.2f} "
              f"{summary['refined_folding_percent']:10.3f}")
        print(f"{'  ablation: IO from identity':<34} {_ms(col('io_only_dice')):>17} {'':>8} "
              f"{float(np.mean(col('io_only_folding_percent'))):10.3f}")
    if "classical_dice" in rows[0]:
        summary.update(classical_dice=float(np.mean(col("classical_dice"))), classical_s=float(np.mean(col("classical_s"))),
                       classical_folding_percent=float(np.mean(col("classical_folding_percent"))))
        summary["speed_ratio"] = summary["classical_s"] / summary["gvsl_s"]
        print(f"{'SimpleITK affine+B-spline (' + args.metric + ', ' + args.bspline_optimizer + ')':<34} {_ms(col('classical_dice')):>17} "
              f"{summary['classical_s']:8.2f} {summary['classical_folding_percent']:10.3f}")
        print(f"\nGVSL is {summary['speed_ratio']:.1f}x faster per pair than the classical registration")
        print(f"targets: Dice >= classical: {'yes' if summary['gvsl_dice'] >= summary['classical_dice'] else 'NO'}; "
              f">= 20x faster: {'yes' if summary['speed_ratio'] >= 20 else 'NO'}; folding < 1 %: "
              f"{'yes' if summary['gvsl_folding_percent_max'] < 1 else 'NO'}")
        if "refined_dice" in summary:
            ratio = summary["classical_s"] / summary["refined_s"]
            summary["refined_speed_ratio"] = ratio
            print(f"with instance optimisation: Dice >= classical: "
                  f"{'yes' if summary['refined_dice'] >= summary['classical_dice'] else 'NO'}; {ratio:.1f}x faster "
                  f"(>= 20x: {'yes' if ratio >= 20 else 'NO'}); folding < 1 % on every pair: "
                  f"{'yes' if summary['refined_folding_percent_max'] < 1 else 'NO'}")
    print(f"weights: {info}")
    return {"rows": rows, "summary": summary}


# ----------------------------------------------------------------------------- latency

def time_one_match(folder: Path, out: Path, model, size: int, device: str) -> dict:
    """Read both volumes of ``folder``, match, write into ``out``: seconds per stage."""
    from gvsl_app.io import read_volume
    from gvsl_app.matching import match

    t0 = time.perf_counter()
    fixed, moving = read_volume(folder / "fixed.nii.gz"), read_volume(folder / "moving.nii.gz")
    t1 = time.perf_counter()
    r = match(fixed, moving, model=model, size=size, device=device)
    t2 = time.perf_counter()
    r.save(out)
    t3 = time.perf_counter()
    return {"total_s": t3 - t0, "read_s": t1 - t0, "match_s": t2 - t1, "write_s": t3 - t2,
            **{k: v for k, v in r.report["seconds"].items() if k != "total_s"}, "device": r.report["device"]}


def _print_run(label: str, run: dict) -> None:
    print(f"  {label}: total {run['total_s']:.2f} s = read {run['read_s']:.2f} + match {run['match_s']:.2f} "
          f"(preprocess {run['preprocess_s']:.2f}, network {run['network_s']:.3f}, upsample "
          f"{run['upsample_s']:.2f}, warp {run['warp_s']:.2f}) + write {run['write_s']:.2f}", flush=True)


def _cold_match(folder: str, size: int, device: str, weights: str | None) -> int:
    """Child process of the latency benchmark: one timed match, JSON on stdout."""
    from gvsl_app.allocator import tune_cpu_allocator

    tune_cpu_allocator()
    model, _ = load_model(weights, device)
    folder_p = Path(folder)
    print(json.dumps(time_one_match(folder_p, folder_p / "cold-out", model, size, device)))
    return 0


def _network_gpu_ms(model, size: int, repeats: int = 20) -> float | None:
    """Median milliseconds of the network alone on CUDA (synchronised), or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    from models import resolve_device
    from models.device import autocast

    dev = resolve_device("cuda")
    net = model.to(dev).eval()
    m, f = torch.rand(1, 1, size, size, size, device=dev), torch.rand(1, 1, size, size, size, device=dev)
    times = []
    with torch.no_grad(), autocast(dev):
        for k in range(repeats + 3):
            torch.cuda.synchronize()
            t = time.perf_counter()
            net(m, f, restore=False)
            torch.cuda.synchronize()
            if k >= 3:
                times.append((time.perf_counter() - t) * 1000)
    model.cpu()
    return statistics.median(times)


def run_latency(args, model, weights_load_s: float) -> dict:
    from gvsl_app.io import write_volume
    from gvsl_app.synthetic import make_cardiac_subject

    n, size = args.latency_shape, args.latency_size
    res = {"grid": n, "working_size": size, "weights_load_s": weights_load_s, "runs": [], "cold_runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, seed in (("fixed", args.seed_base + 900), ("moving", args.seed_base + 901)):
            image, _ = make_cardiac_subject(seed, (n, n, n))
            write_volume(image, tmp / f"{name}.nii.gz")
        cold_cmd = [sys.executable, os.path.abspath(__file__), "--cold-match", str(tmp), "--latency-size", str(size),
                    "--device", args.device] + (["--weights", args.weights] if args.weights else [])
        for k in range(args.repeats):
            p = subprocess.run(cold_cmd, capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"cold match failed: {p.stderr.strip()}")
            run = json.loads(p.stdout.strip().splitlines()[-1])
            res["cold_runs"].append(run)
            _print_run(f"first match of process {k}", run)
        for k in range(args.repeats):
            run = time_one_match(tmp, tmp / f"out{k}", model, size, args.device)
            res["runs"].append(run)
            _print_run(f"warm run {k}", run)
        if args.cli:
            cmd = [sys.executable, "-m", "gvsl_app.cli", "match", str(tmp / "fixed.nii.gz"), str(tmp / "moving.nii.gz"),
                   "--out", str(tmp / "cli"), "--size", str(size), "--device", args.device,
                   "--no-refine"]  # the latency section times the network's map, as before refining became the default
            if args.weights and args.weights != "random":
                cmd += ["--weights", args.weights]
            if args.weights != "random":
                t0 = time.perf_counter()
                p = subprocess.run(cmd, capture_output=True, text=True)
                res["cli_s"] = time.perf_counter() - t0
                print(f"  `gvsl match` command (process start, imports, weights): {res['cli_s']:.2f} s"
                      + ("" if p.returncode == 0 else f" FAILED: {p.stderr.strip()}"), flush=True)
    totals = [r["total_s"] for r in res["runs"]]
    res["median_total_s"] = statistics.median(totals)
    res["min_total_s"] = min(totals)
    res["median_network_s"] = statistics.median(r["network_s"] for r in res["runs"])
    res["median_cold_total_s"] = statistics.median(r["total_s"] for r in res["cold_runs"])
    res["gpu_network_ms"] = _network_gpu_ms(model, size)
    ok = max(res["median_total_s"], res["median_cold_total_s"]) < 2
    print(f"latency {n}^3 at {size}^3: first match of a process median {res['median_cold_total_s']:.2f} s; "
          f"warm median {res['median_total_s']:.2f} s (min {res['min_total_s']:.2f}), network median "
          f"{res['median_network_s']:.3f} s, weights load {weights_load_s:.2f} s once; "
          f"target < 2 s on CPU: {'yes' if ok else 'NO'}")
    if res["gpu_network_ms"] is not None:
        print(f"network on {torch.cuda.get_device_name()}: median {res['gpu_network_ms']:.1f} ms "
              f"(target < 50 ms: {'yes' if res['gpu_network_ms'] < 50 else 'NO'})")
    else:
        print("no CUDA device here: the GPU network target is not measured")
    return res


def main(argv=None) -> int:
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
    ap.add_argument("--no-refine", action="store_true", help="skip the instance-optimisation rows (gvsl match --refine)")
    ap.add_argument("--latency-shape", type=int, default=128)
    ap.add_argument("--latency-size", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cli", action="store_true", help="also time the `gvsl match` command")
    ap.add_argument("--skip-pairs", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 pairs of 64^3 at size 32, short classical, latency 64^3 at 48, 2 repeats")
    ap.add_argument("--json", help="write all results to this JSON file")
    ap.add_argument("--cold-match", metavar="DIR", help=argparse.SUPPRESS)  # the latency benchmark's child
    args = ap.parse_args(argv)
    if args.cold_match:
        return _cold_match(args.cold_match, args.latency_size, args.device, args.weights)
    from gvsl_app.allocator import tune_cpu_allocator

    tuned = tune_cpu_allocator()  # as the gvsl command does
    if args.quick:
        args.pairs, args.shape, args.size = 2, 64, 32
        args.affine_iters, args.bspline_iters, args.sampling = 20, 8, 0.05
        args.latency_shape, args.latency_size, args.repeats = 64, 48, 2

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; SimpleITK "
          f"{sitk.Version.VersionString()}, {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} threads; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; allocator tuned: {tuned}", flush=True)
    t0 = time.perf_counter()
    model, info = load_model(args.weights, args.device)
    load_s = time.perf_counter() - t0
    results: dict = {"args": vars(args), "weights": info, "load_average": os.getloadavg()[0]}
    if not args.skip_pairs:
        print(f"\n1) {args.pairs} held-out cardiac pairs ({args.shape}^3, seeds from {args.seed_base}), "
              f"GVSL at {args.size}^3", flush=True)
        results["pairs"] = run_pairs(args, model, info)
    if not args.skip_latency:
        print(f"\n2) latency: {args.latency_shape}^3 fixed grid at working size {args.latency_size}, read -> written",
              flush=True)
        results["latency"] = run_latency(args, model, load_s)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

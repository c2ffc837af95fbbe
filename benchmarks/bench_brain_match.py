"""Brain MR matching at the scan's own resolution: GVSL against a classical registration, side by side.

Usage:
  python benchmarks/bench_brain_match.py [--pairs 2] [--seed-base 5000] [--shape native|N] [--size 48]
                                        [--no-classical] [--defaults-only] [--moving-contrast t1|t2]
                                        [--json OUT] [--device auto|cpu|cuda|cuda:N]

Pairs of MNI-derived brain MR subjects (``gvsl_app.data.brain.make_brain_subject``: the
nilearn MNI152 2009 template, each subject with its own random rotation (5 degrees),
scaling, shift, smooth deformation of a few millimetres and intensity changes; grey matter,
white matter and CSF labels) on the template's native 1 mm grid over the brain (``--shape
native``, about 150 x 180 x 150) or a ``--shape``^3 cube. Subject seeds ``--seed-base + 2i``
(fixed) and ``+ 2i + 1`` (moving); pre-training used seeds 0-23, so none was seen.

Methods, each scored by the mean Dice and the mean 95 % Hausdorff distance (mm) of the
three tissues of the warped moving labels against the fixed ones, folding and seconds per
pair (the whole job: preprocessing, network, refinement, upsampling, warping the labels):

* before: the moving labels resampled onto the fixed grid in physical space;
* ``gvsl match, all defaults``: every option at its default (initial alignment ``auto``,
  similarity ``auto``, refinement preset ``auto``, which picks ``brain`` for these scans);
* ``gvsl match``: the network (demo weights) then the refinement preset ``standard``, in the
  files' frames (``--init none``, as these numbers were first recorded);
* ``gvsl match --refine-preset brain``: the network then the refinement preset for brain MR
  (``models.REFINE_PRESETS``);
* each refinement from the identity (an untrained network): what the network adds;
* SimpleITK affine + B-spline (Mattes MI, 3 levels; ``benchmarks/classical_registration.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from classical_registration import classical_registration, folding_percent, warp_labels
from match_models import load_model

from gvsl_app.data.brain import make_brain_subject
from gvsl_app.data.perturb import other_contrast
from gvsl_app.data.preprocess import resample_to
from gvsl_app.services.label_metrics import compare_label_maps
from gvsl_app.services.matching import match

TISSUES = [1, 2, 3]


def score(warped: np.ndarray, fixed_labels) -> tuple[float, float]:
    """Mean Dice and mean HD95 (mm) of the three tissues."""
    rows = compare_label_maps(fixed_labels.with_array(warped.astype(np.int32)), fixed_labels, labels=TISSUES)
    dice = [r.dice for r in rows if r.dice is not None]
    hd = [r.hd95_mm for r in rows if r.hd95_mm is not None]
    return float(np.mean(dice)), float(np.mean(hd)) if hd else float("nan")


def _match_pair(args, fixed, moving, ml, network, identity) -> tuple[dict, dict]:
    """Per method: (moving labels on the fixed grid, folding %, seconds), and the device each ran on."""
    results = {"before": (resample_to(ml, fixed, is_label=True).array, 0.0, 0.0)}
    devices = {"before": None, "SimpleITK affine + B-spline": "cpu"}
    methods = [("gvsl match, all defaults", network, "auto", "auto")]
    if not args.defaults_only:
        methods += [
            ("gvsl match (network + refine)", network, "standard", "none"),
            ("refine from the identity", identity, "standard", "none"),
            ("gvsl match, preset brain", network, "brain", "none"),
            ("preset brain from the identity", identity, "brain", "none"),
        ]
    for name, model, preset, init in methods:
        t0 = time.perf_counter()
        r = match(
            fixed,
            moving,
            model=model,
            size=args.size,
            device=args.device,
            moving_labels=ml,
            refine_preset=preset,
            init=init,
        )
        results[name] = (r.warped_labels.array, r.report.folding_percent, time.perf_counter() - t0)
        devices[name] = r.report.device
    if not args.no_classical:
        t0 = time.perf_counter()
        tf = classical_registration(fixed, moving, metric="mi")
        warped = warp_labels(ml, fixed, tf)
        results["SimpleITK affine + B-spline"] = (warped, folding_percent(tf, fixed), time.perf_counter() - t0)
    return results, devices


def _print_means(rows: list[dict]) -> None:
    print("\nmean over pairs:")
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        print(
            f"  {method:<30} Dice {np.mean([r['dice'] for r in sel]):.4f}  HD95 {np.mean([r['hd95_mm'] for r in sel]):.2f} mm"
            f"  folding {np.mean([r['folding_percent'] for r in sel]):.2f} %  {np.mean([r['seconds'] for r in sel]):.1f} s"
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--seed-base", type=int, default=5000)
    ap.add_argument("--shape", default="native", help="'native' (1 mm template grid) or a cube side")
    ap.add_argument("--size", type=int, default=48, help="GVSL working cube")
    ap.add_argument("--no-classical", action="store_true")
    ap.add_argument(
        "--defaults-only",
        action="store_true",
        help="only gvsl match with every option at its default (and SimpleITK), not the preset ablation",
    )
    ap.add_argument(
        "--moving-contrast",
        choices=["t1", "t2"],
        default="t1",
        help="t2: the moving subject rendered T2-like (gvsl_app.data.perturb.other_contrast): T1 against T2",
    )
    ap.add_argument("--json", help="write the rows to this JSON file")
    ap.add_argument("--device", default="auto", help="GVSL network and refinement: auto, cpu, cuda, cuda:N or mps")
    args = ap.parse_args(argv)
    logging.getLogger("gvsl_app.services.matching").setLevel(logging.ERROR)
    shape = None if args.shape == "native" else (int(args.shape),) * 3
    network, _ = load_model(None, args.device)
    identity, _ = load_model("random", args.device)
    rows = []
    head = f"{'pair':>4} {'shape':>13} | {'method':<30} | {'Dice':>6} {'HD95 mm':>8} {'fold %':>7} {'s':>7}"
    print(head, flush=True)
    for i in range(args.pairs):
        fixed, fl = make_brain_subject(args.seed_base + 2 * i, shape)
        moving, ml = make_brain_subject(args.seed_base + 2 * i + 1, shape)
        if args.moving_contrast == "t2":
            moving = other_contrast(moving, ml)
        results, devices = _match_pair(args, fixed, moving, ml, network, identity)
        for method, (warped, fold, secs) in results.items():
            dice, hd = score(warped, fl)
            rows.append(
                {
                    "pair": i,
                    "shape": list(fixed.shape),
                    "method": method,
                    "dice": dice,
                    "hd95_mm": hd,
                    "folding_percent": fold,
                    "seconds": secs,
                    "device": devices.get(method),
                }
            )
            print(
                f"{i:>4} {str(fixed.shape):>13} | {method:<30} | {dice:6.4f} {hd:8.2f} {fold:7.2f} {secs:7.1f}",
                flush=True,
            )
    _print_means(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

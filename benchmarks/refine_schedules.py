"""Which refinement schedule: Dice and seconds of ``gvsl match`` with each candidate, on cardiac CT and brain MR.

Usage:
  python benchmarks/refine_schedules.py [--cardiac-pairs 5] [--brain-pairs 1] [--rows NAME ...] [--threads 1]
                                        [--json OUT]

The network (the shipped demo weights) then the refinement with each candidate schedule,
on the held-out cardiac pairs of ``bench_match.py`` (subject seeds 3000 + 2i / + 2i + 1,
96^3, working size 48, mean Dice of the seven structures) and the MNI-derived brain pairs of
``bench_brain_match.py`` (seeds 5000 + 2i / + 2i + 1 on the template's native 1 mm grid,
mean Dice and HD95 of grey matter, white matter and CSF). Prints per row the mean Dice, the
seconds per pair inside the matching service and the steps each level ran (levels end early
on convergence). Rows:

* ``coarse``: the levels at 24 and 48 voxels only (the schedule before the finest level);
* ``default``: ``models.RefineSchedule()``;
* ``fine30``: the finest level (96) with 30 steps instead of 20;
* ``fine80``: the finest level at 80 voxels, 30 steps;
* ``no-tolerance``: the default without convergence stopping;
* ``residual``: the default, the network's displacement kept as it is and only the
  correction on top of it regularised (``whole_field=False``, the earlier behaviour).
* the rest (``grid24`` ... ``lr01-smooth08-fine60``): the issue #16 search on brain MR at 1 mm,
  one change per row then combinations (finer grids, a level at 128 or 160, NCC window,
  smoothness, deformable step size and ``lr_side``); results in docs/results/matching.md section 6.
* ``side48-fine40``: ``lr_side=48`` and the 96 level with 40 steps (the control of the next rows);
* ``side48-fine40-rsNN`` / ``lr01-fine40-rsNN``: the second round, ``lr_side=48`` (or
  ``deformable_lr=0.01``), the 96 level with 40 steps and ``fine_smoothness=0.NN`` (the
  finest level's own correction made stiff, the coarse levels' deformation left alone);
  ``side48-fine40-wsNN``: the same extra smoothness on the whole field at the 96 level only
  (``fine_residual=False``; 0.14 + the default 0.02 = 0.16 there).
* ``...-beNN``: the third round, a bending energy of weight 0.NN on the whole field at every
  deformable level (``bending``), on ``side48-fine40``, on ``P`` itself (``beNN``), on
  ``P`` with ``lr_side=48`` (``side48-beNN``), or with the smoothness halved (``-s01-``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from bench_brain_match import score
from match_models import load_model, mean_dice

from gvsl_app.data.brain import make_brain_subject
from gvsl_app.data.synthetic import make_cardiac_subject
from gvsl_app.services.matching import match
from models import RefineSchedule

D = RefineSchedule()
# The schedule every row below changes, as it was measured (the default when the rows were
# recorded): a rerun reproduces their numbers even if the default moves on.
P = dataclasses.replace(D, lr_side=0, deformable_levels=D.deformable_levels[:2] + ((96, 16, 20),))
ROWS: dict[str, RefineSchedule] = {
    "coarse": dataclasses.replace(P, deformable_levels=P.deformable_levels[:2]),
    "default": D,
    "fine30": dataclasses.replace(P, deformable_levels=P.deformable_levels[:2] + ((96, 16, 30),)),
    "fine80": dataclasses.replace(P, deformable_levels=P.deformable_levels[:2] + ((80, 16, 30),)),
    "no-tolerance": dataclasses.replace(P, tolerance=0.0),
    "residual": dataclasses.replace(P, whole_field=False),
    # issue #16 (brain MR at 1 mm below the classical registration): one change per row
    "grid24": dataclasses.replace(P, deformable_levels=P.deformable_levels[:2] + ((96, 24, 20),)),
    "grid32": dataclasses.replace(P, deformable_levels=P.deformable_levels[:2] + ((96, 32, 25),)),
    "side160": dataclasses.replace(P, deformable_levels=P.deformable_levels + ((160, 24, 15),)),
    "window7": dataclasses.replace(P, window=7),
    "window5": dataclasses.replace(P, window=5),
    "smooth01": dataclasses.replace(P, smoothness=0.01),
    "steps48": dataclasses.replace(P, deformable_levels=((24, 12, 80), (48, 16, 80), (96, 16, 20))),
    "lr01": dataclasses.replace(P, deformable_lr=0.01),
    "lr-side48": dataclasses.replace(P, lr_side=48),
    "smooth04": dataclasses.replace(P, smoothness=0.04),
    "grid24-lr-side48": dataclasses.replace(P, lr_side=48, deformable_levels=P.deformable_levels[:2] + ((96, 24, 30),)),
    "side160-lr-side48": dataclasses.replace(P, lr_side=48, deformable_levels=P.deformable_levels + ((160, 24, 15),)),
    "lr005": dataclasses.replace(P, deformable_lr=0.005),
    "lr-side24": dataclasses.replace(P, lr_side=24),
    "lr01-side48": dataclasses.replace(P, deformable_lr=0.01, lr_side=48),
    "lr01-fine40": dataclasses.replace(
        P, deformable_lr=0.01, deformable_levels=P.deformable_levels[:2] + ((96, 16, 40),)
    ),
    "lr01-smooth01": dataclasses.replace(P, deformable_lr=0.01, smoothness=0.01),
    "lr01-smooth04-fine40": dataclasses.replace(
        P, deformable_lr=0.01, smoothness=0.04, deformable_levels=P.deformable_levels[:2] + ((96, 16, 40),)
    ),
    "lr01-w5-fine40": dataclasses.replace(
        P, deformable_lr=0.01, window=5, deformable_levels=P.deformable_levels[:2] + ((96, 16, 40),)
    ),
    "lr01-fine60": dataclasses.replace(
        P, deformable_lr=0.01, deformable_levels=P.deformable_levels[:2] + ((96, 16, 60),)
    ),
    "lr01-side128": dataclasses.replace(
        P, deformable_lr=0.01, lr_side=48, deformable_levels=P.deformable_levels[:2] + ((96, 16, 30), (128, 24, 20))
    ),
    "lr01-smooth08-fine40": dataclasses.replace(
        P, deformable_lr=0.01, smoothness=0.08, deformable_levels=P.deformable_levels[:2] + ((96, 16, 40),)
    ),
    "lr005-smooth04-fine40": dataclasses.replace(
        P, deformable_lr=0.005, smoothness=0.04, deformable_levels=P.deformable_levels[:2] + ((96, 16, 40),)
    ),
    "lr01-smooth04-side128": dataclasses.replace(
        P,
        deformable_lr=0.01,
        smoothness=0.04,
        lr_side=48,
        deformable_levels=P.deformable_levels[:2] + ((96, 16, 30), (128, 24, 20)),
    ),
    "lr01-smooth16-fine40": dataclasses.replace(
        P, deformable_lr=0.01, smoothness=0.16, deformable_levels=P.deformable_levels[:2] + ((96, 16, 40),)
    ),
    "lr01-smooth08-grid24": dataclasses.replace(
        P, deformable_lr=0.01, smoothness=0.08, deformable_levels=P.deformable_levels[:2] + ((96, 24, 40),)
    ),
    "lr01-smooth08-fine60": dataclasses.replace(
        P, deformable_lr=0.01, smoothness=0.08, deformable_levels=P.deformable_levels[:2] + ((96, 16, 60),)
    ),
    # issue #16, second round: stiff finest level on its own correction only (fine_smoothness)
    "side48-fine40": dataclasses.replace(P, lr_side=48, deformable_levels=P.deformable_levels[:2] + ((96, 16, 40),)),
    **{
        f"side48-fine40-rs{int(w * 100):02d}": dataclasses.replace(
            P, lr_side=48, fine_smoothness=w, deformable_levels=P.deformable_levels[:2] + ((96, 16, 40),)
        )
        for w in (0.08, 0.16, 0.32, 0.64)
    },
    **{
        f"lr01-fine40-rs{int(w * 100):02d}": dataclasses.replace(
            P, deformable_lr=0.01, fine_smoothness=w, deformable_levels=P.deformable_levels[:2] + ((96, 16, 40),)
        )
        for w in (0.16, 0.32)
    },
    **{
        f"side48-fine40-ws{int(w * 100):02d}": dataclasses.replace(
            P,
            lr_side=48,
            fine_smoothness=w,
            fine_residual=False,
            deformable_levels=P.deformable_levels[:2] + ((96, 16, 40),),
        )
        for w in (0.14, 0.3)
    },
    # issue #16, third round: a bending energy on the whole field (zero for affine fields)
    **{
        f"side48-fine40-be{int(w * 100):02d}": dataclasses.replace(
            P, lr_side=48, bending=w, deformable_levels=P.deformable_levels[:2] + ((96, 16, 40),)
        )
        for w in (0.05, 0.2, 0.8, 3.2)
    },
    **{
        f"side48-fine40-s01-be{int(w * 100):02d}": dataclasses.replace(
            P, lr_side=48, smoothness=0.01, bending=w, deformable_levels=P.deformable_levels[:2] + ((96, 16, 40),)
        )
        for w in (0.2, 0.8)
    },
    **{f"be{int(w * 100):02d}": dataclasses.replace(P, bending=w) for w in (0.2, 0.8)},
    **{f"side48-be{int(w * 100):02d}": dataclasses.replace(P, lr_side=48, bending=w) for w in (0.2, 0.8)},
}


def _pairs(kind: str, n: int):
    for i in range(n):
        if kind == "cardiac":
            a, b = 3000 + 2 * i, 3001 + 2 * i
            yield make_cardiac_subject(a, (96, 96, 96)), make_cardiac_subject(b, (96, 96, 96))
        else:
            yield make_brain_subject(5000 + 2 * i, None), make_brain_subject(5001 + 2 * i, None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cardiac-pairs", type=int, default=5)
    ap.add_argument("--brain-pairs", type=int, default=1)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: comparable under load)")
    ap.add_argument("--json", help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in ("gvsl_app.services.matching", "gvsl_app.services.match_refine"):
        logging.getLogger(name).setLevel(logging.ERROR)
    model, info = load_model(None, "cpu")
    print(f"weights: {info}; {args.threads} thread(s)", flush=True)
    rows = []
    for kind, n in (("cardiac", args.cardiac_pairs), ("brain", args.brain_pairs)):
        if n <= 0:
            continue
        data = list(_pairs(kind, n))
        for name in args.rows:
            dice, hd95, secs, steps, fold = [], [], [], [], []
            for (fixed, fl), (moving, ml) in data:
                r = match(
                    fixed,
                    moving,
                    model=model,
                    size=48,
                    device="cpu",
                    moving_labels=ml,
                    schedule=ROWS[name],
                    init="none",
                )
                if kind == "brain":
                    d, h = score(r.warped_labels.array, fl)
                else:
                    d, h = mean_dice(r.warped_labels.array, fl.array), float("nan")
                dice.append(d)
                hd95.append(h)
                secs.append(r.report.seconds["total_s"])
                fold.append(r.report.folding_percent)
                steps.append([lv["steps"] for lv in r.report.refined.levels])
            row = {
                "kind": kind,
                "row": name,
                "dice": float(np.mean(dice)),
                "dice_per_pair": dice,
                "hd95_mm": float(np.mean(hd95)),
                "seconds": float(np.mean(secs)),
                "seconds_per_pair": secs,
                "folding_percent": float(np.mean(fold)),
                "folding_per_pair": fold,
                "steps_first_pair": steps[0],
            }
            rows.append(row)
            print(
                f"{kind:<8} {name:<13} Dice {row['dice']:.4f}  HD95 {row['hd95_mm']:.2f} mm  "
                f"{row['seconds']:.1f} s/pair  fold {row['folding_percent']:.2f} %  "
                f"per pair {' '.join(f'{x:.4f}' for x in dice)}  steps {steps[0]}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

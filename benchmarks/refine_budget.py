"""Does the network's map save refinement work? Dice against refinement budget, from the network and from the identity.

Usage:
  python benchmarks/refine_budget.py [--weights CKPT] [--pairs 5] [--seed-base 3000] [--shape 96] [--size 48]
                                     [--fractions 0 0.25 0.5 1] [--json OUT]

On held-out synthetic cardiac pairs (subject seeds ``--seed-base + 2i`` / ``+ 2i + 1``, as
``bench_match.py``), ``gvsl_app.services.matching.match`` refines either the network's map
(the demo weights or ``--weights``) or the identity (an untrained network with the paper's
heads, whose map is the identity to ~1e-5) with the default ``models.RefineSchedule`` whose
step counts are scaled by each ``--fractions`` value (0: no refinement), fallback off so the
maps are compared as they are. It prints mean Dice of the seven heart structures, folding
and seconds per pair for every budget and start. If the network earns its place, its start
reaches a given Dice with fewer steps than the identity's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from match_models import load_model, mean_dice

from gvsl_app.data.preprocess import resample_to
from gvsl_app.data.synthetic import make_cardiac_subject
from gvsl_app.services.matching import match
from models import RefineSchedule


def scaled(schedule: RefineSchedule, fraction: float) -> RefineSchedule | None:
    """The schedule with every level's step count times ``fraction`` (at least 1); None for 0."""
    if fraction <= 0:
        return None
    aff = tuple((side, max(1, round(n * fraction))) for side, n in schedule.affine_levels)
    dfm = tuple((side, grid, max(1, round(n * fraction))) for side, grid, n in schedule.deformable_levels)
    return dataclasses.replace(schedule, affine_levels=aff, deformable_levels=dfm)


def _budget_row(args, pairs, model, schedule, fraction: float, start: str) -> dict:
    """Mean Dice, folding and seconds over the pairs, refined with ``schedule`` from ``model``'s map."""
    dice, fold, secs = [], [], []
    for f, m, fl, ml in pairs:
        t0 = time.perf_counter()
        r = match(
            f,
            m,
            model=model,
            size=args.size,
            device="cpu",
            moving_labels=ml,
            fixed_labels=fl,
            refine=schedule is not None,
            schedule=schedule,
            fallback=False,
            init="none",
        )
        secs.append(time.perf_counter() - t0)
        dice.append(mean_dice(r.warped_labels.array, fl.array))
        fold.append(r.report.folding_percent)
    return {
        "fraction": fraction,
        "steps": schedule.total_steps if schedule is not None else 0,
        "start": start,
        "dice": float(np.mean(dice)),
        "dice_per_pair": dice,
        "folding_percent": float(np.mean(fold)),
        "seconds": float(np.mean(secs)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="GVSL checkpoint (default: the demo weights)")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--seed-base", type=int, default=3000)
    ap.add_argument("--shape", type=int, default=96)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    ap.add_argument("--json", help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    logging.getLogger("gvsl_app.services.matching").setLevel(logging.ERROR)
    starts = {"network": load_model(args.weights, "cpu")[0], "identity": load_model("random", "cpu")[0]}
    pairs = []
    for i in range(args.pairs):
        f, fl = make_cardiac_subject(args.seed_base + 2 * i, (args.shape,) * 3)
        m, ml = make_cardiac_subject(args.seed_base + 2 * i + 1, (args.shape,) * 3)
        pairs.append((f, m, fl, ml))
    before = float(np.mean([mean_dice(resample_to(ml, f, is_label=True).array, fl.array) for f, m, fl, ml in pairs]))
    print(
        f"{args.pairs} held-out cardiac pairs ({args.shape}^3, seeds from {args.seed_base}), identity Dice {before:.3f}"
    )
    print(f"{'budget':>7} {'steps':>6} | {'start':>8} | {'Dice':>6} {'fold %':>7} {'s/pair':>7}")
    rows = []
    for fraction in args.fractions:
        schedule = scaled(RefineSchedule(), fraction)
        for start, model in starts.items():
            row = _budget_row(args, pairs, model, schedule, fraction, start)
            rows.append(row)
            print(
                f"{fraction:7.2f} {row['steps']:6d} | {start:>8} | {row['dice']:6.3f} {row['folding_percent']:7.2f} "
                f"{row['seconds']:7.2f}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"before": before, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sys.exit(main())

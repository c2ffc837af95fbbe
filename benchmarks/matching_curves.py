"""Learning curves of Z-Matching: held-out Dice and NCC of every snapshot of a pre-training run.

Usage:
  python benchmarks/matching_curves.py RUN|CKPT [...] [--pairs 4] [--shape 64] [--kinds cardiac brain]
                                       [--seed-base 7000] [--every 1] [--json OUT]

A run pre-trained with ``--snapshot-every N`` keeps ``checkpoints/iter_NNNNNN.pt``. For each
snapshot (and iteration 0: the same architecture at its random initialisation), on held-out
synthetic pairs of each kind in ``--kinds``, the network alone matches the moving scan to the
fixed one (``gvsl_app.services.matching.match`` at the run's working size; a checkpoint file instead
of a run folder is scored once, as iteration -1, ``refine=False``,
``fallback=False``: the network's own map, even where it is worse than the identity), and
the script prints per kind: mean Dice of the moving labels before (identity in physical
space) and after, local NCC before and after on the working cubes, and folding.

Pairs: subject seeds ``--seed-base + 2i`` (fixed) and ``+ 2i + 1`` (moving), cardiac CT
phantoms (seven heart structures) or MNI-derived brain MR subjects (grey matter, white
matter, CSF), ``--shape``^3 voxels. Pre-training uses subject seeds ``seed * 100003 + i``
for small ``i`` (0-23 for the shipped weights), so these pairs are never seen in training.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gvsl_app.services.matching import match
from gvsl_app.services.weights import load_gvsl
from gvsl_app.training.runs import RunFolder
from models import GVSL


def make_pairs(kind: str, n: int, shape: int, seed_base: int, training_seed: int | None = None) -> list[tuple]:
    """``n`` held-out ``(fixed, moving, fixed_labels, moving_labels)`` pairs of one kind.

    With ``training_seed``, pairs of the subjects a pre-training with that ``--seed`` saw
    instead (subjects 0-1, 2-3, ...): a gap between the two says over- or underfitting.
    """
    from gvsl_app.data.synthetic import subject_seed

    if kind == "brain":
        from gvsl_app.data.brain import make_brain_subject as make
    else:
        from gvsl_app.data.synthetic import make_cardiac_subject as make

    def seed(k: int) -> int:
        return seed_base + k if training_seed is None else subject_seed(training_seed, k)

    pairs = []
    for i in range(n):
        fixed, fl = make(seed(2 * i), (shape,) * 3)
        moving, ml = make(seed(2 * i + 1), (shape,) * 3)
        pairs.append((fixed, moving, fl, ml))
    return pairs


def score(model: GVSL, pairs: list[tuple], size: int) -> dict:
    """Mean Dice / NCC before and after the network's map, and folding, over ``pairs``."""
    rows = []
    for fixed, moving, fl, ml in pairs:
        r = match(
            fixed,
            moving,
            model=model,
            size=size,
            device="cpu",
            moving_labels=ml,
            fixed_labels=fl,
            fallback=False,
            refine=False,
            init="none",
        ).report
        rows.append((r.mean_dice_before, r.mean_dice_after, r.ncc_before, r.ncc_after, r.folding_percent))
    a = np.array(rows)
    keys = ("dice_before", "dice_after", "ncc_before", "ncc_after", "folding_percent")
    out = {k: float(v) for k, v in zip(keys, a.mean(axis=0))}
    out["dice_gain_min"] = float((a[:, 1] - a[:, 0]).min())
    return out


def initial_model(snapshot: Path) -> GVSL:
    """The snapshot's architecture with the run's initialisation (seeded as pre-training is)."""
    model, _ = load_gvsl(snapshot)
    seed = int(torch.load(snapshot, map_location="cpu", weights_only=True).get("config", {}).get("seed", 0))
    torch.manual_seed(seed)
    fresh = GVSL.from_config(model.config()).eval()
    fresh.working_size = model.working_size
    return fresh


def curve(run: str, pairs: dict[str, list], every: int) -> list[dict]:
    if Path(run).is_file():  # one checkpoint (e.g. the shipped weights): one point
        model, _ = load_gvsl(run)
        return _score_points(run, [(-1, model)], pairs)
    snaps = RunFolder(run).snapshots()
    if not snaps:
        sys.exit(f"{run}: no snapshots (checkpoints/iter_*.pt); pre-train with --snapshot-every N")
    snaps = snaps[::every] if snaps[-1] in snaps[::every] else snaps[::every] + [snaps[-1]]
    points = [(0, initial_model(snaps[0][1]))] + [(i, load_gvsl(p)[0]) for i, p in snaps]
    return _score_points(run, points, pairs)


def _score_points(run: str, points: list[tuple[int, GVSL]], pairs: dict[str, list]) -> list[dict]:
    rows = []
    for iteration, model in points:
        t0 = time.perf_counter()
        row = {"run": run, "iteration": iteration}
        for kind, kind_pairs in pairs.items():
            row[kind] = score(model, kind_pairs, int(model.working_size or 48))
        rows.append(row)
        cells = "  ".join(
            f"{k}: Dice {v['dice_before']:.3f} -> {v['dice_after']:.3f} (worst gain "
            f"{v['dice_gain_min']:+.3f}), NCC {v['ncc_before']:.3f} -> {v['ncc_after']:.3f}, "
            f"fold {v['folding_percent']:.2f} %"
            for k, v in row.items()
            if isinstance(v, dict)
        )
        print(f"{Path(run).name} {iteration:>6}  {cells}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--pairs", type=int, default=4, help="held-out pairs per kind")
    ap.add_argument("--shape", type=int, default=64)
    ap.add_argument("--kinds", nargs="+", default=["cardiac", "brain"], choices=["cardiac", "brain"])
    ap.add_argument("--seed-base", type=int, default=7000)
    ap.add_argument("--every", type=int, default=1, help="score every k-th snapshot (the last always)")
    ap.add_argument(
        "--training-subjects",
        type=int,
        metavar="SEED",
        help="score pairs of the subjects a pre-training with --seed SEED used, instead of held-out ones",
    )
    ap.add_argument("--json", help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    # A CT-only checkpoint on the brain pairs warns once per scan; the table says it all.
    logging.getLogger("gvsl_app.services.matching").setLevel(logging.ERROR)
    pairs = {k: make_pairs(k, args.pairs, args.shape, args.seed_base, args.training_subjects) for k in args.kinds}
    rows = [row for run in args.runs for row in curve(run, pairs, args.every)]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

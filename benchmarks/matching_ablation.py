"""Which Z-Matching design learns to match? Short pre-trainings side by side, scored on held-out Dice.

Usage:
  python benchmarks/matching_ablation.py [--iters 200] [--size 32] [--pairs 4] [--variant gvsl]
                                         [--rows paper default ...] [--threads 1] [--json OUT]

Every row pre-trains a fresh width-8 network with the real ``gvsl_app.training.pretrain.pretrain`` loop
(same seed, same 16 synthetic cardiac subjects, same pairs and augmentations, Adam lr 1e-3,
batch 1, ``--iters`` steps at ``--size``^3) and differs only in the Z-Matching heads, what the
matching sees, and the similarity loss. Each row's network then matches held-out cardiac
pairs (subject seeds 7000+, never seen in training; ``match(..., refine=False,
fallback=False)``: the network's own map) at half and at all of its steps, and the script
prints the mean Dice of the seven heart structures before (identity in physical space) and
after, the NCC, and the folding.

Rows (``--rows``; default all), each changing one thing against the default or the paper:

* ``paper``: the paper's recipe: pooled-bottleneck affine head, one full-resolution
  deformable head, local NCC 9^3 at full resolution, and the backbone matching the
  appearance-transformed moving scan (``match_input="transformed"``);
* ``paper-clean``: the paper's heads and loss, matching the clean scans (what the clean
  matching input alone does);
* ``transformed``: the default heads and loss matching the transformed scan (what the clean
  matching input adds to them);
* ``paper-affine``: the paper's affine head, everything else default (what the keypoint
  affine head adds);
* ``pyramid-full``: the default plus a full-resolution deformable level (what stopping at
  1/2 resolution adds);
* ``single-ncc``: the default with the paper's single-scale NCC (what the multi-scale loss
  adds);
* ``default``: keypoint affine head, coarse-to-fine deformable head at 1/4 and 1/2
  resolution, multi-scale NCC, clean matching input (what ``gvsl pretrain`` uses).

``--variant gvsl`` (default) trains with the restoration task as well, as the shipped weights
are; ``--variant matching`` leaves restoration out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from gvsl_app.services.weights import load_gvsl
from gvsl_app.training.config import PretrainConfig
from gvsl_app.training.pretrain import pretrain

from matching_curves import make_pairs, score  # noqa: E402  (a sibling script, not a package)

PAPER = {"affine_head": "paper", "deformable_head": "paper", "similarity": "ncc"}
ROWS: dict[str, dict] = {
    "paper": {**PAPER, "match_input": "transformed"},
    "paper-clean": PAPER,
    "transformed": {"match_input": "transformed"},
    "paper-affine": {"affine_head": "paper"},
    "pyramid-full": {"deformable_head": "pyramid-full"},
    "single-ncc": {"similarity": "ncc"},
    "default": {},
    "affine-loss": {"w_affine": 1.0},
    "relative-pose": {"relative_pose": True},
    "affine-loss+pose": {"w_affine": 1.0, "relative_pose": True},
    "corr": {"deformable_head": "pyramid-corr"},
    "corr+affine-loss": {"deformable_head": "pyramid-corr", "w_affine": 1.0},
    "lr3e-3": {"lr": 3e-3},
    "wide-heads": {"deformable_head": "pyramid-wide"},
    # the NCC's damping as VoxelMorph and the authors' code have it (1e-5 on window sums)
    "ncc-eps-sums": {"ncc_eps": 1e-5 / 729**2},
    "single-ncc-eps-sums": {"similarity": "ncc", "ncc_eps": 1e-5 / 729**2},
}


def run_row(name: str, heads: dict, args, work: Path, pairs: list) -> list[dict]:
    """Pre-train one row and score its snapshots at half and at all of the steps."""
    half = max(1, args.iters // 2)
    options = dict(
        data="synthetic:cardiac",
        n_synthetic=16,
        run=str(work / name),
        variant=args.variant,
        iters=args.iters,
        size=args.size,
        width=8,
        lr=1e-3,
        workers=0,
        device="cpu",
        seed=args.seed,
        snapshot_every=half,
        val_every=10**9,
        ckpt_every=10**9,
    )
    cfg = PretrainConfig(**{**options, **heads})
    t0 = time.perf_counter()
    for _ in pretrain(cfg):
        pass
    train_s = time.perf_counter() - t0
    rows = []
    for iteration, path in (
        (half, work / name / "checkpoints" / f"iter_{half:06d}.pt"),
        (args.iters, work / name / "checkpoints" / f"iter_{args.iters:06d}.pt"),
    ):
        model, _ = load_gvsl(path)
        r = score(model, pairs, args.size)
        rows.append({"row": name, "iteration": iteration, "train_s": train_s, **heads, **r})
        print(
            f"{name:>13} {iteration:>5} | {r['dice_before']:.3f} -> {r['dice_after']:.3f} "
            f"(worst pair {r['dice_gain_min']:+.3f}) | NCC {r['ncc_before']:.3f} -> {r['ncc_after']:.3f} "
            f"| fold {r['folding_percent']:.2f} % | train {train_s / args.iters:.2f} s/step",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--variant", default="gvsl", choices=["gvsl", "matching"])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--json", help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("gvsl_app.services.matching").setLevel(logging.ERROR)
    pairs = make_pairs("cardiac", args.pairs, 48, 7000)
    print(f"{'row':>13} {'step':>5} | Dice before -> after (held-out cardiac pairs) | NCC | folding | speed")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for name in args.rows for r in run_row(name, ROWS[name], args, Path(tmp), pairs)]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

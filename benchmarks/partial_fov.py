"""Partial fields of view: a moving scan that covers part of the fixed one, matched side by side.

Usage:
  python benchmarks/partial_fov.py [--pairs 5] [--shape 64] [--rows z:0.3:0.7 ...] [--no-sitk] [--json OUT]

Held-out cardiac pairs as in ``capture_range.py`` (``gvsl sample cardiac --n 2*pairs --seed
5150``: pairs 0->1, 2->3, ...). The moving scan is cut to a part of its grid (``--rows
AXIS:START:STOP``: the fractions START..STOP of array axis z, y or x; ``all`` keeps it whole)
that keeps its place in physical space (``gvsl_app.data.perturb.slab``): a slab of slices, half
the heart. Each row is scored by the mean Dice of the structures on the fixed voxels of the
same part of the fixed grid, shrunk by two voxels on each side (where the slab has data: the
rest has nothing to match), and by the folding of the whole map (which must stay < 0.5 %):

* ``before``: the labels in the files' frames;
* ``masked``: ``gvsl match`` as shipped (the similarities restricted to where the placed
  moving scan has data);
* ``unmasked``: the same with ``--no-overlap-mask`` (the whole fixed grid compared, the slab's
  background and its edges included);
* ``sitk``: SimpleITK, moments initialisation, Mattes MI affine then B-spline, unmasked
  (``--no-sitk`` skips it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROWS = ("all", "z:0.3:0.7", "z:0.35:0.6", "y:0:0.55", "x:0.45:1")
AXES = {"z": 0, "y": 1, "x": 2}


def part(row: str) -> tuple[int, float, float] | None:
    """(array axis, start, stop) of a row, None for ``all``."""
    if row == "all":
        return None
    axis, start, stop = row.split(":")
    return AXES[axis], float(start), float(stop)


def region(shape: tuple[int, ...], cut: tuple[int, float, float] | None) -> tuple[slice, ...]:
    """The fixed voxels scored for a cut: the same fractions of the fixed grid, two voxels in."""
    if cut is None:
        return (slice(None),) * 3
    axis, start, stop = cut
    n = shape[axis]
    index = [slice(None)] * 3
    index[axis] = slice(int(round(start * n)) + 2, int(round(stop * n)) - 2)
    return tuple(index)


def dice_in(warped: np.ndarray, fixed_labels: np.ndarray, where: tuple[slice, ...]) -> float:
    from gvsl_app.services.metrics import dice_per_label, mean_dice

    f, w = fixed_labels[where], np.asarray(warped)[where]
    labels = sorted(int(v) for v in np.unique(f) if v)
    return float(mean_dice(dice_per_label(w, f, labels)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--shape", type=int, default=64)
    ap.add_argument("--seed", type=int, default=5150)
    ap.add_argument("--rows", nargs="+", default=list(ROWS))
    ap.add_argument("--no-sitk", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from capture_range import subjects
    from classical_registration import classical_registration, folding_percent, warp_labels

    from gvsl_app.data.perturb import slab
    from gvsl_app.data.preprocess import resample_to
    from gvsl_app.services.matching import match
    from gvsl_app.services.weights import load_gvsl

    model, _ = load_gvsl(None, "cpu")
    subs = subjects("cardiac", 2 * args.pairs, args.seed, args.shape, "same")
    methods = ["before", "masked", "unmasked"] + ([] if args.no_sitk else ["sitk"])
    table: dict[str, dict[str, list]] = {}
    for row in args.rows:
        cut = part(row)
        cells: dict[str, list] = {m: [] for m in methods}
        cells.update({"masked_folding": [], "unmasked_folding": [], "sitk_folding": [], "masked_s": [], "sitk_s": []})
        for p in range(args.pairs):
            (fixed, fl), (moving, ml) = subs[2 * p], subs[2 * p + 1]
            if cut is not None:
                moving, ml = slab(moving, *cut), slab(ml, *cut)
            where = region(fl.shape, cut)
            before = resample_to(ml, fixed, is_label=True).array
            cells["before"].append(dice_in(before, fl.array, where))
            for name, mask in (("masked", True), ("unmasked", False)):
                t = time.perf_counter()
                r = match(fixed, moving, model=model, moving_labels=ml, fixed_labels=fl, overlap_mask=mask)
                assert r.warped_labels is not None and r.report is not None
                cells[name].append(dice_in(r.warped_labels.array, fl.array, where))
                cells[f"{name}_folding"].append(r.report.folding_percent)
                if mask:
                    cells["masked_s"].append(time.perf_counter() - t)
            if not args.no_sitk:
                t = time.perf_counter()
                try:
                    tr = classical_registration(fixed, moving, initializer="moments")
                    cells["sitk"].append(dice_in(warp_labels(ml, fixed, tr), fl.array, where))
                    cells["sitk_folding"].append(folding_percent(tr, fixed))
                except RuntimeError:
                    cells["sitk"].append(0.0)
                cells["sitk_s"].append(time.perf_counter() - t)
            line = "  ".join(f"{m} {cells[m][-1]:.3f}" for m in methods)
            print(f"{row:>12} pair {p}: {line}", flush=True)
        table[row] = cells
    print("\nmean Dice where the moving scan has data (worst pair), folding % of the whole map (max)")
    print(f"{'row':>12} | " + " | ".join(f"{m:>14}" for m in methods) + " | masked fold | unmasked fold")
    for row, cells in table.items():
        dice = " | ".join(f"{np.mean(cells[m]):.3f} ({min(cells[m]):.2f})" for m in methods)
        folds = f"{max(cells['masked_folding']):11.3f} | {max(cells['unmasked_folding']):13.3f}"
        print(f"{row:>12} | {dice} | {folds}")
    if args.json:
        args.json.write_text(json.dumps({"pairs": args.pairs, "shape": args.shape, "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

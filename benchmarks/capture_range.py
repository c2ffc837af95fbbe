"""Capture range: how far apart a pair may start and still be matched, side by side.

Usage:
  python benchmarks/capture_range.py [--pairs 5] [--shape 96] [--kind cardiac|brain]
        [--moving-contrast same|mr|t2] [--rows 0:0 30:0 ...] [--weights CKPT ...] [--no-sitk]
        [--json OUT] [--quick]

Held-out pairs of synthetic subjects (``gvsl sample KIND --n 2*pairs --seed 5150``: pairs
0->1, 2->3, ...; the demo weights saw seeds 0..23 of seed 0). The moving scan is first padded
(by the largest shift + 30 mm, so that no structure leaves its grid), then its anatomy is
turned by Euler angles (k, -k, k) degrees about its centre and shifted by s mm along
(1, -1, 1) (``--rows K:S``), on its own grid, exactly (``gvsl_app.data.perturb``). Each row
is scored by the mean Dice of the structures, per method:

* ``before``: the labels in the files' frames;
* ``default``: ``gvsl match`` as shipped (initial alignment ``auto``, network, refinement),
  once per ``--weights`` (the demo weights by default);
* ``init+net``: the same without the refinement (what the network adds to the initial alignment);
* ``init+refine``: the initial alignment and the same refinement from an untrained network's
  near-identity map (its difference to ``default`` is the trained network's contribution);
* ``refine``: the same refinement from the files' frames (``--init none``), the tool before
  the initial alignment;
* ``sitk``: SimpleITK, moments initialisation, Mattes MI affine then B-spline (``--no-sitk``
  skips it).

``--moving-contrast mr`` renders the moving cardiac subjects as cine MR (CT against MR of
the same kind of anatomy), ``t2`` the moving brain subjects T2-like (T1 against T2).
And the verdict of each GVSL match (``report.quality.status``) against its Dice, to see that
``failed`` and ``doubtful`` flag the failures. Prints the tables and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROWS = ("0:0", "30:0", "45:0", "60:0", "0:30", "0:60", "0:80", "20:30", "30:45", "45:60")
QUICK_ROWS = ("0:0", "45:0", "0:60", "30:45")


def subjects(kind: str, n: int, seed: int, shape: int, moving_contrast: str):
    """Subjects ``0..n-1`` as ``gvsl sample KIND --n n --seed seed`` writes them: (image, labels);
    the odd ones (the moving scans) in ``moving_contrast`` (``mr`` cardiac: rendered as cine MR;
    ``t2`` brain: T2-like). ``shape`` 0: the brain template's own 1 mm grid.
    """
    from gvsl_app.data.perturb import other_contrast
    from gvsl_app.data.samples import _subject
    from gvsl_app.data.synthetic import make_cardiac_subject

    grid = None if shape == 0 else (shape,) * 3
    out = []
    for i in range(n):
        s = seed * 100003 + i
        if i % 2 and moving_contrast == "mr":
            out.append(make_cardiac_subject(s, grid, contrast="mr"))
            continue
        image, labels = _subject(kind, s, grid)
        if i % 2 and moving_contrast == "t2":
            image = other_contrast(image, labels)
        out.append((image, labels))
    return out


def perturbed(image, labels, degrees: float, shift_mm: float):
    """The moving pair padded and moved by row (degrees, shift)."""
    from gvsl_app.data.perturb import moved_anatomy, padded

    pad = shift_mm + 30.0
    k, s = float(degrees), float(shift_mm) / math.sqrt(3.0)
    angles, shift = (k, -k, k), (s, -s, s)
    return (
        moved_anatomy(padded(image, pad), angles, shift),
        moved_anatomy(padded(labels, pad, fill=0), angles, shift, is_label=True),
    )


def mean_dice(warped, fixed_labels) -> float:
    from gvsl_app.services.metrics import dice_per_label, mean_dice

    labels = sorted(int(v) for v in np.unique(fixed_labels.array) if v)
    return float(mean_dice(dice_per_label(np.asarray(warped), fixed_labels.array, labels)))


def run_gvsl(fixed, moving, fl, ml, model, **options) -> dict:
    from gvsl_app.services.matching import match

    t = time.perf_counter()
    r = match(fixed, moving, model=model, moving_labels=ml, fixed_labels=fl, device="cpu", **options)
    rep = r.report
    return {
        "dice": rep.mean_dice_after,
        "seconds": time.perf_counter() - t,
        "quality": rep.quality.status,
        "nmi_after": rep.quality.nmi_after,
        "folding": rep.folding_percent,
        "init": rep.init["chosen"],
    }


def run_sitk(fixed, moving, fl, ml) -> dict:
    from classical_registration import classical_registration, folding_percent, warp_labels

    t = time.perf_counter()
    try:
        tr = classical_registration(fixed, moving, initializer="moments")
    except RuntimeError as exc:  # SimpleITK gives up when the images no longer overlap
        return {"dice": 0.0, "seconds": time.perf_counter() - t, "error": str(exc).splitlines()[-1][:120]}
    return {
        "dice": mean_dice(warp_labels(ml, fixed, tr), fl),
        "seconds": time.perf_counter() - t,
        "folding": folding_percent(tr, fixed),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--shape", type=int, default=96)
    ap.add_argument("--kind", choices=["cardiac", "brain"], default="cardiac")
    ap.add_argument("--seed", type=int, default=5150)
    ap.add_argument(
        "--moving-contrast",
        choices=["same", "mr", "t2"],
        default="same",
        help="the moving scans in another contrast: mr (cardiac rendered as cine MR) or t2 (brain T2-like)",
    )
    ap.add_argument("--rows", nargs="+", help="rows as DEGREES:SHIFT_MM (default: 0 to 60 deg, 0 to 80 mm)")
    ap.add_argument("--weights", nargs="+", default=[None], help="GVSL checkpoints (default: the demo weights)")
    ap.add_argument("--no-sitk", action="store_true")
    ap.add_argument("--sitk-only", action="store_true", help="only before and SimpleITK (a baseline rerun)")
    ap.add_argument(
        "--no-frames", action="store_true", help="skip the refine column (the files' frames, no initial alignment)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", help="write every cell here")
    ap.add_argument("--quick", action="store_true", help="2 pairs, 4 rows")
    args = ap.parse_args(argv)

    import torch

    from gvsl_app.data.preprocess import resample_to
    from gvsl_app.services.weights import load_gvsl
    from models import DEMO_WIDTHS, GVSL, PAPER_HEADS

    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = 2 if args.quick else args.pairs
    rows = args.rows or (QUICK_ROWS if args.quick else ROWS)
    subs = subjects(args.kind, 2 * pairs, args.seed, args.shape, args.moving_contrast)
    models = {(w or "demo"): load_gvsl(w, "cpu")[0] for w in args.weights}
    torch.manual_seed(0)
    untrained = GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS)  # predicts ~the identity
    untrained.working_size = 48
    cells: list[dict] = []
    for row in rows:
        deg, shift = (float(v) for v in row.split(":"))
        for i in range(pairs):
            (fi, fl), (mi, ml) = subs[2 * i], subs[2 * i + 1]
            mi, ml = perturbed(mi, ml, deg, shift)
            cell = {
                "row": row,
                "pair": f"{2 * i}->{2 * i + 1}",
                "before": mean_dice(resample_to(ml, fi, is_label=True).array, fl),
            }
            for name, model in models.items() if not args.sitk_only else ():
                cell[f"default[{name}]"] = run_gvsl(fi, mi, fl, ml, model)
                cell[f"init+net[{name}]"] = run_gvsl(fi, mi, fl, ml, model, refine=False)
            if not args.sitk_only:
                cell["init+refine"] = run_gvsl(fi, mi, fl, ml, untrained)
            if not args.no_frames and not args.sitk_only:
                cell["refine"] = run_gvsl(fi, mi, fl, ml, untrained, init="none")
            if not args.no_sitk:
                cell["sitk"] = run_sitk(fi, mi, fl, ml)
            cells.append(cell)
            print(json.dumps({k: (v["dice"] if isinstance(v, dict) else v) for k, v in cell.items()}), flush=True)
    summary = summarise(cells, rows)
    print_tables(summary, cells)
    if args.json:
        out = {"args": vars(args), "rows": list(rows), "summary": summary, "cells": cells}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


def _methods(cells: list[dict]) -> list[str]:
    return [k for k in cells[0] if k not in ("row", "pair")]


def _dice(cell: dict, method: str) -> float:
    v = cell[method]
    d = v["dice"] if isinstance(v, dict) else v
    return 0.0 if d is None or not math.isfinite(d) else float(d)


def summarise(cells: list[dict], rows) -> dict:
    """Per row and method: mean Dice, worst pair, mean seconds."""
    out: dict = {}
    for row in rows:
        these = [c for c in cells if c["row"] == row]
        out[row] = {}
        for m in _methods(cells):
            d = [_dice(c, m) for c in these]
            secs = [c[m]["seconds"] for c in these if isinstance(c[m], dict)]
            out[row][m] = {
                "mean": float(np.mean(d)),
                "worst": float(np.min(d)),
                "seconds": float(np.mean(secs)) if secs else None,
            }
    verdicts: dict = {}
    for c in cells:
        for m, v in c.items():
            if isinstance(v, dict) and "quality" in v:
                band = "dice<0.5" if _dice(c, m) < 0.5 else ("dice>=0.7" if _dice(c, m) >= 0.7 else "0.5-0.7")
                verdicts.setdefault(band, {}).setdefault(v["quality"], 0)
                verdicts[band][v["quality"]] += 1
    out["quality_by_dice"] = verdicts
    return out


def print_tables(summary: dict, cells: list[dict]) -> None:
    methods = _methods(cells)
    print("\nmean Dice (worst pair) per row DEGREES:SHIFT_MM")
    print(f"{'row':>8} " + " ".join(f"{m:>22}" for m in methods))
    for row, per in summary.items():
        if row == "quality_by_dice":
            continue
        print(f"{row:>8} " + " ".join(f"{per[m]['mean']:>14.3f} ({per[m]['worst']:.2f})" for m in methods))
    print("\nseconds per pair")
    for row, per in summary.items():
        if row == "quality_by_dice":
            continue
        print(f"{row:>8} " + " ".join(f"{(per[m]['seconds'] or 0):>22.1f}" for m in methods))
    print("\nverdicts of the GVSL matches by Dice band:", json.dumps(summary["quality_by_dice"]))


if __name__ == "__main__":
    raise SystemExit(main())

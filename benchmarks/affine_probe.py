"""Can the affine head learn a global transform at all? A controlled probe.

Usage: python benchmarks/affine_probe.py [--steps 300] [--size 32] [--shift 4] [--seed 0] [--lr 1e-3]

Pairs are one synthetic cardiac subject and the same subject translated by a random
shift of up to ``--shift`` voxels per axis (no deformation, no intensity change), so the
only correct answer is the inverse translation. A fresh width-8 GVSL is trained on them
with the deformable part switched off (``model(..., deformable=False)``), local NCC as the
loss, Adam. Every 50 steps, on 16 fresh pairs: the mean NCC after the predicted affine,
the mean absolute displacement of the predicted map (over all voxels and axes), and its
mean absolute error against the true map ``p -> p - t`` (the identity has error =
mean |shift|).

Why: in the study (docs/findings_small.md, item 4) the affine head stayed at the identity
during pre-training. This probe separates "nothing to learn" from "cannot learn it".
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gvsl_app.preprocess import normalise, resize_array  # noqa: E402
from gvsl_app.synthetic import make_cardiac_subject  # noqa: E402
from models import DEMO_WIDTHS, GVSL, local_ncc  # noqa: E402
from models.spatial import affine_from_parameters, sampling_coordinates, warp  # noqa: E402


def make_pair(volumes: list[torch.Tensor], shift: float, g: torch.Generator):
    """(moving, fixed, true shift): moving(p) = fixed(p + t), so the answer is -t."""
    fixed = volumes[int(torch.randint(0, len(volumes), (1,), generator=g))]
    size = tuple(fixed.shape[2:])
    t = (torch.rand(1, 3, generator=g) * 2 - 1) * shift
    a = affine_from_parameters(torch.zeros(1, 3), t, torch.ones(1, 3), torch.zeros(1, 6), size)
    return warp(fixed, sampling_coordinates(size, affine=a)), fixed, t


@torch.no_grad()
def evaluate(model: GVSL, volumes, shift: float, seed: int, n: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)
    ncc, pred, err, true = 0.0, 0.0, 0.0, 0.0
    for _ in range(n):
        m, f, t = make_pair(volumes, shift, g)
        o = model(m, f, restore=False, deformable=False)
        ncc += float(-local_ncc(o.warped, f)) / n
        moved = o.total_displacement()[0]  # (3, D, H, W): the whole affine map, not just its b
        pred += float(moved.abs().mean()) / n
        err += float((moved + t[0].view(3, 1, 1, 1)).abs().mean()) / n
        true += float(t.abs().mean()) / n
    return {"ncc": ncc, "pred_shift": pred, "error": err, "true_shift": true}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--shift", type=float, default=4.0, help="largest shift per axis, voxels")
    ap.add_argument("--subjects", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    cube = (args.size,) * 3
    volumes = []
    for s in range(args.subjects):
        image, _ = make_cardiac_subject(s, (48, 48, 48))
        volumes.append(torch.from_numpy(resize_array(normalise(image), cube)).float()[None, None])
    model = GVSL(widths=DEMO_WIDTHS)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed + 1)
    print(f"{'step':>5} {'NCC after':>10} {'|u|':>6} {'|u - (-t)|':>11} {'|t|':>6}   seconds  (voxels)")
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        if step % 50 == 0:
            r = evaluate(model.eval(), volumes, args.shift, seed=10_000)
            model.train()
            print(f"{step:>5} {r['ncc']:>10.3f} {r['pred_shift']:>6.2f} {r['error']:>11.2f} {r['true_shift']:>6.2f}"
                  f"   {time.perf_counter() - t0:.0f}", flush=True)
        if step == args.steps:
            break
        m, f, _ = make_pair(volumes, args.shift, g)
        loss = local_ncc(model(m, f, restore=False, deformable=False).warped, f)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return 0


if __name__ == "__main__":
    sys.exit(main())

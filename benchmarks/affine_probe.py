"""Can the affine head learn a global transform? A controlled probe, both heads side by side.

Usage: python benchmarks/affine_probe.py [--steps 300] [--size 32] [--shift 4] [--rotate 10]
                                         [--heads keypoints paper] [--seed 0] [--lr 1e-3] [--direct]

Pairs are one synthetic cardiac subject and the same subject moved by a random rigid
transform: a shift of up to ``--shift`` voxels per axis and a rotation of up to
``--rotate`` degrees about each axis (no deformation, no intensity change), so the only
correct answer is the inverse transform. For each head in ``--heads`` a fresh width-8 GVSL
(same seed, same pairs) is trained with the deformable part switched off
(``model(..., deformable=False)``), local NCC as the loss, Adam. Every 50 steps, on 16
fresh pairs: the mean NCC after the predicted affine and the mean absolute error of the
predicted map against the true one, in voxels over all voxels and axes (the identity's
error is printed as ``identity``; a perfect head scores 0).

Why: in the study (docs/results/study_small/findings_small.md, item 4) the paper's head stayed at the
identity during pre-training. This probe separates "nothing to learn" from "cannot learn
it", and measures the keypoint head that replaced it as the default (docs/results/matching.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from gvsl_app.data.preprocess import normalise, resize_array
from gvsl_app.data.synthetic import make_cardiac_subject
from models import DEMO_WIDTHS, GVSL, local_ncc
from models.spatial import affine_from_parameters, sampling_coordinates, voxel_grid, warp


def make_pair(volumes: list[torch.Tensor], shift: float, rotate: float, g: torch.Generator):
    """``(moving, fixed, true map)``: ``moving(p) = fixed(T p)``, so the answer is ``T^-1``.

    Both scans are the centre crop of one larger volume (``MARGIN`` voxels more on each
    side), the moving one cut after the transform, so no zero padding enters the field of
    view and the true map is also the best one for the similarity. The true map is
    returned as voxel coordinates ``(1, 3, D, H, W)`` in the moving grid.
    """
    big = volumes[int(torch.randint(0, len(volumes), (1,), generator=g))]
    size = tuple(n - 2 * MARGIN for n in big.shape[2:])
    t = (torch.rand(1, 3, generator=g) * 2 - 1) * shift
    r = (torch.rand(1, 3, generator=g) * 2 - 1) * math.radians(rotate)
    a = affine_from_parameters(r, t, torch.ones(1, 3), torch.zeros(1, 6), size)
    o = torch.full((3, 1), float(MARGIN))
    a_big = torch.cat([a[0, :, :3], a[0, :, 3:] + o - a[0, :, :3] @ o], dim=1)[None]
    crop = (slice(None), slice(None)) + (slice(MARGIN, -MARGIN),) * 3
    moving = warp(big, sampling_coordinates(tuple(big.shape[2:]), affine=a_big))[crop]
    full = torch.cat([a[0], torch.tensor([[0.0, 0.0, 0.0, 1.0]])])
    inverse = torch.linalg.inv(full)[:3].unsqueeze(0)
    return moving.contiguous(), big[crop].contiguous(), sampling_coordinates(size, affine=inverse)


@torch.no_grad()
def evaluate(model: GVSL, volumes, shift: float, rotate: float, seed: int, n: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)
    ncc, err, ident = 0.0, 0.0, 0.0
    for _ in range(n):
        m, f, truth = make_pair(volumes, shift, rotate, g)
        o = model(m, f, restore=False, deformable=False)
        p = voxel_grid(tuple(f.shape[2:])).unsqueeze(0)
        ncc += float(-local_ncc(o.warped, f)) / n
        err += float((o.coordinates - truth).abs().mean()) / n
        ident += float((p - truth).abs().mean()) / n
    return {"ncc": ncc, "error": err, "identity": ident}


MARGIN = 8
"""Voxels of context around the probe's field of view (see :func:`make_pair`)."""


def direct_floor(volumes, shift: float, rotate: float, seed: int, n: int = 16, steps: int = 200) -> dict:
    """The similarity's own floor: each evaluation pair's affine optimised directly (Adam on the
    12 matrix entries, ``steps`` steps of local NCC, lr 0.05), no network. A head trained on
    the same loss cannot be expected to beat this error.
    """
    g = torch.Generator().manual_seed(seed)
    ncc, err = 0.0, 0.0
    for _ in range(n):
        m, f, truth = make_pair(volumes, shift, rotate, g)
        a = torch.eye(3, 4).unsqueeze(0).requires_grad_(True)
        opt = torch.optim.Adam([a], lr=0.05)
        for _ in range(steps):
            loss = local_ncc(warp(m, sampling_coordinates(tuple(f.shape[2:]), affine=a)), f)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            coords = sampling_coordinates(tuple(f.shape[2:]), affine=a)
            ncc += float(-local_ncc(warp(m, coords), f)) / n
            err += float((coords - truth).abs().mean()) / n
    return {"ncc": ncc, "error": err}


def load_volumes(subjects: int, size: int) -> list[torch.Tensor]:
    """Subjects resized to ``(size + 2 MARGIN)^3``: the probe's pairs are their centre crops."""
    cube = (size + 2 * MARGIN,) * 3
    out = []
    for s in range(subjects):
        image, _ = make_cardiac_subject(s, (48, 48, 48))
        out.append(torch.from_numpy(resize_array(normalise(image), cube)).float()[None, None])
    return out


def probe(head: str, volumes, args) -> list[dict]:
    """Train one fresh network with ``head``; the evaluation rows every 50 steps."""
    torch.manual_seed(args.seed)
    model = GVSL(widths=DEMO_WIDTHS, affine_head=head)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed + 1)
    rows, t0 = [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % 50 == 0:
            r = evaluate(model.eval(), volumes, args.shift, args.rotate, seed=10_000)
            model.train()
            rows.append({"step": step, **r, "seconds": time.perf_counter() - t0})
            print(
                f"{head:>9} {step:>5} {r['ncc']:>10.3f} {r['error']:>8.2f} {r['identity']:>9.2f}"
                f"   {time.perf_counter() - t0:.0f}",
                flush=True,
            )
        if step == args.steps:
            break
        m, f, _ = make_pair(volumes, args.shift, args.rotate, g)
        loss = local_ncc(model(m, f, restore=False, deformable=False).warped, f)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--shift", type=float, default=4.0, help="largest shift per axis, voxels")
    ap.add_argument("--rotate", type=float, default=10.0, help="largest rotation about each axis, degrees")
    ap.add_argument("--subjects", type=int, default=6)
    ap.add_argument("--heads", nargs="*", default=["keypoints", "paper"], choices=["keypoints", "paper"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--direct",
        action="store_true",
        help="also print the floor: each evaluation pair's affine optimised directly on the same loss",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    volumes = load_volumes(args.subjects, args.size)
    print(f"{'head':>9} {'step':>5} {'NCC after':>10} {'error':>8} {'identity':>9}   seconds  (errors in voxels)")
    final = {head: probe(head, volumes, args)[-1] for head in args.heads}
    print("\nfinal:", ", ".join(f"{h} error {r['error']:.2f} (identity {r['identity']:.2f})" for h, r in final.items()))
    if args.direct:
        r = direct_floor(volumes, args.shift, args.rotate, seed=10_000)
        print(
            f"direct optimisation of each pair's affine (the loss's floor): error {r['error']:.2f}, NCC {r['ncc']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

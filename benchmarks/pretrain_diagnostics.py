"""What a pre-trained GVSL model's matching heads actually do, and where their gradients go.

Usage:
  python benchmarks/pretrain_diagnostics.py CKPT [CKPT ...] [--pairs 8] [--size 32] [--seed-base 5000]

For each checkpoint (``gvsl pretrain`` runs; the study's are under
``runs/paper_table/BUDGET/seedS/pretrain/VARIANT/checkpoints/last.pt``) on ``--pairs``
synthetic cardiac pairs that no pre-training saw (subject seeds ``--seed-base`` + 2i and
+ 2i + 1, clean scans at ``--size``^3):

* local NCC of the pair without warping, after the affine part only, and after the whole
  map (higher is better here: the correlation, not the loss);
* how far the predicted affine is from the identity (mean |A - I| of the 3x3 part and mean
  |translation| in voxels);
* the gradient norm of the matching loss (NCC + smoothness, as in pre-training) per part of
  the network: affine head, deformable head, backbone encoder and decoder.

This is the "investigate the affine head's gradients" step of issue 7; it prints numbers
and changes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np  # noqa: E402
import torch  # noqa: E402


def pairs(n: int, size: int, seed_base: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from gvsl_app.data.preprocess import normalise, resize_array
    from gvsl_app.data.synthetic import make_cardiac_subject

    out = []
    for i in range(n):
        vols = [make_cardiac_subject(seed_base + 2 * i + k, (size,) * 3)[0] for k in (0, 1)]
        m, f = (torch.from_numpy(resize_array(normalise(v), (size,) * 3))[None, None] for v in vols)
        out.append((m, f))
    return out


def grad_norms(model, m: torch.Tensor, f: torch.Tensor) -> dict[str, float]:
    from models import local_ncc, smoothness

    model.zero_grad(set_to_none=True)
    out = model(m, f, restore=False)
    (local_ncc(out.warped, f) + smoothness(out.displacement)).backward()
    groups = {
        "affine head": "affine_head.",
        "deformable head": "deformable_head.",
        "encoder": ("unet.inc.", "unet.down"),
        "decoder": "unet.up",
    }
    norms = {}
    for name, prefix in groups.items():
        sq = sum(
            float(p.grad.pow(2).sum())
            for n, p in model.named_parameters()
            if n.startswith(prefix) and p.grad is not None
        )
        norms[name] = sq**0.5
    return norms


def diagnose(path: str, data, device: torch.device) -> dict[str, float]:
    from gvsl_app.services.weights import load_gvsl
    from models import local_ncc
    from models.spatial import sampling_coordinates, warp

    model, _ = load_gvsl(path, device)
    rows = []
    for m, f in data:
        m, f = m.to(device), f.to(device)
        with torch.no_grad():
            out = model(m, f, restore=False)
            affine_only = warp(m, sampling_coordinates(tuple(f.shape[2:]), affine=out.affine))
            a = out.affine[0]
            row = {
                "ncc_identity": -float(local_ncc(m, f)),
                "ncc_affine": -float(local_ncc(affine_only, f)),
                "ncc_full": -float(local_ncc(out.warped, f)),
                "affine_dev": float((a[:, :3] - torch.eye(3, device=device)).abs().mean()),
                "translation_vox": float(a[:, 3].abs().mean()),
            }
        model.train()
        row.update({f"grad {k}": v for k, v in grad_norms(model, m, f).items()})
        model.eval()
        rows.append(row)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed-base", type=int, default=5000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    from models import resolve_device

    torch.manual_seed(0)
    dev = resolve_device(args.device)
    data = pairs(args.pairs, args.size, args.seed_base)
    results = {p: diagnose(p, data, dev) for p in args.checkpoints}
    keys = list(next(iter(results.values())))
    width = max(len(k) for k in keys)
    print(f"{args.pairs} pairs at {args.size}^3, subject seeds from {args.seed_base}")
    print(
        " " * width + "".join(f" | {os.path.basename(os.path.dirname(os.path.dirname(p)))[:12]:>12}" for p in results)
    )
    for k in keys:
        print(f"{k:<{width}}" + "".join(f" | {r[k]:12.4g}" for r in results.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

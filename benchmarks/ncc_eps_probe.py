"""How much the NCC loss's ``eps`` damps the similarity: a scan against itself, at intensity scales.

Usage::

    python benchmarks/ncc_eps_probe.py [--size 64] [--subjects 4]

``models.losses.local_ncc`` divides the squared local covariance by ``var_a * var_b + eps`` with
window *means*; VoxelMorph and the authors' code put the same ``eps = 1e-5`` on window *sums*
(729 times the means for a 9^3 window, so their damping is 729^2 times weaker). A scan against
itself should score -1; this prints what it scores, at the project's intensity scale (1, [0, 1]
after normalisation) and at lower contrast, for the single-scale and the multi-scale loss, with
``eps`` as it is and as it would be on sums (``eps / 729^2``).
"""

from __future__ import annotations

import argparse

from gvsl_app.data.datasets import PairDataset
from models.losses import local_ncc, multiscale_ncc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--subjects", type=int, default=4)
    args = ap.parse_args(argv)
    for kind in ("cardiac", "brain"):
        vols = PairDataset(f"synthetic:{kind}", args.size, n_synthetic=args.subjects).volumes
        print(f"synthetic {kind}, {args.subjects} subjects at {args.size}^3, scan against itself (ideal -1):")
        print("  scale | local eps 1e-5 | local eps on sums | multi-scale eps 1e-5 | multi-scale eps on sums")
        for scale in (1.0, 0.3, 0.1):
            rows = []
            for eps in (1e-5, 1e-5 / 729**2):
                x = vols * scale
                rows.append((float(local_ncc(x, x, eps=eps)), float(multiscale_ncc(x, x, eps=eps))))
            (l1, m1), (l2, m2) = rows
            print(f"  {scale:5.1f} | {l1:14.3f} | {l2:17.3f} | {m1:20.3f} | {m2:23.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

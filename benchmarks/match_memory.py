"""Peak memory of ``gvsl match`` on a large pair: does a 256^3 pair fit a 24 GB machine?

Usage:
  python benchmarks/match_memory.py [--side 256] [--shape Z Y X --spacing SX SY SZ] [--no-refine] [--size 48]
                                   [--device auto|cpu|cuda|cuda:N]

``--shape 300 512 512 --spacing 0.7 0.7 1.25`` is a clinical thorax CT (the phantom drawn at
that grid and spacing: a 358 x 358 x 375 mm field of view).

Writes a synthetic cardiac pair (subject seeds 3000 and 3001, ``--side``^3 voxels) as NIfTI
into a temporary folder, then runs the real command ``gvsl match FIXED MOVING --out OUT``
(the demo weights, refinement on unless ``--no-refine``) in a child process and prints its
peak resident memory (``ru_maxrss`` of the child: the whole command, reading and writing
included) and wall time, and the report's seconds per stage and per refinement level. On a
CUDA device (``--device``, default ``auto``) it also prints the child's
``torch.cuda.max_memory_allocated()`` (peak stats reset before the command runs): the
tensors' peak on the GPU, which the resident memory does not count.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gvsl_app.data.synthetic import make_cardiac_subject
from gvsl_app.io.images import write_volume

CHILD = """\
import json, sys
import torch
from gvsl_app.cli import main
from models import resolve_device
peak_file, device, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
cuda = resolve_device(device).type == 'cuda'
if cuda:
    torch.cuda.reset_peak_memory_stats()
rc = main(argv)
if rc:
    sys.exit(rc)
peak = torch.cuda.max_memory_allocated() if cuda else None
with open(peak_file, 'w') as fh:
    json.dump({'cuda_max_memory_allocated': peak}, fh)
"""
"""The child process: ``gvsl match`` (``gvsl_app.cli.main``, as ``python -m gvsl_app.cli`` runs it)
with the CUDA peak-memory counter reset before and read after."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="array shape (instead of --side)")
    ap.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"), help="voxel spacing in mm")
    ap.add_argument("--size", type=int, default=48, help="network working cube")
    ap.add_argument("--no-refine", action="store_true")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (passed to gvsl match)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, seed in (("fixed", 3000), ("moving", 3001)):
            image, _ = make_cardiac_subject(seed, tuple(args.shape or (args.side,) * 3), spacing=args.spacing)
            write_volume(image, folder / f"{name}.nii.gz")
        peak_file = folder / "cuda_peak.json"
        cmd = [sys.executable, "-c", CHILD, str(peak_file), args.device, "match", str(folder / "fixed.nii.gz")]
        cmd += [str(folder / "moving.nii.gz"), "--out", str(folder / "out"), "--size", str(args.size)]
        cmd += ["--device", args.device] + (["--no-refine"] if args.no_refine else [])
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # Linux: kB
        report = json.loads((folder / "out" / "report.json").read_text())
        cuda_peak = json.loads(peak_file.read_text())["cuda_max_memory_allocated"]
    grid = "x".join(map(str, args.shape)) if args.shape else f"{args.side}^3"
    print(f"gvsl match, {grid} pair, working size {args.size}, refine {not args.no_refine}")
    print(f"  device: {report['device']}")
    print(f"  peak resident memory of the command: {peak_gb:.2f} GB; wall time {wall:.1f} s")
    if cuda_peak is not None:
        print(f"  peak CUDA memory allocated (torch.cuda.max_memory_allocated): {cuda_peak / 1024**3:.2f} GB")
    print("  seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in report["seconds"].items()))
    for lv in (report.get("refined") or {}).get("levels", []):
        shape = "x".join(map(str, lv["shape"]))
        print(f"  refine {lv['stage']:<10} {shape:>10}: {lv['steps']:>3}/{lv['planned']} steps, {lv['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

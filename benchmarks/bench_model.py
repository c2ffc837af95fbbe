"""Training-step and pair-forward time and peak memory of the GVSL network.

Usage: python benchmarks/bench_model.py [--sizes 64 96] [--bases 8 32] [--device auto] [--repeats 3]

Each configuration runs in its own subprocess so that peak memory (CPU: max RSS; CUDA:
max allocated) belongs to it alone. Like the ``gvsl`` commands, each subprocess tunes the
C allocator first (``gvsl_app.allocator``); ``GVSL_TUNE_MALLOC=0`` measures without it.
It prints our own times only: a ratio against the authors' code means little unless both
run side by side in one session on one machine (docs/results/benchmarks.md says what such a run
measured), so no constant from another day is divided by these numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def run_one(base: int, size: int, device: str, repeats: int) -> dict:
    import resource

    import torch

    from gvsl_app.allocator import tune_cpu_allocator
    from models import GVSL, local_ncc, resolve_device, restoration_mse, smoothness, widths_from_base
    from models.device import autocast

    tuned = tune_cpu_allocator()
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = GVSL(widths=widths_from_base(base)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    a = torch.rand(1, 1, size, size, size, device=dev)
    b = torch.rand(1, 1, size, size, size, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        with autocast(dev):
            out = model(a, b)
        loss = local_ncc(out.warped, b) + smoothness(out.displacement) + restoration_mse(out.restored, a)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward():
        with torch.no_grad(), autocast(dev):
            model(a, b, restore=False)

    res = {"base": base, "size": size, "device": str(dev), "threads": torch.get_num_threads(), "malloc_tuned": tuned}
    for name, fn in (("train_step_s", step), ("pair_forward_s", forward)):
        fn()  # warm-up
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        res[name] = min(times)
    if dev.type == "cuda":
        res["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        res["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    ap.add_argument("--bases", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.device, args.repeats)))
        return
    print(f"{'width':>5} {'size':>5} {'device':>6} {'step s':>8} {'fwd s':>8} {'peak MB':>9} {'malloc':>6}")
    for base in args.bases:
        for size in args.sizes:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    str(base),
                    str(size),
                    "--device",
                    args.device,
                    "--repeats",
                    str(args.repeats),
                ],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                print(f"{base:>5} {size:>5} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{base:>5} {size:>5} {r['device']:>6} {r['train_step_s']:8.3f} {r['pair_forward_s']:8.3f} "
                f"{r['peak_mem_mb']:9.0f} {'tuned' if r['malloc_tuned'] else 'plain':>6}",
                flush=True,
            )


if __name__ == "__main__":
    main()

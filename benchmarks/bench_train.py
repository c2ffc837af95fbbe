"""Pre-training throughput and where the time goes (data wait vs compute).

Usage:
  python benchmarks/bench_train.py [--iters 8] [--warmup 2] [--size 64] [--width 8]
                                   [--workers 0 2] [--cuda-size 128] [--cuda-width 32]
                                   [--cuda-workers 4] [--cuda-iters 30] [--compile] [--json OUT] [--quick]

Runs the real pre-training generator (``gvsl_app.training.pretrain.pretrain``: the ``synthetic:cardiac``
PairDataset with its spatial + appearance augmentation in DataLoader workers, the GVSL
objective, Adam) in a temporary run folder and reads its per-step metrics: ``sec_per_step``
(wall time of a step, data included) and ``data_wait_s`` (time the loop waited for the
next batch and its transfer to the device). Compute = sec_per_step - data_wait_s. The
first ``--warmup`` steps (worker start-up, allocator warm-up) are left out of the means.

* CPU: width ``--width`` (8) at ``--size``^3 (64), each ``--workers`` value (0 = augmentation on
  the training thread, 2 = two worker processes). Target (issue #4): data wait < 10 % of the
  step time.
* CUDA (only when ``torch.cuda.is_available()``): the paper's width (32) at 128^3, bf16
  autocast, ``--cuda-workers`` workers. Target: at least 2x the official code's throughput at the
  same configuration. Skipped otherwise, saying why.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch  # noqa: E402


def run_config(
    *,
    device: str,
    size: int,
    width: int,
    workers: int,
    iters: int,
    warmup: int,
    batch: int = 1,
    n_synthetic: int = 6,
    compile: bool = False,
) -> dict:
    from gvsl_app.training.config import PretrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        cfg = PretrainConfig(
            data="synthetic:cardiac",
            run=os.path.join(tmp, "run"),
            iters=iters,
            size=size,
            width=width,
            batch=batch,
            device=device,
            workers=workers,
            n_synthetic=n_synthetic,
            log_every=1,
            ckpt_every=10**9,
            val_every=10**9,
            compile=compile,
            seed=0,
        )
        setup_s, steps, message, wall = _time_pretrain(cfg)
        with open(os.path.join(tmp, "run", "report.json")) as fh:
            dev = json.load(fh).get("device", device)
    kept = [s for s in steps if s[0] > warmup] or steps
    sps = statistics.mean(s[1] for s in kept)
    wait = statistics.mean(s[2] for s in kept)
    return {
        "device": dev,
        "size": size,
        "width": width,
        "batch": batch,
        "workers": workers,
        "iters": iters,
        "steps_measured": len(kept),
        "sec_per_step": sps,
        "steps_per_s": 1.0 / sps,
        "data_wait_s": wait,
        "compute_s": sps - wait,
        "data_wait_fraction": wait / sps,
        "setup_s": setup_s,
        "wall_s": wall,
        "sec_per_step_median": statistics.median(s[1] for s in kept),
        "message": message,
    }


def _time_pretrain(cfg) -> tuple[float | None, list[tuple[int, float, float]], str, float]:
    """Run ``cfg``: seconds to the first report (setup), (iteration, s/step, data wait) per step, message, wall."""
    from gvsl_app.training.pretrain import pretrain
    from gvsl_app.training.progress import StopFlag

    t0 = time.perf_counter()
    setup_s, steps, message = None, [], ""
    for p in pretrain(cfg, StopFlag()):
        if setup_s is None:
            setup_s = time.perf_counter() - t0  # model, dataset (subjects generated), loader
            message = p.message
        if p.phase == "error":
            raise RuntimeError(p.message)
        if p.phase == "train" and p.losses:
            steps.append((p.iteration, p.sec_per_step, p.data_wait_s))
    return setup_s, steps, message, time.perf_counter() - t0


def show(r: dict) -> None:
    print(
        f"  {r['device']:<6} width {r['width']:>2} {r['size']}^3 batch {r['batch']} workers {r['workers']}: "
        f"{r['sec_per_step']:.3f} s/step ({r['steps_per_s']:.2f} steps/s; median {r['sec_per_step_median']:.3f}) = "
        f"compute {r['compute_s']:.3f} + data wait {r['data_wait_s']:.3f} s ({100 * r['data_wait_fraction']:.1f} %); "
        f"setup {r['setup_s']:.1f} s, {r['steps_measured']} steps measured",
        flush=True,
    )


def _parse_args(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the means")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--n-synthetic", type=int, default=6, help="subjects generated for the dataset")
    ap.add_argument("--cuda-size", type=int, default=128)
    ap.add_argument("--cuda-width", type=int, default=32)
    ap.add_argument("--cuda-workers", type=int, default=4)
    ap.add_argument("--cuda-iters", type=int, default=30)
    ap.add_argument("--cuda-batch", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="CUDA: torch.compile the objective")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 iterations at 32^3, 1 warm-up step")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.iters, args.warmup, args.size, args.cuda_iters = 3, 1, 32, 6
    return args


def main(argv=None) -> int:
    args = _parse_args(argv)
    from gvsl_app.allocator import tune_cpu_allocator

    tuned = tune_cpu_allocator()  # as `gvsl pretrain` does; GVSL_TUNE_MALLOC=0 measures without
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, allocator tuned: {tuned}",
        flush=True,
    )
    results: dict = {"cpu": [], "cuda": None, "malloc_tuned": tuned}
    if not args.skip_cpu:
        results["cpu"] = _cpu_runs(args)
    if torch.cuda.is_available():
        results["cuda"] = _cuda_run(args)
    else:
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        print(f"\nCUDA: skipped ({why}: torch.cuda.is_available() is False)")
        results["cuda_skipped"] = why
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


def _cpu_runs(args: argparse.Namespace) -> list[dict]:
    """One CPU run per worker count, each shown; then whether any met the data-wait target."""
    print(f"\nCPU: width {args.width} at {args.size}^3, {args.iters} steps ({args.warmup} warm-up)", flush=True)
    runs = []
    for w in args.workers:
        r = run_config(
            device="cpu",
            size=args.size,
            width=args.width,
            workers=w,
            iters=args.iters,
            warmup=args.warmup,
            n_synthetic=args.n_synthetic,
        )
        runs.append(r)
        show(r)
    ok = [r for r in runs if r["data_wait_fraction"] < 0.10]
    print(
        f"  target data wait < 10 %: {'met with workers ' + ', '.join(str(r['workers']) for r in ok) if ok else 'NOT met'}"
    )
    return runs


def _cuda_run(args: argparse.Namespace) -> dict:
    """The CUDA run (bf16 autocast, the --cuda-* settings), shown."""
    name = torch.cuda.get_device_name(0)
    print(
        f"\nCUDA ({name}): width {args.cuda_width} at {args.cuda_size}^3, bf16 autocast, "
        f"{args.cuda_workers} workers, {args.cuda_iters} steps",
        flush=True,
    )
    r = run_config(
        device="cuda",
        size=args.cuda_size,
        width=args.cuda_width,
        workers=args.cuda_workers,
        iters=args.cuda_iters,
        warmup=max(args.warmup, 5),
        batch=args.cuda_batch,
        n_synthetic=args.n_synthetic,
        compile=args.compile,
    )
    r["gpu"] = name
    show(r)
    return r


if __name__ == "__main__":
    sys.exit(main())

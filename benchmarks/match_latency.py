"""Latency part of ``bench_match.py``: read -> match -> written, first match of a process and warm.

A ``--latency-shape``^3 pair on disk is matched end to end (read both NIfTI files, match,
write every output); the cold runs start a fresh process per repeat (``bench_match.py
--cold-match``), the warm ones reuse one loaded network. ``bench_match.py`` documents the
targets.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from match_models import load_model

BENCH_MATCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_match.py")


def time_one_match(folder: Path, out: Path, model, size: int, device: str) -> dict:
    """Read both volumes of ``folder``, match, write into ``out``: seconds per stage."""
    from gvsl_app.io.images import read_volume
    from gvsl_app.services.matching import match

    t0 = time.perf_counter()
    fixed, moving = read_volume(folder / "fixed.nii.gz"), read_volume(folder / "moving.nii.gz")
    t1 = time.perf_counter()
    r = match(fixed, moving, model=model, size=size, device=device, refine=False, init="none")
    t2 = time.perf_counter()
    r.save(out)
    t3 = time.perf_counter()
    return {
        "total_s": t3 - t0,
        "read_s": t1 - t0,
        "match_s": t2 - t1,
        "write_s": t3 - t2,
        **{k: v for k, v in r.report.seconds.items() if k != "total_s"},
        "device": r.report.device,
    }


def _print_run(label: str, run: dict) -> None:
    print(
        f"  {label}: total {run['total_s']:.2f} s = read {run['read_s']:.2f} + match {run['match_s']:.2f} "
        f"(preprocess {run['preprocess_s']:.2f}, network {run['network_s']:.3f}, upsample "
        f"{run['upsample_s']:.2f}, warp {run['warp_s']:.2f}) + write {run['write_s']:.2f}",
        flush=True,
    )


def _cold_match(folder: str, size: int, device: str, weights: str | None) -> int:
    """Child process of the latency benchmark: one timed match, JSON on stdout."""
    from gvsl_app.allocator import tune_cpu_allocator

    tune_cpu_allocator()
    model, _ = load_model(weights, device)
    folder_p = Path(folder)
    print(json.dumps(time_one_match(folder_p, folder_p / "cold-out", model, size, device)))
    return 0


def _network_gpu_ms(model, size: int, repeats: int = 20) -> float | None:
    """Median milliseconds of the network alone on CUDA (synchronised), or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    from models import resolve_device
    from models.device import autocast

    dev = resolve_device("cuda")
    net = model.to(dev).eval()
    m, f = torch.rand(1, 1, size, size, size, device=dev), torch.rand(1, 1, size, size, size, device=dev)
    times = []
    with torch.no_grad(), autocast(dev):
        for k in range(repeats + 3):
            torch.cuda.synchronize()
            t = time.perf_counter()
            net(m, f, restore=False)
            torch.cuda.synchronize()
            if k >= 3:
                times.append((time.perf_counter() - t) * 1000)
    model.cpu()
    return statistics.median(times)


def run_latency(args, model, weights_load_s: float) -> dict:
    from gvsl_app.data.synthetic import make_cardiac_subject
    from gvsl_app.io.images import write_volume

    n, size = args.latency_shape, args.latency_size
    res = {"grid": n, "working_size": size, "weights_load_s": weights_load_s, "runs": [], "cold_runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, seed in (("fixed", args.seed_base + 900), ("moving", args.seed_base + 901)):
            image, _ = make_cardiac_subject(seed, (n, n, n))
            write_volume(image, tmp / f"{name}.nii.gz")
        res["cold_runs"] = _cold_runs(args, tmp, size)
        for k in range(args.repeats):
            run = time_one_match(tmp, tmp / f"out{k}", model, size, args.device)
            res["runs"].append(run)
            _print_run(f"warm run {k}", run)
        if args.cli and args.weights != "random":
            res["cli_s"] = _time_cli(args, tmp, size)
    _summarise_latency(res, model, n, size, weights_load_s)
    return res


def _cold_runs(args, tmp: Path, size: int) -> list[dict]:
    """``--repeats`` first matches, each in a fresh process (this script's ``--cold-match`` child)."""
    cold_cmd = [
        sys.executable,
        BENCH_MATCH,
        "--cold-match",
        str(tmp),
        "--latency-size",
        str(size),
        "--device",
        args.device,
    ] + (["--weights", args.weights] if args.weights else [])
    runs = []
    for k in range(args.repeats):
        p = subprocess.run(cold_cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"cold match failed: {p.stderr.strip()}")
        run = json.loads(p.stdout.strip().splitlines()[-1])
        runs.append(run)
        _print_run(f"first match of process {k}", run)
    return runs


def _time_cli(args, tmp: Path, size: int) -> float:
    """Seconds of the whole ``gvsl match`` command on the latency pair (process start included)."""
    cmd = [
        sys.executable,
        "-m",
        "gvsl_app.cli",
        "match",
        str(tmp / "fixed.nii.gz"),
        str(tmp / "moving.nii.gz"),
        "--out",
        str(tmp / "cli"),
        "--size",
        str(size),
        "--device",
        args.device,
        "--no-refine",
    ]  # the latency section times the network's map, as before refining became the default
    if args.weights:
        cmd += ["--weights", args.weights]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    cli_s = time.perf_counter() - t0
    print(
        f"  `gvsl match` command (process start, imports, weights): {cli_s:.2f} s"
        + ("" if p.returncode == 0 else f" FAILED: {p.stderr.strip()}"),
        flush=True,
    )
    return cli_s


def _summarise_latency(res: dict, model, n: int, size: int, weights_load_s: float) -> None:
    """Add the medians (and the GPU network time) to ``res`` and print them against the targets."""
    totals = [r["total_s"] for r in res["runs"]]
    res["median_total_s"] = statistics.median(totals)
    res["min_total_s"] = min(totals)
    res["median_network_s"] = statistics.median(r["network_s"] for r in res["runs"])
    res["median_cold_total_s"] = statistics.median(r["total_s"] for r in res["cold_runs"])
    res["gpu_network_ms"] = _network_gpu_ms(model, size)
    ok = max(res["median_total_s"], res["median_cold_total_s"]) < 2
    print(
        f"latency {n}^3 at {size}^3: first match of a process median {res['median_cold_total_s']:.2f} s; "
        f"warm median {res['median_total_s']:.2f} s (min {res['min_total_s']:.2f}), network median "
        f"{res['median_network_s']:.3f} s, weights load {weights_load_s:.2f} s once; "
        f"target < 2 s on CPU: {'yes' if ok else 'NO'}"
    )
    if res["gpu_network_ms"] is not None:
        print(
            f"network on {torch.cuda.get_device_name()}: median {res['gpu_network_ms']:.1f} ms "
            f"(target < 50 ms: {'yes' if res['gpu_network_ms'] < 50 else 'NO'})"
        )
    else:
        print("no CUDA device here: the GPU network target is not measured")

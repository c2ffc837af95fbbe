"""Cost of the GVSL augmentation and whether the training loop ever waits for it.

Prints, per working-cube size:

1. per-sample cost (ms) of the full augmentation of a pre-training pair (one affine +
   elastic draw warping both scans, then the Models Genesis appearance transform of the
   moving scan) on CPU with one thread (what a DataLoader worker uses), with the share of
   each part, and on CUDA (batch 1 and batch 8 per sample) when available;
2. same-machine baselines written from the official pipeline's description (not its code):
   a Bezier intensity curve sampled 100,000 times (Bernstein polynomials) applied with
   ``np.interp`` (the findings report about 0.3 s per 128^3 sample for it alone), and that
   plus 10,000 local-shuffle blocks in a Python loop and in-painting, all serial;
3. DataLoader throughput with 2 workers (``step_loader``) and the time the training loop's
   main thread waits per sample while it simulates a training step, i.e. the augmentation
   cost that remains on the critical path; the ratio official / ours is printed.

Run:  .venv/bin/python benchmarks/bench_augment.py [--sizes 64 128] [--repeats 5] [--step-ms 250]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from gvsl_app.data.augment import AppearanceTransform, GVSLPairAugment, SpatialAugment, make_generator  # noqa: E402
from gvsl_app.data.datasets import PairDataset, step_loader  # noqa: E402


def smooth_volumes(n: int, size: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        c = torch.rand(1, 1, 6, 6, 6, generator=g)
        out.append(
            torch.nn.functional.interpolate(c, size=(size,) * 3, mode="trilinear", align_corners=True)[0, 0].numpy()
        )
    return out


def timed(fn, repeats: int, sync=None) -> float:
    fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def official_style_bezier(x: np.ndarray, rng: np.random.Generator, n_times: int = 100_000) -> np.ndarray:
    """Baseline from the description of the official pipeline (not its code): a cubic Bezier
    through (0,0), two random points and (1,1), sampled n_times via Bernstein polynomials,
    applied voxel-wise with np.interp.
    """
    from scipy.special import comb

    pts = np.array([[0.0, 0.0], rng.random(2), rng.random(2), [1.0, 1.0]])
    t = np.linspace(0.0, 1.0, n_times)
    bern = np.array([comb(3, i) * t**i * (1 - t) ** (3 - i) for i in range(4)])
    xs, ys = pts[:, 0] @ bern, pts[:, 1] @ bern
    order = np.argsort(xs)
    return np.interp(x, xs[order], np.sort(ys))


def official_style_shuffle(x: np.ndarray, rng: np.random.Generator, n_blocks: int = 10_000) -> np.ndarray:
    """Baseline from the description: 10,000 blocks (edges 1..n//10) shuffled one at a time
    in a Python loop on the main thread.
    """
    out = x.copy()
    shape = x.shape
    for _ in range(n_blocks):
        b = [int(rng.integers(1, max(2, n // 10))) for n in shape]
        o = [int(rng.integers(0, n - e + 1)) for n, e in zip(shape, b)]
        sl = tuple(slice(oo, oo + e) for oo, e in zip(o, b))
        block = out[sl].reshape(-1)
        out[sl] = rng.permutation(block).reshape(b)
    return out


def official_style_inpaint(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = x.copy()
    for _ in range(5):
        if rng.random() >= 0.95:
            break
        b = [int(rng.integers(n // 6, n // 3)) for n in x.shape]
        o = [int(rng.integers(3, n - e - 3)) for n, e in zip(x.shape, b)]
        out[tuple(slice(oo, oo + e) for oo, e in zip(o, b))] = rng.random(b)
    return out


def official_style_appearance(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return official_style_inpaint(official_style_bezier(official_style_shuffle(x, rng), rng), rng)


def cpu_costs(size: int, repeats: int) -> dict[str, float]:
    torch.set_num_threads(1)
    x = torch.from_numpy(np.stack(smooth_volumes(2, size)))[:, None]
    moving, fixed = x[:1], x[1:]
    g = make_generator(0)
    spatial, appearance = SpatialAugment(), AppearanceTransform()
    full = GVSLPairAugment(spatial, appearance)
    always = AppearanceTransform(1.0, 1.0, 1.0)
    res = {
        "full pair augmentation": timed(lambda: full(moving, fixed, g), repeats),
        "  spatial (coords + warp of both scans)": timed(
            lambda: spatial.apply(torch.cat([moving, fixed], 1), spatial.coordinates((size,) * 3, 1, g)), repeats
        ),
        "  appearance (Genesis probabilities)": timed(lambda: appearance(moving, g), repeats),
        "  appearance (every transform applied)": timed(lambda: always(moving, g), repeats),
    }
    rng = np.random.default_rng(0)
    arr = moving[0, 0].numpy()
    res["baseline: official-style Bezier alone (numpy)"] = timed(
        lambda: official_style_bezier(arr, rng), max(2, repeats // 2)
    )
    res["baseline: official-style shuffle+Bezier+inpaint"] = timed(lambda: official_style_appearance(arr, rng), 2)
    return res


def cuda_costs(size: int, repeats: int) -> dict[str, float]:
    dev = torch.device("cuda")
    out = {}
    for batch in (1, 8):
        x = torch.rand(2 * batch, 1, size, size, size, device=dev)
        moving, fixed = x[:batch], x[batch:]
        g = make_generator(0, dev)
        full = GVSLPairAugment.default()
        out[f"full pair augmentation, batch {batch} (per sample)"] = (
            timed(lambda: full(moving, fixed, g), repeats, sync=torch.cuda.synchronize) / batch
        )
    return out


def loader_wait(size: int, step_s: float, n_batches: int, workers: int = 2) -> dict[str, float]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ds = PairDataset(smooth_volumes(8, size), size, length=10_000, seed=0, modality=None)
    loader = step_loader(ds, start=0, count=10_000, batch=1, workers=workers)  # what training uses
    it = iter(loader)
    next(it)  # workers started and warm
    # raw throughput: consume as fast as possible
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    raw = n_batches / (time.perf_counter() - t0)
    # simulated training: a step of step_s that does not use the CPU (as a GPU step),
    # measure how long next() blocks the loop
    for _ in range(2 * workers):
        time.sleep(step_s)
        next(it)
    waits = []
    for _ in range(n_batches):
        time.sleep(step_s)
        t0 = time.perf_counter()
        next(it)
        waits.append(time.perf_counter() - t0)
    del it, loader
    return {"raw samples/s": raw, "main-thread wait per sample (s)": statistics.mean(waits), "max wait (s)": max(waits)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--step-ms",
        type=float,
        default=250.0,
        help="simulated training step per sample (default 250 ms; a width-8 pair forward alone takes "
        "0.4 s at 64^3 on this project's 2-core CPU)",
    )
    p.add_argument("--batches", type=int, default=12)
    args = p.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, CPU threads {threads}, CUDA {torch.cuda.is_available()}")
    for size in args.sizes:
        print(f"\n=== {size}^3 ===")
        costs = cpu_costs(size, args.repeats)
        for k, v in costs.items():
            print(f"CPU 1 thread  {k:48s} {v * 1e3:9.1f} ms/sample")
        ours = costs["full pair augmentation"]
        torch.set_num_threads(threads)
        if torch.cuda.is_available():
            for k, v in cuda_costs(size, args.repeats).items():
                print(f"CUDA          {k:48s} {v * 1e3:9.2f} ms/sample")
        lw = loader_wait(size, args.step_ms / 1e3, args.batches)
        wait = lw["main-thread wait per sample (s)"]
        print(
            f"DataLoader, 2 workers: {lw['raw samples/s']:.1f} samples/s raw; with a {args.step_ms:.0f} ms step "
            f"the loop waits {wait * 1e3:.2f} ms/sample on average (max {lw['max wait (s)'] * 1e3:.1f} ms)"
        )
        base = costs["baseline: official-style shuffle+Bezier+inpaint"]
        print(
            f"ratio official-style appearance on the main thread ({base * 1e3:.0f} ms, measured here) / ours on the "
            f"critical path: {base / max(wait, 1e-6):,.0f}x; compute alone, 1 thread: {base / ours:.1f}x "
            f"(ours includes warping both scans)"
        )
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()

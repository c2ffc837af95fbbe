"""t-SNE speed (openTSNE) and label clustering (silhouette) of GVSL local features.

Usage:
  python benchmarks/bench_embed.py [--points 10000 20000] [--jobs 1 -1] [--weights CKPT|random]
                                   [--subject-seed 1000] [--per-label 500] [--size 48] [--quick]
  python benchmarks/bench_embed.py --skip-tsne --skip-silhouette --levels [--random-seeds 0 1 2]

Part 1 times openTSNE (the library ``gvsl embed`` uses) on N x 32 features: the local
(last decoder level) features of a *random-init* paper-width network (32 channels) at
voxels of a synthetic cardiac subject, i.e. realistic but un-trained features. Each
``--jobs`` value is openTSNE's ``n_jobs``. ``--sklearn`` adds scikit-learn's Barnes-Hut
t-SNE on the smallest N for comparison (issue #5 quotes 29 s openTSNE vs 95 s scikit-learn
for 20k x 32 on the project's 2 cores).

Part 3 (``--levels``) scores every feature level of ``gvsl embed --level`` (decoder-1 ... decoder-4,
hypercolumn) on the app's cardiac sample pair (``gvsl_app.data.samples.sample_pair``, 96^3, the
fixed and the moving subject), with the widget's settings (500 voxels per label, working size
96, seed 0): the silhouette of the raw features and the 5-NN accuracy, for the demo weights (or
``--weights``) and random width-8 networks (``--random-seeds``; seed 0 is the widget's "random
init"). It prints one table per subject and the levels where the weights are positive and
above every random network (docs/results/feature_levels.md).

Part 2 runs ``gvsl_app.services.embed.embed`` on a held-out cardiac subject (seed 1000 by default;
the demo weights were trained on ``synthetic:cardiac`` seed 0, i.e. subject seeds 0..N-1)
with a random-init width-8 GVSL and with the demo weights (or ``--weights``), and reports
the silhouette score of the 7 anatomical labels in feature space and in the 2D map.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np  # noqa: E402
import torch  # noqa: E402


def network_features(n_points: int, seed: int, size: int) -> np.ndarray:
    """``(n_points, 32)`` local features of a random-init paper-width U-Net on a cardiac subject."""
    from gvsl_app.data.preprocess import normalise, resize_array
    from gvsl_app.data.synthetic import make_cardiac_subject
    from models import PAPER_WIDTHS, UNet3D

    torch.manual_seed(seed)
    unet = UNet3D(PAPER_WIDTHS).eval()
    image, _ = make_cardiac_subject(seed, (size,) * 3)
    x = torch.from_numpy(resize_array(normalise(image), (size,) * 3))[None, None]
    with torch.no_grad():
        _, local = unet(x)
    f = local[0].reshape(local.shape[1], -1).T.numpy()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(f), n_points, replace=len(f) < n_points)
    return np.ascontiguousarray(f[idx], dtype=np.float64)


def time_tsne(features: np.ndarray, n_jobs: int, seed: int) -> float:
    from gvsl_app.services.embed import tsne_2d

    t0 = time.perf_counter()
    xy = tsne_2d(features, seed, n_jobs=n_jobs)
    dt = time.perf_counter() - t0
    assert xy.shape == (len(features), 2) and np.isfinite(xy).all()
    return dt


def time_sklearn(features: np.ndarray, seed: int) -> float:
    from sklearn.manifold import TSNE

    z = (features - features.mean(0)) / (features.std(0) + 1e-6)
    t0 = time.perf_counter()
    TSNE(n_components=2, perplexity=30.0, random_state=seed, init="pca").fit_transform(z)
    return time.perf_counter() - t0


def silhouettes(weights: str | None, subject_seed: int, shape: int, per_label: int, size: int, seed: int) -> list[dict]:
    from gvsl_app.data.synthetic import make_cardiac_subject
    from gvsl_app.services.embed import embed
    from gvsl_app.services.weights import DEMO_GVSL, load_gvsl
    from models import DEMO_WIDTHS, GVSL

    image, labels = make_cardiac_subject(subject_seed, (shape,) * 3)
    torch.manual_seed(0)
    candidates = [("random init (width 8)", GVSL(widths=DEMO_WIDTHS).eval())]
    if weights == "random":
        pass
    elif weights or DEMO_GVSL.is_file():
        model, info = load_gvsl(weights, "cpu")
        candidates.append((info, model))
    else:
        print(f"  demo weights not found at {DEMO_GVSL}; pass --weights CKPT to compare a trained model", flush=True)
    rows = []
    for name, model in candidates:
        res = embed(image, labels, model=model, per_label=per_label, size=size, seed=seed, device="cpu")
        r = res.report
        rows.append(
            {
                "model": name,
                "n_points": r["n_points"],
                "silhouette_features": r["silhouette_features"],
                "silhouette_2d": r["silhouette_2d"],
                **r["seconds"],
            }
        )
        print(
            f"  {name[:60]:<60} sil(features) {r['silhouette_features']:+.4f}  sil(2D) {r['silhouette_2d']:+.4f}"
            f"  ({r['n_points']} pts, features {r['seconds']['features_s']:.1f} s, t-SNE {r['seconds']['tsne_s']:.1f} s)",
            flush=True,
        )
    return rows


def sample_levels(weights: str | None, random_seeds: list[int], per_label: int, size: int, seed: int) -> list[dict]:
    """Rows (subject, network, level, feature_dim, silhouette, knn5) on the app's cardiac sample pair."""
    from gvsl_app.data.samples import sample_pair
    from gvsl_app.services.embed import level_scores, sample_voxels
    from gvsl_app.services.weights import load_gvsl
    from models import GVSL, widths_from_base

    pair = sample_pair("cardiac", (96, 96, 96))
    model, info = load_gvsl(weights, "cpu")
    nets = [("trained" if weights else "demo", model)]
    for s in random_seeds:
        torch.manual_seed(s)  # as napari_plugin._common.random_model
        nets.append((f"random{s}", GVSL(widths=widths_from_base(8))))
    print(f"  weights: {info}", flush=True)
    rows = []
    for subject in ("fixed", "moving"):
        image, labels = pair[f"{subject}_image"], pair[f"{subject}_labels"]
        lab_arr = np.asarray(labels.array)
        vox = sample_voxels(lab_arr, per_label, seed)
        lab = lab_arr[tuple(vox.T)]
        table = {}
        for name, net in nets:
            table[name] = level_scores(net, image, lab_arr, per_label, seed, size, torch.device("cpu"))
        names = [n for n, _ in nets]
        seeds = pair["seeds"][0 if subject == "fixed" else 1]
        print(f"\n  cardiac {subject} (subject seed {seeds}), {len(lab)} voxels: silhouette / 5-NN accuracy")
        print("  | level | " + " | ".join(names) + " |")
        print("  " + "|---" * (len(names) + 1) + "|")
        for level in table[names[0]]:
            cells = [f"{table[n][level]['silhouette']:+.3f} / {table[n][level]['knn5']:.3f}" for n in names]
            print(f"  | {level} | " + " | ".join(cells) + " |")
            for n in names:
                rows.append({"subject": subject, "network": n, "level": level, **table[n][level]})
        best = [
            level
            for level, sc in table[names[0]].items()
            if sc["silhouette"] > 0 and all(sc["silhouette"] > table[n][level]["silhouette"] for n in names[1:])
        ]
        print(f"  levels where {names[0]} is positive and above every random network: {', '.join(best) or 'none'}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, nargs="+", default=[10000, 20000])
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, -1], help="openTSNE n_jobs values to time")
    ap.add_argument("--sklearn", action="store_true", help="also time scikit-learn's t-SNE on the smallest N")
    ap.add_argument("--feature-size", type=int, default=64, help="cube side for the 32-dim random features")
    ap.add_argument("--weights", help="trained GVSL checkpoint for part 2 (default: demo weights); 'random' = none")
    ap.add_argument("--subject-seed", type=int, default=1000, help="held-out subject (training used seeds 0..N-1)")
    ap.add_argument("--shape", type=int, default=96, help="subject volume side")
    ap.add_argument("--per-label", type=int, default=500)
    ap.add_argument("--size", type=int, default=48, help="working cube of the features (the demo was trained at 48)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-tsne", action="store_true")
    ap.add_argument("--skip-silhouette", action="store_true")
    ap.add_argument("--levels", action="store_true", help="part 3: every feature level on the app's sample pair")
    ap.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2], help="random networks of part 3")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2k points, 60 per label, 48^3 subject")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.points, args.per_label, args.shape, args.feature_size = [2000], 60, 48, 32

    out: dict = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "tsne": [], "silhouette": []}
    print(
        f"CPU threads: torch {torch.get_num_threads()}, os.cpu_count {os.cpu_count()}; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    if not args.skip_tsne:
        print("\n1) openTSNE on N x 32 local features (random-init paper-width U-Net)", flush=True)
        feats = network_features(max(args.points), args.seed, args.feature_size)
        for n in args.points:
            for jobs in args.jobs:
                dt = time_tsne(feats[:n], jobs, args.seed)
                out["tsne"].append(
                    {"library": "openTSNE", "points": n, "dim": feats.shape[1], "n_jobs": jobs, "seconds": dt}
                )
                print(f"  openTSNE  N={n:>6}  n_jobs={jobs:>2}: {dt:7.1f} s", flush=True)
        if args.sklearn:
            n = min(args.points)
            dt = time_sklearn(feats[:n], args.seed)
            out["tsne"].append({"library": "scikit-learn", "points": n, "dim": feats.shape[1], "seconds": dt})
            print(f"  sklearn   N={n:>6}         : {dt:7.1f} s", flush=True)
    if not args.skip_silhouette:
        print(
            f"\n2) silhouette of the 7 labels, held-out subject seed {args.subject_seed} ({args.shape}^3), "
            f"{args.per_label} voxels per label, working size {args.size}",
            flush=True,
        )
        out["silhouette"] = silhouettes(
            args.weights, args.subject_seed, args.shape, args.per_label, args.size, args.seed
        )
    if args.levels:
        print(
            "\n3) every feature level on the app's cardiac sample pair (96^3), 500 voxels per label, working size 96",
            flush=True,
        )
        out["levels"] = sample_levels(args.weights, args.random_seeds, 500, 96, args.seed)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

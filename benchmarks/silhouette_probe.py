"""Why are the study's silhouettes negative? The clustering of each feature level, per method.

Usage:
  python benchmarks/silhouette_probe.py [--study runs/paper_table/medium] [--seeds 0] [--json OUT]

The paper-table study (``paper_table.py``) reports one silhouette per method: the seven
cardiac structures of its embedding subjects in the space of the last decoder level's raw
features (``study.clustering.feature_silhouette``). That number is the study's and stays as
declared. This probe asks where in the network the structures separate, on the same
subjects, voxels and checkpoints (the pre-trainings' ``last.pt`` of each seed; scratch is
the seeded random network):

* per feature level: the encoder's first level (full resolution), the bottleneck (1/16)
  and each decoder level (1/8 ... full; ``up4`` is the study's), read trilinearly at the
  sampled voxels, and ``hypercolumn``: the four decoder levels concatenated (``gvsl embed
  --level hypercolumn``);
* the silhouette of the raw features (the study's measure) and of per-channel standardised
  features (a few loud channels can hide the rest);
* the 5-nearest-neighbour accuracy of the structure (5-fold cross-validated; chance is
  1/7): whether structures are *locally* separable even where they do not form compact
  clusters, which the silhouette demands;
* baselines without a network: the image intensity alone, and intensity plus the voxel's
  position (a structure is a place in the heart).

Prints one table per seed and writes the rows to ``--json``. ``--summary FILE [FILE ...]``
runs nothing: it reads such JSON files (any seeds) and prints, per seed, each method's 5-NN
accuracy and silhouette at one level (``--level``, default the study's ``up4``) minus
scratch's, with the mean, the seeds above scratch and the paired t-test p-value.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from study.clustering import _read_pair, _scratch_gvsl
from study.plan import BUDGETS

LEVELS = ("inc", "down4", "up1", "up2", "up3", "up4")


def level_features(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of each module in :data:`LEVELS` for the input ``x`` (1, 1, D, H, W)."""
    out: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(model.unet, name).register_forward_hook(lambda _m, _i, o, name=name: out.__setitem__(name, o))
        for name in LEVELS
    ]
    try:
        with torch.no_grad():
            model.eval().features(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def scores(x: np.ndarray, lab: np.ndarray, seed: int) -> dict[str, float]:
    """Silhouette of raw and standardised features, and 5-NN accuracy (5-fold), of labels ``lab``."""
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    knn = cross_val_score(KNeighborsClassifier(5), z, lab, cv=folds).mean()
    return {
        "silhouette_raw": float(silhouette_score(x, lab)),
        "silhouette_std": float(silhouette_score(z, lab)),
        "knn5": float(knn),
    }


def probe_seed(study: Path, seed: int, methods: list[str]) -> list[dict]:
    """Rows (method, level, scores averaged over the embedding subjects) for one seed."""
    from gvsl_app.data.datasets import list_cases
    from gvsl_app.data.preprocess import normalise, resize_array
    from gvsl_app.services.embed import features_at, sample_voxels
    from gvsl_app.services.weights import load_gvsl

    budget = BUDGETS["medium"]
    embed_dir = study / "data" / "embed"
    names = list_cases(embed_dir, need_labels=True)
    subjects = [_read_pair(embed_dir, n) for n in names]
    acc: dict[tuple[str, str], list[dict]] = {}
    for method in ["(no network)"] + methods:
        if method == "scratch":
            model = _scratch_gvsl(budget, seed)
        elif method != "(no network)":
            ckpt = study / f"seed{seed}" / "pretrain" / method / "checkpoints" / "last.pt"
            if not ckpt.is_file():
                print(f"  seed {seed} {method}: no {ckpt}, skipped", flush=True)
                continue
            model = load_gvsl(str(ckpt), torch.device("cpu"))[0]
        for image, labels in subjects:
            lab_arr = np.asarray(labels.array)
            vox = sample_voxels(lab_arr, budget.per_label, seed)
            lab = lab_arr[tuple(vox.T)]
            img = normalise(image)
            cube = resize_array(img, (budget.size,) * 3)
            if method == "(no network)":
                inten = features_at(cube[None], vox, image.shape)
                pos = vox / np.asarray(image.shape, dtype=np.float64)
                feats = {"intensity": inten, "intensity+position": np.concatenate([inten, 10.0 * pos], axis=1)}
            else:
                levels = level_features(model, torch.from_numpy(cube)[None, None].float())
                feats = {k: features_at(v[0].float().numpy(), vox, image.shape) for k, v in levels.items()}
                feats["hypercolumn"] = np.concatenate([feats[k] for k in ("up1", "up2", "up3", "up4")], axis=1)
            for level, x in feats.items():
                acc.setdefault((method, level), []).append(scores(x, lab, seed))
    rows = []
    for (method, level), per in acc.items():
        row = {"seed": seed, "method": method, "level": level, "subjects": len(per)}
        for key in per[0]:
            row[key] = float(np.mean([p[key] for p in per]))
        rows.append(row)
    return rows


def summary(rows: list[dict], key: str = "knn5", level: str = "up4", ref: str = "scratch") -> list[str]:
    """A markdown table of ``key`` at ``level`` for every network minus ``ref``'s, one line per seed
    (seeds where ``ref`` was probed), then the mean ± std, on how many seeds the method is above
    ``ref`` and the two-sided paired t-test p-value (``study.paired.paired_difference``).
    """
    from study.paired import paired_difference

    at = {(r["seed"], r["method"]): r[key] for r in rows if r["level"] == level}
    seeds = sorted({s for s, m in at if m == ref})
    methods = list(dict.fromkeys(m for _, m in at if m != ref))
    lines = [f"| seed | {' | '.join(f'{m} − {ref}' for m in methods)} |", "|---" * (len(methods) + 1) + "|"]
    for s in seeds:
        cells = [f"{at[(s, m)] - at[(s, ref)]:+.3f}" if (s, m) in at else "-" for m in methods]
        lines.append(f"| {s} | {' | '.join(cells)} |")
    diffs = [
        paired_difference({s: at.get((s, m), float("nan")) for s in seeds}, {s: at[(s, ref)] for s in seeds}, seeds)
        for m in methods
    ]
    lines.append("| mean ± std | " + " | ".join(f"{d['mean']:+.3f} ± {d['std']:.3f}" for d in diffs) + " |")
    lines.append(f"| above {ref} | " + " | ".join(f"{d['wins']}/{d['n']}" for d in diffs) + " |")
    lines.append("| paired p | " + " | ".join(f"{d['p']:.3g}" for d in diffs) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="runs/paper_table/medium", help="the study's work folder (data/, seedN/)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument(
        "--methods", nargs="+", default=["scratch", "restoration", "matching", "no-affine", "gvsl", "paper-heads"]
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the rows to this JSON file")
    ap.add_argument("--summary", nargs="+", metavar="JSON", help="summarise these probe files; runs nothing")
    ap.add_argument(
        "--level", default="up4", choices=["intensity+position", *LEVELS, "hypercolumn"], help="level of --summary"
    )
    args = ap.parse_args(argv)
    if args.summary:
        rows = [r for f in args.summary for r in json.loads(Path(f).read_text())]
        for key, title in (("knn5", "5-NN accuracy"), ("silhouette_raw", "silhouette (raw features)")):
            print(f"\n{title} at {args.level}, minus scratch's, per seed\n")
            print("\n".join(summary(rows, key, args.level)))
        return 0
    torch.set_num_threads(args.threads)
    study = Path(args.study)
    if not (study / "data" / "embed").is_dir():
        raise SystemExit(f"{study / 'data' / 'embed'} not found: run paper_table.py first (--study is its work folder)")
    rows = []
    for seed in args.seeds:
        seed_rows = probe_seed(study, seed, args.methods)
        rows += seed_rows
        print(f"\nseed {seed}: {'method':<13} {'level':<19} {'sil raw':>8} {'sil std':>8} {'5-NN':>6}")
        for r in seed_rows:
            print(
                f"        {r['method']:<13} {r['level']:<19} {r['silhouette_raw']:8.3f} "
                f"{r['silhouette_std']:8.3f} {r['knn5']:6.3f}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

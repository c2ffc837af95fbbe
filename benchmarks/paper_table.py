"""The paper's evidence in miniature: Table 1 (linear and fine-tuning) and the clustering of Fig. 7.

Usage::

    python benchmarks/paper_table.py --budget small                 # <= 90 min on a 2-core CPU
    python benchmarks/paper_table.py --budget small --seeds 0 1 2   # three times that, with spread
    python benchmarks/paper_table.py --budget paper --device cuda   # the paper's sizes (GPU, days)
    python benchmarks/paper_table.py --budget tiny --out /tmp/smoke # plumbing check, seconds
    python benchmarks/paper_table.py --budget small --dry-run       # plan and time estimate only

For every seed it pre-trains, with the same budget each, the four variants ``restoration``
(Models Genesis-style fundament only), ``matching`` (Z-Matching only), ``no-affine`` and
``gvsl`` (whole) on synthetic cardiac CT subjects; ``scratch`` has no pre-training. Every
method is then evaluated downstream with linear evaluation (frozen backbone) and fine-tuning:

* ``heart_seg``: seven cardiac structures on held-out synthetic cardiac subjects, few
  labelled training subjects, mean Dice on the test split (inner scene);
* ``heart_cls``: abnormal/normal myocardium on a synthetic classification set, AUC on the
  test split (inner scene, global task);
* ``brain_seg``: grey/white matter/CSF on MNI-derived brain MR subjects, mean Dice on the
  test split (inter scene).

Downstream data are generated with their own seeds; the script checks that no downstream or
embedding subject is a pre-training subject. The engine keeps the best checkpoint on the
validation split and evaluates it on the test split once, at the end; every method gets
the same hyper-parameters (fixed per budget before any result was seen), no per-method tuning.

Clustering (Fig. 7): silhouette of the seven structures in local-feature space (mean over a
few held-out cardiac subjects and the seeds) and a t-SNE scatter per method.

Writes ``OUT/RESULTS.md``, ``OUT/results.json`` and ``OUT/figures/*.png``. ``--out`` defaults
to ``docs`` for the ``small`` and ``paper`` budgets and to ``WORK/out`` for ``tiny`` (a tiny
run is a smoke test and is labelled so; it is refused in ``docs/``). Runs live in ``--work``
(default ``runs/paper_table/BUDGET``); a run whose ``report.json`` exists with the same
configuration is reused, an interrupted one resumes from its ``last.pt``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

TASKS = ("heart_seg", "heart_cls", "brain_seg")
MODES = ("linear", "finetune")
METHODS = ("scratch", "restoration", "matching", "no-affine", "gvsl")
VARIANTS = ("restoration", "matching", "no-affine", "gvsl")
TASK_TITLES = {"heart_seg": "Heart structures (Dice)", "heart_cls": "Abnormal myocardium (AUC)",
               "brain_seg": "Brain tissues (Dice)"}
TASK_SHORT = {"heart_seg": "SHC-syn DSC", "heart_cls": "CLS-syn AUC", "brain_seg": "SBM-syn DSC"}
METHOD_TITLES = {"scratch": "Scratch", "restoration": "w/o Z-Matching (restoration only)",
                 "matching": "w/o Fundament (Z-Matching only)", "no-affine": "w/o Affine head",
                 "gvsl": "GVSL (whole)"}

# Seeds of the generated data sets (subject i of a set with seed S uses subject_seed(S, i)).
# Pre-training subjects use the study seed (0, 1, 2, ...), so these never coincide with them;
# ``check_disjoint`` verifies it for the seeds actually used.
DATA_SEEDS = {"heart_seg": 9001, "heart_cls": 9002, "brain_seg": 9003, "embed": 9004}


@dataclass(frozen=True)
class Budget:
    """Everything a budget fixes. The same values apply to every method (no per-method tuning)."""

    name: str
    size: int             # pre-training working cube and generated cardiac/brain volume side
    width: int            # base width of the U-Net (paper 32)
    pre_iters: int        # pre-training iterations per variant
    pre_lr: float
    pre_batch: int
    n_synthetic: int      # pre-training subjects
    ft_iters: int         # iterations per fine-tuning run
    ft_lr: float          # fine-tuning learning rate
    linear_iters: int     # iterations per linear probe: a frozen backbone's head is trained to convergence
    linear_lr: float      # linear-evaluation learning rate (only a head is trained)
    ft_batch: int
    val_every: int
    patch: int            # segmentation training patch / sliding-window side
    cls_size: int         # classification volumes are resized to this cube
    n_heart: int          # subjects of each downstream set (split 50/20/30 train/val/test)
    n_cls: int
    n_brain: int
    n_train: int          # labelled training subjects kept for segmentation (few-label regime)
    n_embed: int          # held-out cardiac subjects for the silhouette
    per_label: int        # voxels per structure for silhouette / t-SNE
    seeds: tuple[int, ...]
    workers: int
    ckpt_every: int = 50
    val_fraction: float = 0.2
    test_fraction: float = 0.3
    note: str = ""

    def iters(self, mode: str) -> int:
        """Iterations of one downstream run in ``mode`` ("linear" or "finetune")."""
        return self.linear_iters if mode == "linear" else self.ft_iters

    def validate_every(self, mode: str) -> int:
        """Validation interval of a downstream run: ``val_every``, but at most ~10 validations."""
        iters = self.iters(mode)
        return min(max(self.val_every, iters // 10), iters)


BUDGETS: dict[str, Budget] = {
    "tiny": Budget("tiny", size=16, width=4, pre_iters=3, pre_lr=1e-3, pre_batch=1, n_synthetic=4,
                   ft_iters=2, ft_lr=1e-3, linear_iters=2, linear_lr=1e-2, ft_batch=1, val_every=2, patch=16, cls_size=16,
                   n_heart=6, n_cls=10, n_brain=6, n_train=2, n_embed=1, per_label=25, seeds=(0,), workers=0,
                   note="smoke test of the plumbing only: the numbers mean nothing"),
    "small": Budget("small", size=32, width=8, pre_iters=400, pre_lr=1e-3, pre_batch=1, n_synthetic=16,
                    ft_iters=150, ft_lr=1e-3, linear_iters=1000, linear_lr=1e-1, ft_batch=2, val_every=25, patch=32, cls_size=32,
                    n_heart=24, n_cls=64, n_brain=24, n_train=4, n_embed=3, per_label=300, seeds=(0,),
                    workers=0,
                    note="planned for <= 90 min on the project's 2-core CPU (one seed); "
                         "learning rates raised from the paper's 1e-4 because of the 1000x shorter schedule"),
    "paper": Budget("paper", size=128, width=32, pre_iters=200_000, pre_lr=1e-4, pre_batch=1, n_synthetic=302,
                    ft_iters=40_000, ft_lr=1e-4, linear_iters=40_000, linear_lr=1e-4, ft_batch=2, val_every=200, patch=96,
                    cls_size=128, n_heart=40, n_cls=200, n_brain=40, n_train=10, n_embed=5, per_label=500,
                    seeds=(0, 1, 2), workers=4, ckpt_every=1000,
                    note="the paper's widths, cube and schedules (Adam 1e-4, 2e5 pre-training and 4e4 "
                         "downstream iterations, validation every 200); for a GPU"),
}


# --------------------------------------------------------------------------- small helpers

class Clock:
    def __init__(self, quiet: bool = False):
        self.t0 = time.perf_counter()
        self.quiet = quiet
        self.phases: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, msg: str) -> None:
        if not self.quiet:
            e = self.elapsed()
            print(f"[{int(e // 60):3d}:{int(e % 60):02d}] {msg}", flush=True)

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def _mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def check_disjoint(budget: Budget, seeds: Iterable[int]) -> None:
    """No downstream/embedding cardiac subject may be a pre-training subject."""
    from gvsl_app.synthetic import subject_seed

    pre = {subject_seed(s, i) for s in seeds for i in range(budget.n_synthetic)}
    sizes = {"heart_seg": budget.n_heart, "heart_cls": budget.n_cls, "embed": budget.n_embed}
    for name, n in sizes.items():
        down = {subject_seed(DATA_SEEDS[name], i) for i in range(n)}
        if pre & down:
            raise SystemExit(f"the {name} subjects overlap the pre-training subjects (seed {DATA_SEEDS[name]}); "
                             f"choose pre-training seeds other than {sorted(DATA_SEEDS.values())}")


# --------------------------------------------------------------------------- data

def make_data(budget: Budget, work: Path, clock: Clock) -> dict[str, Path]:
    """The downstream and embedding data sets (reused when already written with the same spec)."""
    from gvsl_app.brain import brain_dataset
    from gvsl_app.synthetic import cardiac_dataset

    shape = (budget.size,) * 3
    specs = {
        "heart_seg": ("cardiac", budget.n_heart, False),
        "heart_cls": ("cardiac", budget.n_cls, True),
        "brain_seg": ("brain", budget.n_brain, False),
        "embed": ("cardiac", budget.n_embed, False),
    }
    out = {}
    for name, (kind, n, cls) in specs.items():
        folder = work / "data" / name
        spec = {"kind": kind, "n": n, "seed": DATA_SEEDS[name], "shape": list(shape), "classification": cls}
        marker = folder / "dataset.json"
        if marker.is_file():
            have = json.loads(marker.read_text())
            if have != spec:
                raise SystemExit(f"{folder} holds another data set ({have}); use a fresh --work folder")
            out[name] = folder
            continue
        t = time.perf_counter()
        if kind == "cardiac":
            cardiac_dataset(folder, n, DATA_SEEDS[name], shape=shape, classification=cls)
        else:
            brain_dataset(folder, n, DATA_SEEDS[name], shape=shape)
        marker.write_text(json.dumps(spec))
        clock.say(f"data {name}: {n} {kind} subjects {shape[0]}^3 (seed {DATA_SEEDS[name]}) in "
                  f"{time.perf_counter() - t:.1f} s")
        out[name] = folder
    return out


# --------------------------------------------------------------------------- runs

_IGNORED_KEYS = ("resume", "device", "workers", "log_every")


def _same_config(run: Path, cfg) -> bool:
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        return False
    have = yaml.safe_load(path.read_text()) or {}
    want = dataclasses.asdict(cfg)
    # an option added after the run was made counts as equal when it is at its default
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    return all(have.get(k, defaults.get(k)) == v for k, v in want.items() if k not in _IGNORED_KEYS)


def run_job(kind: str, cfg, label: str, clock: Clock) -> tuple[dict, bool]:
    """Run (or reuse, or resume) one pre-training / downstream run; returns (report, reused)."""
    from gvsl_app.finetune import finetune
    from gvsl_app.pretrain import pretrain

    run = Path(cfg.run)
    report_path = run / "report.json"
    if run.exists() and (run / "config.yaml").is_file() and not _same_config(run, cfg):
        raise SystemExit(f"{run}: an existing run has another configuration; use a fresh --work folder "
                         "or delete that run")
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        if report.get("status") == "done":
            clock.say(f"{label}: reused ({report_path})")
            return report, True
    if (run / "checkpoints" / "last.pt").is_file():
        cfg = dataclasses.replace(cfg, resume=True)
        clock.say(f"{label}: resuming from {run / 'checkpoints' / 'last.pt'}")
    fn = pretrain if kind == "pretrain" else finetune
    every = max(1, cfg.iters // 4)
    next_print = every
    t = time.perf_counter()
    last = None
    for p in fn(cfg):
        last = p
        if p.phase == "error":
            raise RuntimeError(f"{label}: {p.message}")
        if p.phase == "train" and p.iteration >= next_print:
            next_print = (p.iteration // every + 1) * every
            losses = " ".join(f"{k}={v:.4f}" for k, v in p.losses.items())
            clock.say(f"  {label} {p.iteration}/{p.total} {losses} ({p.sec_per_step:.2f} s/step, "
                      f"eta {_fmt_s(p.eta_s)})")
    if last is None or last.phase not in ("done",):
        raise RuntimeError(f"{label}: ended in phase {getattr(last, 'phase', None)!r}")
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"status": "done"}
    report.setdefault("wall_s", time.perf_counter() - t)
    return report, False


def pretrain_config(budget: Budget, variant: str, seed: int, run: Path, device: str):
    from gvsl_app.config import PretrainConfig

    return PretrainConfig(data="synthetic:cardiac", run=str(run), variant=variant, iters=budget.pre_iters,
                          size=budget.size, width=budget.width, batch=budget.pre_batch, lr=budget.pre_lr,
                          device=device, seed=seed, workers=budget.workers, n_synthetic=budget.n_synthetic,
                          log_every=max(1, min(10, budget.pre_iters // 20)),
                          ckpt_every=min(budget.ckpt_every, budget.pre_iters),
                          val_every=max(1, min(budget.pre_iters, max(budget.val_every, budget.pre_iters // 4))))


def downstream_config(budget: Budget, task: str, mode: str, init: str, seed: int, data: Path, run: Path,
                      device: str):
    from gvsl_app.config import FinetuneConfig

    seg = task != "heart_cls"
    iters = budget.iters(mode)
    return FinetuneConfig(data=str(data), run=str(run), init=init, task="seg" if seg else "cls",
                          linear=mode == "linear", iters=iters,
                          size=budget.patch if seg else budget.cls_size, width=budget.width,
                          batch=budget.ft_batch, lr=budget.linear_lr if mode == "linear" else budget.ft_lr,
                          device=device, seed=seed, workers=0, val_every=budget.validate_every(mode),
                          val_fraction=budget.val_fraction, test_fraction=budget.test_fraction,
                          n_train=budget.n_train if seg else 0, log_every=max(1, iters // 20))


def downstream_value(report: dict, task: str) -> float:
    key = "auc" if task == "heart_cls" else "mean_dice"
    v = (report.get("test") or {}).get(key)
    return float(v) if v is not None else float("nan")


# --------------------------------------------------------------------------- clustering

def _scratch_gvsl(budget: Budget, seed: int):
    import torch

    from models import GVSL, widths_from_base

    torch.manual_seed(seed)
    return GVSL(widths=widths_from_base(budget.width)).eval()


def _read_pair(folder: Path, name: str):
    from gvsl_app.datasets import images_folder, list_volume_files
    from gvsl_app.io import read_labels, read_volume

    img_file = list_volume_files(images_folder(folder))[name]
    lab_file = list_volume_files(folder / "labels")[name]
    image = read_volume(img_file)
    return image, read_labels(lab_file, reference=image)


def feature_silhouette(model, image, labels, budget: Budget, seed: int, device) -> float:
    """Silhouette of the labels in local-feature space (as ``embed``'s ``silhouette_features``)."""
    from sklearn.metrics import silhouette_score

    from gvsl_app.embed import features_at, local_features, sample_voxels
    from gvsl_app.preprocess import normalise

    lab_arr = np.asarray(labels.array)
    vox = sample_voxels(lab_arr, budget.per_label, seed)
    feats = local_features(model, normalise(image), budget.size, device)
    x = features_at(feats, vox, image.shape)
    lab = lab_arr[tuple(vox.T)]
    if len(np.unique(lab)) < 2:
        return float("nan")
    return float(silhouette_score(x, lab))


def clustering(budget: Budget, method: str, seed: int, ckpt: str | None, embed_dir: Path, device: str,
               figure: bool) -> dict:
    """Silhouette (mean over the embedding subjects) and, for ``figure``, the t-SNE points."""
    from gvsl_app.datasets import list_cases
    from gvsl_app.embed import embed
    from gvsl_app.weights import load_gvsl
    from models import resolve_device

    dev = resolve_device(device)
    model = _scratch_gvsl(budget, seed) if ckpt is None else load_gvsl(ckpt, dev)[0]
    names = list_cases(embed_dir, need_labels=True)
    sils = []
    result: dict = {}
    for k, name in enumerate(names):
        image, labels = _read_pair(embed_dir, name)
        sils.append(feature_silhouette(model, image, labels, budget, seed, dev))
        if figure and k == 0:
            res = embed(image, labels, model=model, per_label=budget.per_label, size=budget.size, seed=seed,
                        device=device)
            result.update(xy=res.xy, labels=res.labels, silhouette_2d=res.report.get("silhouette_2d"))
    result["silhouette"] = _mean_std(sils)[0]
    result["per_subject"] = sils
    return result


def draw_figures(points: dict[str, dict], sil: dict[str, float], fig_dir: Path, smoke: bool) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gvsl_app.synthetic import CARDIAC_COLORS, CARDIAC_LABELS

    fig_dir.mkdir(parents=True, exist_ok=True)
    files = []

    def scatter(ax, pts, title):
        for value, name in CARDIAC_LABELS.items():
            m = pts["labels"] == value
            if m.any():
                ax.scatter(pts["xy"][m, 0], pts["xy"][m, 1], s=3, alpha=0.7,
                           color=np.asarray(CARDIAC_COLORS[value]) / 255.0, label=name, rasterized=True)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    tag = " [SMOKE]" if smoke else ""
    for method, pts in points.items():
        fig, ax = plt.subplots(figsize=(4.2, 4.2))
        scatter(ax, pts, f"{METHOD_TITLES[method]}{tag}\nsilhouette (features) {sil[method]:.3f}")
        ax.legend(fontsize=6, markerscale=3, loc="best")
        fig.tight_layout()
        path = fig_dir / f"tsne_{method}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    fig, axes = plt.subplots(1, len(points), figsize=(3.2 * len(points), 3.5))
    axes = np.atleast_1d(axes)
    for ax, (method, pts) in zip(axes, points.items()):
        scatter(ax, pts, f"{method}{tag}\nsil. {sil[method]:.3f}")
    axes[0].legend(fontsize=6, markerscale=3, loc="lower left")
    fig.suptitle("t-SNE of local features f^l of the seven cardiac structures (cf. paper Fig. 7)", fontsize=10)
    fig.tight_layout()
    path = fig_dir / "fig7_tsne.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)
    return files


# --------------------------------------------------------------------------- time estimate

def calibrate(budget: Budget, device: str, repeats: int = 2) -> dict[str, float]:
    """Seconds per optimisation step of each kind of run, measured now on this machine."""
    import torch

    from models import GVSL, local_ncc, resolve_device, restoration_mse, smoothness, widths_from_base
    from models.downstream import ClassificationNet, SegmentationNet

    dev = resolve_device(device)
    widths = widths_from_base(budget.width)
    g = torch.Generator().manual_seed(0)
    s, p, c = budget.size, budget.patch, budget.cls_size

    def timed(step) -> float:
        step()  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    out = {}
    m = GVSL(widths=widths).to(dev)
    opt = torch.optim.Adam(m.parameters())
    a = torch.rand((budget.pre_batch, 1, s, s, s), generator=g).to(dev)
    b = torch.rand((budget.pre_batch, 1, s, s, s), generator=g).to(dev)

    def gvsl_step():
        o = m(a, b, source=a, restore=True)
        loss = local_ncc(o.warped, b) + smoothness(o.displacement) + restoration_mse(o.restored, a)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def rest_step():
        _, loc = m.features(a)
        loss = restoration_mse(m.restoration_head(loc), a)
        opt.zero_grad()
        loss.backward()
        opt.step()

    out["pretrain_matching"] = timed(gvsl_step)
    out["pretrain_restoration"] = timed(rest_step)
    del m, opt
    for mode in MODES:
        for kind, side, net in (("seg", p, SegmentationNet(8, widths)), ("cls", c, ClassificationNet(1, widths))):
            net = net.to(dev)
            if mode == "linear":
                net.freeze_backbone()
            o2 = torch.optim.Adam([q for q in net.parameters() if q.requires_grad])
            x = torch.rand((budget.ft_batch, 1, side, side, side), generator=g).to(dev)

            def step(net=net, o2=o2, x=x):
                loss = net(x).float().mean()
                o2.zero_grad()
                loss.backward()
                o2.step()

            out[f"{kind}_{mode}"] = timed(step)
    return out


def estimate(budget: Budget, n_seeds: int, steps: dict[str, float]) -> dict[str, float]:
    """Seconds per phase from step times (+15 % for augmentation, validation and checkpoints, 5 s per run)."""
    over, per_run = 1.15, 5.0
    pre = budget.pre_iters * (3 * steps["pretrain_matching"] + steps["pretrain_restoration"]) * over
    pre += len(VARIANTS) * per_run
    down = 0.0
    for mode in MODES:
        down += budget.iters(mode) * len(METHODS) * (2 * steps[f"seg_{mode}"] + steps[f"cls_{mode}"]) * over
        down += len(METHODS) * len(TASKS) * per_run
    clus = len(METHODS) * (budget.n_embed * (1.0 + 3 * steps["seg_linear"]) + 3.0 + 0.005 * 7 * budget.per_label)
    per_seed = {"pretrain": pre, "downstream": down, "clustering": clus}
    est = {k: v * n_seeds for k, v in per_seed.items()}
    est["data"] = 0.2 * (budget.n_heart + budget.n_cls + budget.n_embed) + 0.25 * budget.n_brain + 5.0
    est["total"] = sum(est.values())
    return est


# --------------------------------------------------------------------------- report

def _cell(mean: float, std: float, n: int, base: float | None, best: bool, several: bool) -> str:
    if not math.isfinite(mean):
        return "n/a"
    s = f"{mean:.3f}"
    if several and n > 1:
        s += f" ± {std:.3f}"
    if base is not None and math.isfinite(base):
        s += f" ({mean - base:+.3f})"
    return f"**{s}**" if best else s


def summarise(per_seed: dict, seeds: list[int]) -> tuple[dict, dict]:
    """Mean/std/n per task, mode, method from ``per_seed[task][mode][method][seed]``."""
    mean: dict = {t: {m: {} for m in MODES} for t in TASKS}
    spread: dict = {t: {m: {} for m in MODES} for t in TASKS}
    for t in TASKS:
        for mode in MODES:
            for method in METHODS:
                vals = [per_seed[t][mode][method].get(s, float("nan")) for s in seeds]
                mu, sd, n = _mean_std(vals)
                mean[t][mode][method] = mu
                spread[t][mode][method] = {"std": sd, "n": n}
    return mean, spread


def discussion(mean: dict, spread: dict, sil: dict, several: bool) -> list[str]:
    lines = []
    for mode in MODES:
        for t in TASKS:
            col = mean[t][mode]
            finite = {m: v for m, v in col.items() if math.isfinite(v)}
            if not finite:
                lines.append(f"- {mode} / {t}: no finite value.")
                continue
            order = sorted(finite, key=lambda m: -finite[m])
            win = order[0]
            margin = finite[win] - finite[order[1]] if len(order) > 1 else float("nan")
            noise = ""
            if several:
                sd = max(spread[t][mode][win]["std"], spread[t][mode][order[1]]["std"]) if len(order) > 1 else 0
                noise = " (within one standard deviation: not a clear win)" if margin < sd else ""
            else:
                noise = " (one seed: no spread to judge it)"
            lines.append(f"- {mode} / {t}: best is **{win}** ({finite[win]:.3f}), ahead of {order[1] if len(order) > 1 else '-'} "
                         f"by {margin:+.4f}{noise}; gvsl ranks {order.index('gvsl') + 1 if 'gvsl' in order else '-'} "
                         f"of {len(order)}.")
    s_fin = {m: v for m, v in sil.items() if math.isfinite(v)}
    if s_fin:
        order = sorted(s_fin, key=lambda m: -s_fin[m])
        lines.append(f"- clustering: silhouette order {' > '.join(f'{m} ({s_fin[m]:.3f})' for m in order)}.")
    g, sc, rs = (mean["heart_seg"]["linear"].get(k, float("nan")) for k in ("gvsl", "scratch", "restoration"))
    if all(math.isfinite(v) for v in (g, sc, rs)):
        ok = g > sc and g > rs
        lines.append("")
        lines.append(f"**Check of issue 7** (linear heart-structure segmentation): gvsl {g:.3f}, scratch {sc:.3f}, "
                     f"restoration {rs:.3f} -> GVSL {'beats' if ok else 'does NOT beat'} both.")
        if not ok:
            lines.append("This must be investigated (losses, warm-up, the affine head's gradients, budget) and "
                         "the findings written below; the numbers above stay as they came out.")
    return lines


def pretrain_diagnostics(work: Path, seeds: list[int]) -> list[dict]:
    from gvsl_app.runs import read_metrics

    rows = []
    for s in seeds:
        for v in VARIANTS:
            path = work / f"seed{s}" / "pretrain" / v / "metrics.jsonl"
            if not path.is_file():
                continue
            recs = read_metrics(path)
            train = [r for r in recs if "loss" in r and r.get("event") is None]
            vals = [r for r in recs if r.get("event") == "validate"]
            row = {"seed": s, "variant": v, "iters": train[-1]["iteration"] if train else 0}
            if train:
                k = max(1, len(train) // 10)
                for key in ("ncc", "mse"):
                    first = [r[key] for r in train[:k] if key in r]
                    lastv = [r[key] for r in train[-k:] if key in r]
                    if first and lastv:
                        row[f"train_{key}_first"] = float(np.mean(first))
                        row[f"train_{key}_last"] = float(np.mean(lastv))
            if vals:
                last = vals[-1]
                for key in ("val_ncc", "val_ncc_before", "val_mse", "val_smooth"):
                    if key in last:
                        row[key] = float(last[key])
            rows.append(row)
    return rows


def write_outputs(out: Path, budget: Budget, seeds: list[int], per_seed: dict, sil_seed: dict, sil2d: dict,
                  clock: Clock, command: str, device_desc: str, est: dict | None, reused: int, figures: list[Path],
                  diag: list[dict], run_walls: dict) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    smoke = budget.name == "tiny"
    several = len(seeds) > 1
    mean, spread = summarise(per_seed, seeds)
    sil = {m: _mean_std(sil_seed[m].values())[0] for m in METHODS}
    sil_sd = {m: _mean_std(sil_seed[m].values())[1] for m in METHODS}

    meta = {
        "budget": budget.name, "smoke": smoke, "budget_config": dataclasses.asdict(budget), "seeds": seeds,
        "data_seeds": DATA_SEEDS, "command": command, "device": device_desc,
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
        "wall_s": {**clock.phases, "total": clock.elapsed()}, "run_wall_s": run_walls, "runs_reused": reused,
        "estimate_s": est, "per_seed": per_seed, "std": {t: {m: {k: v["std"] for k, v in spread[t][m].items()}
                                                             for m in MODES} for t in TASKS},
        "silhouette_per_seed": sil_seed, "silhouette_std": sil_sd, "silhouette_2d": sil2d,
        "pretrain_diagnostics": diag,
        "protocol": "pre-training checkpoint = last.pt of the run (same iterations for every variant); downstream "
                    "model selected on the validation split (best mean Dice / AUC), evaluated once on the test "
                    "split; identical hyper-parameters for every method",
    }
    results = {t: {mode: dict(mean[t][mode]) for mode in MODES} for t in TASKS}
    results["silhouette"] = sil
    results["meta"] = meta
    json_path = out / "results.json"
    json_path.write_text(json.dumps(_nan_to_none(results), indent=2, default=str) + "\n", encoding="utf-8")

    L = []
    title = "GVSL Studio: the paper's Table 1 and Fig. 7 in miniature"
    L.append(f"# {title}" + (" — SMOKE OUTPUT" if smoke else ""))
    L.append("")
    if smoke:
        L.append("> **SMOKE OUTPUT of the `tiny` budget: it checks the plumbing, the numbers mean nothing.** "
                 "Do not quote them; run `--budget small` or `--budget paper` for results.")
        L.append("")
    L.append(f"Budget **{budget.name}** ({budget.note}); seeds {', '.join(map(str, seeds))}; device {device_desc}; "
             f"{meta['date']}.")
    L.append("")
    L.append("Command:")
    L.append("")
    L.append(f"```\n{command}\n```")
    L.append("")
    L.append("Rows: pre-training; columns: downstream task × evaluation. Each cell: test-split value "
             + ("(mean ± std over seeds) " if several else "")
             + "and, in brackets, the difference to Scratch. Bold: best in the column. "
             "Dice = mean Dice over the structures; AUC = ROC AUC of abnormal vs normal myocardium.")
    L.append("")
    head = ["Pre-training"] + [f"a) linear {TASK_SHORT[t]}" for t in TASKS] + [f"b) fine-tune {TASK_SHORT[t]}"
                                                                                 for t in TASKS]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    best = {(t, mode): max((v for v in mean[t][mode].values() if math.isfinite(v)), default=float("nan"))
            for t in TASKS for mode in MODES}
    for method in METHODS:
        cells = [METHOD_TITLES[method]]
        for mode in MODES:
            for t in TASKS:
                v = mean[t][mode][method]
                base = None if method == "scratch" else mean[t][mode]["scratch"]
                cells.append(_cell(v, spread[t][mode][method]["std"], spread[t][mode][method]["n"], base,
                                   math.isfinite(v) and v == best[(t, mode)], several))
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append("Tasks: heart_seg = seven cardiac structures on held-out synthetic cardiac CT "
             f"({budget.n_heart} subjects, {budget.n_train} labelled for training), heart_cls = abnormal vs "
             f"normal myocardium ({budget.n_cls} synthetic subjects, half abnormal), brain_seg = grey/white "
             f"matter/CSF on MNI-derived brain MR ({budget.n_brain} subjects, {budget.n_train} labelled for "
             "training). Splits: 20 % validation (checkpoint selection only), 30 % test.")
    L.append("")
    L.append("## Clustering of the local features (cf. Fig. 7)")
    L.append("")
    L.append(f"Silhouette of the seven structures in the local-feature space f^l ({budget.per_label} voxels per "
             f"structure, mean over {budget.n_embed} held-out cardiac subject(s)"
             + (" and the seeds" if several else "") + "); Scratch is a randomly initialised network. "
             "t-SNE silhouette is on the first subject of the first seed.")
    L.append("")
    L.append("| Pre-training | silhouette (features) | silhouette (t-SNE 2D) | figure |")
    L.append("|---|---|---|---|")
    rel = {}
    for f in figures:
        try:
            rel[f.stem] = f.relative_to(out).as_posix()
        except ValueError:
            rel[f.stem] = str(f)
    for method in METHODS:
        s = sil[method]
        cell = "n/a" if not math.isfinite(s) else (f"{s:.3f}" + (f" ± {sil_sd[method]:.3f}" if several else ""))
        s2 = sil2d.get(method)
        cell2 = f"{s2:.3f}" if s2 is not None and math.isfinite(s2) else "n/a"
        fig = rel.get(f"tsne_{method}")
        L.append(f"| {METHOD_TITLES[method]} | {cell} | {cell2} | {f'[png]({fig})' if fig else '-'} |")
    L.append("")
    if "fig7_tsne" in rel:
        L.append(f"![t-SNE of the local features per method]({rel['fig7_tsne']})")
        L.append("")
    L.append("## Discussion (computed from the numbers above)")
    L.append("")
    L.extend(discussion(mean, spread, sil, several))
    L.append("")
    # Written by a person after reading a run, kept in its own file so a rerun never erases it.
    findings = out / f"findings_{budget.name}.md"
    L.append("### Findings of a person")
    L.append("")
    if findings.is_file() and not smoke:
        L.append(f"_From [`{findings.name}`]({findings.name}), written after reading a run; check it against the "
                 "numbers above, which this command regenerates._")
        L.append("")
        L.append(findings.read_text().strip())
    else:
        L.append(f"_Not written yet: put what the numbers show, where GVSL does not win and what was investigated "
                 f"into `{findings.name}` next to this file; the next run includes it here._")
    L.append("")
    L.append("## Pre-training diagnostics")
    L.append("")
    L.append("Training loss terms averaged over the first and last 10 % of logged steps, and the last "
             "validation on the fixed un-augmented pair (NCC is negative; lower is better; `ncc_before` is the "
             "NCC of the pair without any warp).")
    L.append("")
    L.append("| seed | variant | iters | train NCC first → last | train MSE first → last | val NCC | val NCC before | val MSE |")
    L.append("|---|---|---|---|---|---|---|---|")

    def f(row, key):
        return f"{row[key]:.4f}" if key in row else "-"

    for r in diag:
        ncc = f"{f(r, 'train_ncc_first')} → {f(r, 'train_ncc_last')}" if "train_ncc_first" in r else "-"
        mse = f"{f(r, 'train_mse_first')} → {f(r, 'train_mse_last')}" if "train_mse_first" in r else "-"
        L.append(f"| {r['seed']} | {r['variant']} | {r['iters']} | {ncc} | {mse} | {f(r, 'val_ncc')} | "
                 f"{f(r, 'val_ncc_before')} | {f(r, 'val_mse')} |")
    L.append("")
    L.append("## Budget and wall time")
    L.append("")
    b = budget
    L.append(f"- pre-training: {b.pre_iters} iterations per variant, batch {b.pre_batch}, Adam lr {b.pre_lr:g}, "
             f"{b.size}^3 working cube, base width {b.width}, {b.n_synthetic} synthetic cardiac subjects per seed "
             "(subject seeds derived from the study seed); checkpoint used downstream: `last.pt`.")
    L.append(f"- downstream: fine-tuning {b.ft_iters} iterations at Adam lr {b.ft_lr:g}; linear probe (frozen "
             f"backbone, 1x1x1 convolution or linear layer) {b.linear_iters} iterations at lr {b.linear_lr:g}; "
             f"batch {b.ft_batch}, segmentation patches {b.patch}^3 with sliding-window inference, classification "
             f"volumes {b.cls_size}^3, validation every {b.validate_every('finetune')} "
             f"(fine-tuning) / {b.validate_every('linear')} (linear) iterations.")
    L.append(f"- data seeds: {', '.join(f'{k} {v}' for k, v in DATA_SEEDS.items())} (checked disjoint from the "
             "pre-training subjects).")
    L.append("")
    L.append("| phase | wall time in this invocation |")
    L.append("|---|---|")
    for k, v in clock.phases.items():
        L.append(f"| {k} | {_fmt_s(v)} |")
    L.append(f"| **total** | **{_fmt_s(clock.elapsed())}** |")
    L.append("")
    if reused:
        L.append(f"{reused} run(s) were reused from an earlier invocation (their report.json existed); their own "
                 "compute time is in `results.json` → `meta.run_wall_s`.")
        L.append("")
    if est:
        L.append(f"Estimate printed at the start: {_fmt_s(est['total'])} "
                 f"({', '.join(f'{k} {_fmt_s(v)}' for k, v in est.items() if k != 'total')}).")
        L.append("")
    md_path = out / "RESULTS.md"
    md_path.write_text("\n".join(L) + "\n", encoding="utf-8")
    return md_path, json_path


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    p.add_argument("--seeds", type=int, nargs="+", help="study seeds (default: the budget's: tiny/small 0, paper 0 1 2)")
    p.add_argument("--out", help="folder for RESULTS.md, results.json and figures/ (default: docs for small/paper, "
                                 "WORK/out for tiny)")
    p.add_argument("--work", help="folder of the data and run folders (default runs/paper_table/BUDGET)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", default="auto",
                   help="torch CPU threads: a number, or auto = 1 when the machine is already loaded (load average "
                        ">= cores; oversubscribed OpenMP threads make small 3D convolutions several times slower), "
                        "else torch's default")
    p.add_argument("--pre-iters", type=int, help="override the budget's pre-training iterations (recorded)")
    p.add_argument("--ft-iters", type=int, help="override the budget's fine-tuning iterations (recorded)")
    p.add_argument("--linear-iters", type=int, help="override the budget's linear-probe iterations (recorded)")
    p.add_argument("--no-estimate", action="store_true", help="skip the step-time calibration and the estimate")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate, run nothing")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def choose_threads(spec: str, device_type: str) -> tuple[int, str]:
    import torch

    if device_type != "cpu":
        return torch.get_num_threads(), "torch default (not a CPU run)"
    if spec != "auto":
        return max(1, int(spec)), "--threads"
    try:
        load = os.getloadavg()[0]
    except OSError:
        return torch.get_num_threads(), "torch default (no load average)"
    cores = os.cpu_count() or 1
    if load >= cores:
        return 1, f"auto: load average {load:.1f} >= {cores} cores"
    return torch.get_num_threads(), f"auto: load average {load:.1f} < {cores} cores"


def main(argv: list[str] | None = None) -> dict:
    import torch

    threads_before = torch.get_num_threads()
    try:
        return _main(argv)
    finally:
        torch.set_num_threads(threads_before)


def _main(argv: list[str] | None) -> dict:
    args = parse_args(argv)
    argv_used = list(sys.argv[1:] if argv is None else argv)
    command = "python benchmarks/paper_table.py " + shlex.join(argv_used)
    budget = BUDGETS[args.budget]
    changes = {k: v for k, v in (("pre_iters", args.pre_iters), ("ft_iters", args.ft_iters),
                                 ("linear_iters", args.linear_iters)) if v is not None}
    if any(v < 1 for v in changes.values()):
        raise SystemExit("--pre-iters, --ft-iters and --linear-iters must be positive")
    if changes:
        budget = dataclasses.replace(budget, note=budget.note + "; MODIFIED: " + ", ".join(
            f"{k}={v} (budget {getattr(budget, k)})" for k, v in changes.items()), **changes)
    seeds = list(args.seeds if args.seeds else budget.seeds)
    suffix = "".join(f"-{k.split('_')[0]}{v}" for k, v in changes.items())
    work = Path(args.work) if args.work else ROOT / "runs" / "paper_table" / (budget.name + suffix)
    out = Path(args.out) if args.out else (work / "out" if budget.name == "tiny" else ROOT / "docs")
    if budget.name == "tiny" and out.resolve() == (ROOT / "docs").resolve():
        raise SystemExit("the tiny budget is a smoke test; it does not write into docs/ (pass another --out)")
    clock = Clock(args.quiet)
    check_disjoint(budget, seeds)

    import torch

    from models import resolve_device

    dev = resolve_device(args.device)
    threads, why = choose_threads(args.threads, dev.type)
    torch.set_num_threads(threads)
    device_desc = f"{dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
                              f" ({os.cpu_count()} cores, {threads} torch thread(s), {why})")
    n_runs = len(seeds) * (len(VARIANTS) + len(TASKS) * len(MODES) * len(METHODS))
    clock.say(f"budget {budget.name}: seeds {seeds}, {len(seeds) * len(VARIANTS)} pre-training runs of "
              f"{budget.pre_iters} iterations, {len(seeds) * len(TASKS) * len(MODES) * len(METHODS)} downstream "
              f"runs of {budget.ft_iters} (fine-tuning) / {budget.linear_iters} (linear) iterations ({n_runs} runs); device {device_desc}; work {work}; out {out}")
    est = None
    if not args.no_estimate:
        if budget.name == "paper" and dev.type == "cpu":
            clock.say("estimate skipped: the paper budget on a CPU would take months (use a GPU)")
        else:
            t = time.perf_counter()
            steps = calibrate(budget, args.device)
            est = estimate(budget, len(seeds), steps)
            clock.say("measured step times: " + ", ".join(f"{k} {v:.3f} s" for k, v in steps.items())
                      + f" (calibration {time.perf_counter() - t:.1f} s)")
            clock.say("ESTIMATE: " + ", ".join(f"{k} {_fmt_s(v)}" for k, v in est.items())
                      + " (at the current machine load)")
            if budget.name == "small" and est["total"] > 90 * 60:
                clock.say("WARNING: the estimate exceeds the 90 minutes planned for the small budget "
                          "(a busy machine?); the run goes on")
    if args.dry_run:
        return {"estimate_s": est, "budget": dataclasses.asdict(budget), "seeds": seeds}

    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    data = make_data(budget, work, clock)
    clock.add("data", time.perf_counter() - t)

    per_seed = {task: {mode: {m: {} for m in METHODS} for mode in MODES} for task in TASKS}
    sil_seed: dict[str, dict] = {m: {} for m in METHODS}
    sil2d: dict[str, float] = {}
    points: dict[str, dict] = {}
    run_walls: dict[str, float] = {}
    reused = 0
    for si, seed in enumerate(seeds):
        base = work / f"seed{seed}"
        # ---- pre-training
        ckpts: dict[str, str | None] = {"scratch": None}
        for v in VARIANTS:
            t = time.perf_counter()
            cfg = pretrain_config(budget, v, seed, base / "pretrain" / v, args.device)
            clock.say(f"seed {seed}: pre-training {v} ({budget.pre_iters} iterations)")
            report, was = run_job("pretrain", cfg, f"pretrain {v} seed {seed}", clock)
            reused += was
            run_walls[f"seed{seed}/pretrain/{v}"] = float(report.get("wall_s", float("nan")))
            ckpts[v] = str(Path(cfg.run) / "checkpoints" / "last.pt")
            dt = time.perf_counter() - t
            clock.add(f"pretrain {v}", dt)
            clock.say(f"seed {seed}: pre-training {v} finished in {_fmt_s(dt)}")
        # ---- downstream
        for task in TASKS:
            for mode in MODES:
                t = time.perf_counter()
                for method in METHODS:
                    init = ckpts[method] or "scratch"
                    run = base / task / mode / method
                    cfg = downstream_config(budget, task, mode, init, seed, data[task], run, args.device)
                    report, was = run_job("finetune", cfg, f"{task} {mode} {method} seed {seed}", clock)
                    reused += was
                    run_walls[f"seed{seed}/{task}/{mode}/{method}"] = float(report.get("wall_s", float("nan")))
                    value = downstream_value(report, task)
                    per_seed[task][mode][method][seed] = value
                    clock.say(f"seed {seed}: {task} {mode} {method}: test "
                              f"{'AUC' if task == 'heart_cls' else 'Dice'} {value:.4f} "
                              f"(best val {report.get('best_val', float('nan')):.4f})")
                clock.add(f"{task} {mode}", time.perf_counter() - t)
        # ---- clustering
        t = time.perf_counter()
        for method in METHODS:
            res = clustering(budget, method, seed, ckpts[method], data["embed"], args.device, figure=si == 0)
            sil_seed[method][seed] = res["silhouette"]
            if si == 0:
                points[method] = {"xy": res["xy"], "labels": res["labels"]}
                sil2d[method] = res.get("silhouette_2d")
            clock.say(f"seed {seed}: clustering {method}: silhouette {res['silhouette']:.4f}")
        clock.add("clustering", time.perf_counter() - t)

    t = time.perf_counter()
    sil_mean = {m: _mean_std(sil_seed[m].values())[0] for m in METHODS}
    figures = draw_figures(points, sil_mean, out / "figures", smoke=budget.name == "tiny")
    clock.add("figures", time.perf_counter() - t)
    diag = pretrain_diagnostics(work, seeds)
    md, js = write_outputs(out, budget, seeds, per_seed, sil_seed, sil2d, clock, command, device_desc, est,
                           reused, figures, diag, run_walls)
    clock.say(f"wrote {md}, {js} and {len(figures)} figures in {out / 'figures'}; total {_fmt_s(clock.elapsed())}")
    return json.loads(js.read_text())


if __name__ == "__main__":
    main()

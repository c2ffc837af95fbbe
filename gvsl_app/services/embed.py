"""Local-feature embedding per anatomical label: balanced voxel sampling, t-SNE, silhouette."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gvsl_app.data.preprocess import normalise, resize_array
from gvsl_app.io.images import geometry_differences
from gvsl_app.io.jsonio import dumps_strict
from gvsl_app.io.volume import Volume
from gvsl_app.services.stages import StageClock
from gvsl_app.services.weights import load_gvsl
from models import GVSL, resolve_device


@dataclass
class EmbedReport:
    """The report of one embedding, the schema of ``gvsl embed``'s ``report.json``.

    Attributes:
        image: The image's source (path or layer name).
        labels: The label map's source.
        weights: Which GVSL weights computed the features (a one-line description).
        n_points: The voxels embedded.
        per_label: The most voxels sampled per label.
        seed: The seed of the voxel sampling and of t-SNE.
        working_size: The edge of the working cube the features were computed on.
        feature_dim: The channels of the local features.
        points_per_label: Voxels embedded per label (keyed by the label value as a string).
        silhouette_features: The labels' silhouette score in feature space (``None``: one label).
        silhouette_2d: Their silhouette score in the 2D map (``None``: one label).
        seconds: ``features_s`` and ``tsne_s``.
    """

    image: str
    labels: str
    weights: str
    n_points: int
    per_label: int
    seed: int
    working_size: int
    feature_dim: int
    points_per_label: dict[str, int]
    silhouette_features: float | None
    silhouette_2d: float | None
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values, in field order."""
        return asdict(self)

    def to_json(self) -> str:
        """:meth:`as_dict` as strict JSON."""
        return dumps_strict(self.as_dict())


@dataclass
class EmbedResult:
    """2D t-SNE coordinates of sampled voxels with their labels and voxel indices.

    ``voxels`` are ``(z, y, x)`` indices on the *input image's* grid, so a selection in the
    plot maps straight back to the viewer's layers. ``report`` is ``record.as_dict()``, built
    once: a plain dict the CLI adds to and :meth:`save` writes; read the typed fields from
    ``record``.
    """

    xy: np.ndarray
    labels: np.ndarray
    voxels: np.ndarray
    features: np.ndarray
    record: EmbedReport
    report: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.report = self.record.as_dict()

    def save(self, out: str | os.PathLike) -> Path:
        """Write ``embedding.csv`` (a row per voxel) and ``report.json`` into folder ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        rows = ["x,y,label,z_index,y_index,x_index"]
        rows += [
            f"{a:.5f},{b:.5f},{int(l)},{z},{y},{x}" for (a, b), l, (z, y, x) in zip(self.xy, self.labels, self.voxels)
        ]
        (out / "embedding.csv").write_text("\n".join(rows) + "\n")
        (out / "report.json").write_text(dumps_strict(self.report))
        return out


def sample_voxels(labels: np.ndarray, per_label: int, seed: int) -> np.ndarray:
    """Up to ``per_label`` random voxel indices ``(n, 3)`` of each non-zero label (balanced).

    Labels come in increasing order, each drawn without replacement with one seeded
    generator, so the same (labels, per_label, seed) always gives the same voxels.
    """
    if per_label < 1:
        raise ValueError(f"per_label must be >= 1, got {per_label}")
    rng = np.random.default_rng(seed)
    picks = []
    for value in np.unique(labels):
        if value == 0:
            continue
        idx = np.argwhere(labels == value)
        if len(idx) > per_label:
            idx = idx[rng.choice(len(idx), per_label, replace=False)]
        picks.append(idx)
    if not picks:
        raise ValueError("the label map has no foreground label to embed")
    return np.concatenate(picks)


MIN_POINTS = 2
"""t-SNE needs at least two points (openTSNE fails on one with "Expected n_neighbors > 0")."""


def check_enough_voxels(labels: np.ndarray, per_label: int, source: str = "") -> None:
    """Refuse, naming the file and each label's voxel count, a label map too sparse to embed.

    t-SNE needs :data:`MIN_POINTS` sampled voxels in all; with two labels or more, the
    silhouette score also needs more voxels than labels (one label with two voxels at
    least), else scikit-learn fails with "Number of labels is N. Valid values are 2 to
    n_samples - 1". Checked before the features are computed.
    """
    if per_label < 1:
        raise ValueError(f"per_label must be >= 1, got {per_label}")
    values, counts = np.unique(labels[labels != 0], return_counts=True)
    sampled = np.minimum(counts, per_label)
    n = int(sampled.sum())
    if n >= MIN_POINTS and (len(values) < 2 or n > len(values)):
        return
    src = source or "the label map"
    if not len(values):
        raise ValueError(f"{src}: the label map has no foreground label to embed (every voxel is 0)")
    shown = ", ".join(f"label {int(v)}: {int(c)} voxel{'s' if c != 1 else ''}" for v, c in zip(values, counts))
    need = (
        f"at least {MIN_POINTS} labelled voxels for t-SNE"
        if n < MIN_POINTS
        else "more voxels than labels, i.e. one label with 2 voxels or more, for the silhouette score"
    )
    hint = " (raise --per-label)" if int(counts.sum()) > n else ""
    raise ValueError(f"{src}: too few labelled voxels to embed ({shown}, {n} sampled); embedding needs {need}{hint}")


@torch.no_grad()
def local_features(model: GVSL, image: np.ndarray, size: int, device: torch.device) -> np.ndarray:
    """Local (last decoder level) features ``(C, size, size, size)`` of a normalised image."""
    x = torch.from_numpy(resize_array(image, (size,) * 3))[None, None].to(device)
    _, f = model.to(device).eval().features(x)
    return f[0].float().cpu().numpy()


@torch.no_grad()
def features_at(features: np.ndarray, voxels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Features ``(n, C)`` at input-grid voxels ``(n, 3)``, read trilinearly from a working cube.

    The working cube spans the input grid with aligned corners (as ``resize_array`` does),
    so input voxel ``i`` on an axis of ``n`` voxels sits at ``i / (n - 1)`` of the cube.
    """
    f = torch.from_numpy(np.ascontiguousarray(features))[None]  # (1, C, D, H, W)
    pos = np.asarray(voxels, dtype=np.float64) / np.maximum(np.asarray(shape, dtype=np.float64) - 1, 1)
    grid = torch.from_numpy((pos * 2 - 1)[:, ::-1].copy()).float().view(1, -1, 1, 1, 3)  # (x, y, z) order
    out = F.grid_sample(f, grid, mode="bilinear", align_corners=True)  # (1, C, n, 1, 1)
    return out[0, :, :, 0, 0].T.numpy()


TSNE_PARALLEL_FROM = 5000
"""Below this many points openTSNE runs on one thread: its thread pool costs seconds for nothing
on small sets (84 points: 0.2 s with n_jobs=1, 12 s with n_jobs=-1 on a busy 2-core machine)."""


def tsne_2d(features: np.ndarray, seed: int, perplexity: float = 30.0, n_jobs: int | None = None) -> np.ndarray:
    """OpenTSNE 2D embedding of standardised features.

    ``n_jobs`` is openTSNE's (``-1`` = all cores); ``None`` picks 1 below
    :data:`TSNE_PARALLEL_FROM` points and all cores above.
    """
    from openTSNE import TSNE

    z = (features - features.mean(0)) / (features.std(0) + 1e-6)
    perplexity = min(perplexity, max(2.0, (len(z) - 1) / 3.0))
    if n_jobs is None:
        n_jobs = 1 if len(z) < TSNE_PARALLEL_FROM else -1
    return np.asarray(
        TSNE(n_components=2, perplexity=perplexity, random_state=seed, n_jobs=n_jobs, verbose=False).fit(z)
    )


def embed(
    image: Volume,
    labels: Volume,
    *,
    weights: str | os.PathLike | None = None,
    model: GVSL | None = None,
    per_label: int = 500,
    size: int = 96,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[str, float], None] | None = None,
) -> EmbedResult:
    """Embed the local features of labelled voxels with t-SNE and score their clustering.

    Features are computed on a ``size^3`` working cube and read (trilinearly) at the
    sampled voxels' positions; the silhouette score of the labels is reported in feature
    space and in the 2D map (scikit-learn), ``None`` when only one label is present.
    ``labels`` must lie on ``image``'s grid (shape, spacing, origin, direction), else
    ``ValueError``.
    """
    clock = StageClock(progress)
    _check_on_grid(labels, image)
    check_enough_voxels(np.asarray(labels.array), per_label, labels.source)
    vox = sample_voxels(np.asarray(labels.array), per_label, seed)
    dev = resolve_device(device)
    with clock.stage("features", 0.1):
        info = "given model"
        if model is None:
            model, info = load_gvsl(weights, dev)
        feats = local_features(model, normalise(image), size, dev)
        x = features_at(feats, vox, image.shape)
        lab = np.asarray(labels.array)[tuple(vox.T)]
    with clock.stage("tsne", 0.4, "t-SNE"):
        xy = tsne_2d(x, seed)
    sil_features, sil_2d = _silhouettes(x, xy, lab)
    record = EmbedReport(
        image=image.source,
        labels=labels.source,
        weights=info,
        n_points=int(len(lab)),
        per_label=per_label,
        seed=seed,
        working_size=size,
        feature_dim=int(x.shape[1]),
        points_per_label={str(int(v)): int(c) for v, c in zip(*np.unique(lab, return_counts=True))},
        silhouette_features=sil_features,
        silhouette_2d=sil_2d,
        seconds=dict(clock.seconds),
    )
    clock.say("done", 1.0)
    return EmbedResult(xy=xy, labels=lab, voxels=vox, features=x, record=record)


def _check_on_grid(labels: Volume, image: Volume) -> None:
    diffs = geometry_differences(labels, image)
    if diffs:
        raise ValueError(
            f"labels {labels.source or '(in memory)'} do not lie on the grid of image "
            f"{image.source or '(in memory)'}: " + "; ".join(diffs)
        )


def _silhouettes(features: np.ndarray, xy: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    """The labels' silhouette scores in feature space and in the 2D map; ``None`` for one label."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return None, None
    return float(silhouette_score(features, labels)), float(silhouette_score(xy, labels))

"""Local-feature embedding per anatomical label: balanced voxel sampling, t-SNE, silhouette.

The features are read at the sampled voxels from one level of the U-Net's decoder, or from all
four concatenated (hypercolumns, :data:`gvsl_app.options.FeatureLevel`); every level is scored
(silhouette and 5-NN accuracy of the labels) so a user sees which one separates the structures.
"""

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
from gvsl_app.io.geometry import geometry_differences
from gvsl_app.io.jsonio import dumps_strict
from gvsl_app.io.volume import Volume
from gvsl_app.options import FeatureLevel
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
        level: The feature level embedded (:class:`gvsl_app.options.FeatureLevel`: ``decoder-1``
            (1/8 resolution) ... ``decoder-4`` (full resolution, the last decoder level) or
            ``hypercolumn``, the four concatenated).
        feature_dim: The channels of the embedded features.
        points_per_label: Voxels embedded per label (keyed by the label value as a string).
        silhouette_features: The labels' silhouette score in feature space (``None``: one label).
        silhouette_2d: Their silhouette score in the 2D map (``None``: one label).
        knn5: The labels' 5-nearest-neighbour accuracy in feature space (:func:`knn_accuracy`;
            ``None``: one label).
        levels: Every level's ``feature_dim``, ``silhouette`` and ``knn5`` on the same voxels,
            keyed by level name (coarse to fine, then ``hypercolumn``).
        seconds: ``features_s``, ``scores_s`` and ``tsne_s``.
    """

    image: str
    labels: str
    weights: str
    n_points: int
    per_label: int
    seed: int
    working_size: int
    level: str
    feature_dim: int
    points_per_label: dict[str, int]
    silhouette_features: float | None
    silhouette_2d: float | None
    knn5: float | None
    levels: dict[str, dict[str, Any]]
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


MAX_LABELS = 1000
"""The most distinct labels ``embed`` takes: a structure per label, a colour and a list row each
(anatomical atlases have tens to a few hundred). A map of tens of thousands of values (an
instance map, an image read as labels) is refused up front: the per-label sampling alone
scanned the volume once per value (70,000 labels: no output after 300 s)."""

MAX_POINTS = 50_000
"""The most voxels ``embed`` samples in all (labels x ``per_label``): t-SNE of 20,000 points takes
~30 s on 2 cores and the silhouette is quadratic in the points (5 levels are scored)."""


def check_label_count(labels: np.ndarray, per_label: int, source: str = "") -> None:
    """Refuse, naming the file and the count, a label map with more labels than the embedding
    can describe (:data:`MAX_LABELS`) or whose sampling would exceed :data:`MAX_POINTS` voxels.
    One pass over the volume (``np.unique``), before anything is sampled or computed.
    """
    if per_label < 1:
        raise ValueError(f"per_label must be >= 1, got {per_label}")
    values, counts = np.unique(labels[labels != 0], return_counts=True)
    src = source or "the label map"
    if len(values) > MAX_LABELS:
        raise ValueError(
            f"{src}: {len(values)} distinct labels; embedding describes at most {MAX_LABELS} structures "
            "(a structure per label: is this an instance map or an image rather than a label map?)"
        )
    n = int(np.minimum(counts, per_label).sum())
    if n > MAX_POINTS:
        raise ValueError(
            f"{src}: {len(values)} labels x up to {per_label} voxels each would sample {n} voxels; embedding "
            f"takes at most {MAX_POINTS} (t-SNE and the silhouette would run for many minutes): lower --per-label"
        )


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


DECODER_LEVELS = ("up1", "up2", "up3", "up4")
"""The U-Net's decoder modules, coarse to fine: the outputs named ``decoder-1`` ... ``decoder-4``."""

HYPERCOLUMN = "hypercolumn"


def level_names() -> tuple[str, ...]:
    """The feature levels in report order: ``decoder-1`` ... ``decoder-4``, ``hypercolumn``."""
    return FeatureLevel.values()


@torch.no_grad()
def decoder_features(model: GVSL, image: np.ndarray, size: int, device: torch.device) -> list[torch.Tensor]:
    """Each decoder level's features ``(C_k, s_k, s_k, s_k)`` of a normalised image on a
    ``size^3`` working cube, coarse to fine (``s_k`` = ``size`` / 8, / 4, / 2, 1); the last is
    :func:`local_features`. Read from forward hooks: one pass, nothing upsampled.
    """
    x = torch.from_numpy(resize_array(image, (size,) * 3))[None, None].to(device)
    out: dict[str, torch.Tensor] = {}
    unet = model.to(device).eval().unet
    hooks = [
        getattr(unet, name).register_forward_hook(lambda _m, _i, o, name=name: out.__setitem__(name, o[0].float()))
        for name in DECODER_LEVELS
    ]
    try:
        model.features(x)
    finally:
        for h in hooks:
            h.remove()
    return [out[name].cpu() for name in DECODER_LEVELS]


def features_per_level(levels: list[torch.Tensor], voxels: np.ndarray, shape: tuple[int, int, int]) -> dict:
    """Features ``(n, C)`` of every level at input-grid ``voxels``: each decoder level read
    trilinearly at the voxels (corners aligned, as the decoder's own upsampling is, so reading
    a coarse level equals upsampling it to the finest grid and reading there), and
    ``hypercolumn``, those four concatenated. Only the sampled voxels are ever gathered: no
    level is upsampled as a whole.
    """
    names = level_names()
    per = {name: features_at(f.numpy(), voxels, shape) for name, f in zip(names, levels)}
    per[HYPERCOLUMN] = np.concatenate([per[name] for name in names[: len(levels)]], axis=1)
    return per


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float | None:
    """Leave-one-out ``k``-nearest-neighbour accuracy of ``labels`` in per-channel standardised
    feature space (as t-SNE sees them): the share of points whose ``k`` nearest other points
    vote for their own label (a tie goes to the smaller label). Whether structures are locally
    separable even where they do not form the compact clusters the silhouette asks for; chance
    is about 1 / the number of labels. ``None`` for one label.
    """
    from sklearn.neighbors import NearestNeighbors

    values, codes = np.unique(labels, return_inverse=True)
    if len(values) < 2:
        return None
    k = min(k, len(labels) - 1)
    z = (features - features.mean(0)) / (features.std(0) + 1e-6)
    nbrs = NearestNeighbors(n_neighbors=k).fit(z).kneighbors(return_distance=False)  # excludes the point itself
    votes = np.zeros((len(labels), len(values)), np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(labels)), k), codes[nbrs].ravel()), 1)
    return float(np.mean(votes.argmax(1) == codes))


def score_levels(per_level: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, dict[str, Any]]:
    """Every level's ``feature_dim``, ``silhouette`` (raw features) and ``knn5`` for ``labels``."""
    out: dict[str, dict[str, Any]] = {}
    for name, x in per_level.items():
        sil, _ = _silhouettes(x, None, labels)
        out[name] = {"feature_dim": int(x.shape[1]), "silhouette": sil, "knn5": knn_accuracy(x, labels)}
    return out


def level_scores(
    model: GVSL, image: Volume, labels: np.ndarray, per_label: int, seed: int, size: int, device: torch.device
) -> dict[str, dict[str, Any]]:
    """:func:`score_levels` of ``model`` on ``image`` for the structures of ``labels`` (its
    array), on the voxels :func:`embed` samples with the same ``per_label`` and ``seed``: every
    level's silhouette and 5-NN accuracy without the t-SNE.
    """
    vox = sample_voxels(labels, per_label, seed)
    levels = decoder_features(model, normalise(image), size, device)
    return score_levels(features_per_level(levels, vox, image.shape), labels[tuple(vox.T)])


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
    level: str = "decoder-4",
    device: str = "auto",
    progress: Callable[[str, float], None] | None = None,
) -> EmbedResult:
    """Embed the features of labelled voxels at one level with t-SNE and score their clustering.

    Features are computed on a ``size^3`` working cube and read (trilinearly) at the
    sampled voxels' positions from each decoder level; ``level`` (a
    :class:`gvsl_app.options.FeatureLevel`: ``decoder-1`` ... ``decoder-4``, the last decoder
    level and the default, or ``hypercolumn``) is embedded. The silhouette score of the labels
    is reported in feature space and in the 2D map (scikit-learn) and their 5-NN accuracy in
    feature space, ``None`` when only one label is present; ``levels`` in the report scores
    every level on the same voxels. ``labels`` must lie on ``image``'s grid (shape, spacing,
    origin, direction), else ``ValueError``; a label map with more labels (or voxels to
    sample) than :data:`MAX_LABELS` (:data:`MAX_POINTS`) is refused before any work.
    """
    level = str(level)
    if level not in level_names():
        raise ValueError(f"level must be one of {', '.join(level_names())}, got {level!r}")
    clock = StageClock(progress)
    _check_on_grid(labels, image)
    check_label_count(np.asarray(labels.array), per_label, labels.source)
    check_enough_voxels(np.asarray(labels.array), per_label, labels.source)
    vox = sample_voxels(np.asarray(labels.array), per_label, seed)
    dev = resolve_device(device)
    with clock.stage("features", 0.1):
        info = "given model"
        if model is None:
            model, info = load_gvsl(weights, dev)
        per_level = features_per_level(decoder_features(model, normalise(image), size, dev), vox, image.shape)
        x = per_level[level]
        lab = np.asarray(labels.array)[tuple(vox.T)]
    with clock.stage("scores", 0.3):
        levels = score_levels(per_level, lab)
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
        level=level,
        feature_dim=int(x.shape[1]),
        points_per_label={str(int(v)): int(c) for v, c in zip(*np.unique(lab, return_counts=True))},
        silhouette_features=sil_features,
        silhouette_2d=sil_2d,
        knn5=levels[level]["knn5"],
        levels=levels,
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


def _silhouettes(features: np.ndarray, xy: np.ndarray | None, labels: np.ndarray) -> tuple[float | None, float | None]:
    """The labels' silhouette scores in feature space and in the 2D map (``None`` without one);
    ``None`` for one label.
    """
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return None, None
    return float(silhouette_score(features, labels)), None if xy is None else float(silhouette_score(xy, labels))

"""Clustering of the local features (cf. the paper's Fig. 7): the silhouette of the seven cardiac
structures in feature space for each method, and the t-SNE points of its figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .plan import Budget
from .stats import mean_std


def _scratch_gvsl(budget: Budget, seed: int):
    """The Scratch method's network: a GVSL initialised at random from the study seed."""
    import torch

    from models import GVSL, widths_from_base

    torch.manual_seed(seed)
    return GVSL(widths=widths_from_base(budget.width)).eval()


def _read_pair(folder: Path, name: str):
    """Image and label map of the case ``name`` of a data-set folder."""
    from gvsl_app.data.datasets import images_folder, list_volume_files
    from gvsl_app.io.images import read_labels, read_volume

    img_file = list_volume_files(images_folder(folder))[name]
    lab_file = list_volume_files(folder / "labels")[name]
    image = read_volume(img_file)
    return image, read_labels(lab_file, reference=image)


def feature_silhouette(model, image, labels, budget: Budget, seed: int, device) -> float:
    """Silhouette of the labels in local-feature space (as ``embed``'s ``silhouette_features``)."""
    from sklearn.metrics import silhouette_score

    from gvsl_app.data.preprocess import normalise
    from gvsl_app.services.embed import features_at, local_features, sample_voxels

    lab_arr = np.asarray(labels.array)
    vox = sample_voxels(lab_arr, budget.per_label, seed)
    feats = local_features(model, normalise(image), budget.size, device)
    x = features_at(feats, vox, image.shape)
    lab = lab_arr[tuple(vox.T)]
    if len(np.unique(lab)) < 2:
        return float("nan")
    return float(silhouette_score(x, lab))


def clustering(
    budget: Budget, method: str, seed: int, ckpt: str | None, embed_dir: Path, device: str, figure: bool
) -> dict:
    """Silhouette (mean over the embedding subjects) and, for ``figure``, the t-SNE points."""
    from gvsl_app.data.datasets import list_cases
    from gvsl_app.services.embed import embed
    from gvsl_app.services.weights import load_gvsl
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
            res = embed(
                image, labels, model=model, per_label=budget.per_label, size=budget.size, seed=seed, device=device
            )
            result.update(xy=res.xy, labels=res.labels, silhouette_2d=res.report.get("silhouette_2d"))
    result["silhouette"] = mean_std(sils)[0]
    result["per_subject"] = sils
    return result

"""Labelled datasets for the downstream tasks: segmentation crops and classification volumes.

Cases come from a data folder (``images/`` and ``labels/``, or ``labels.csv`` for classes; see
:mod:`gvsl_app.io.folders`). Every item draws its randomness from ``(seed, epoch, index)`` alone
(see :mod:`gvsl_app.data.loading`), so what it holds does not depend on the worker, the DDP
rank or what was loaded before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from gvsl_app.data.augment import SpatialAugment
from gvsl_app.data.dataset_io import normalise_input, read_image, read_label, resize
from gvsl_app.data.loading import item_seed, split_key
from gvsl_app.io.folders import DatasetError, images_folder, label_files, require_volumes
from gvsl_app.io.label_csv import binary_classes, read_label_csv
from gvsl_app.io.volume import Volume

logger = logging.getLogger(__name__)

__all__ = ["LabelledDataset", "load_labelled_volumes", "ClassificationDataset"]


# --------------------------------------------------------------------------- labelled volumes


def _resolve_names(folder: Path, names: Sequence[str] | None) -> tuple[list[str], dict[str, Path]]:
    """The cases to use (all by default, sorted) and their image files; unknown names are refused."""
    images = require_volumes(images_folder(folder))
    if names is None:
        names = sorted(images)
    names = list(names)
    if not names:
        raise DatasetError(f"{folder}: the list of cases to use is empty.")
    unknown = [n for n in names if n not in images]
    if unknown:
        raise DatasetError(f"{folder}: no image for case(s) {', '.join(unknown[:10])} in {images_folder(folder)}.")
    return names, {n: images[n] for n in names}


def load_labelled_volumes(
    folder: str | os.PathLike, names: Sequence[str] | None = None, modality: str | None = "auto"
) -> list[tuple[np.ndarray, np.ndarray, Volume]]:
    """Whole volumes for validation/test: ``[(image normalised float32, label array, image Volume)]``.

    At the native resolution (sliding-window inference works on them); the label map must
    lie on the image's grid (checked by :func:`gvsl_app.io.images.read_labels`).
    """
    folder = Path(folder)
    names, images = _resolve_names(folder, names)
    labels = label_files(folder, names)
    out = []
    for n in names:
        vol = read_image(images[n])
        lab = read_label(labels[n], vol)
        out.append((normalise_input(vol, modality), np.asarray(lab.array), vol))
    return out


def _pad_to(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    pad = [(0, max(0, int(s) - n)) for n, s in zip(arr.shape, shape)]
    return np.pad(arr, pad) if any(p for _, p in pad) else arr


class LabelledDataset(Dataset):
    """Images with label maps for segmentation fine-tuning.

    ``LabelledDataset(folder, names=None, *, patch=P)``: random ``P^3`` crops (at the native
    resolution, volumes smaller than P zero-padded) with a foreground bias: with probability
    ``foreground_prob`` the crop contains a random foreground voxel (anywhere in the crop),
    otherwise it is uniform. ``size=S`` instead resizes every volume to ``S^3`` (labels
    nearest) and returns whole cubes (with ``patch`` too: crops of the resized volumes).
    ``spatial``: an optional :class:`SpatialAugment` applied to image and label together
    (labels nearest). Items: ``{"image": (1, P, P, P) float32, "label": (P, P, P) int64}``.
    ``length`` defaults to the number of volumes; any index >= 0 is valid (volume
    ``index % n``, crop from the item's own generator).
    """

    supports_epoch_keys = True

    def __init__(
        self,
        folder: str | os.PathLike,
        names: Sequence[str] | None = None,
        *,
        patch: int | None = None,
        size: int | None = None,
        seed: int = 0,
        foreground_prob: float = 2 / 3,
        length: int | None = None,
        spatial: SpatialAugment | None = None,
        modality: str | None = "auto",
        max_foreground_samples: int = 20000,
    ) -> None:
        self.folder = Path(folder)
        self.patch = None if patch is None else int(patch)
        self.size = None if size is None else int(size)
        self.seed, self.epoch = int(seed), 0
        self.foreground_prob, self.spatial = float(foreground_prob), spatial
        self.names = _resolve_names(self.folder, names)[0]
        data = load_labelled_volumes(self.folder, self.names, modality)
        self.images, self.labels, self.foreground = [], [], []
        rng = np.random.default_rng(self.seed)
        for img, lab, _ in data:
            if self.size is not None:
                img, lab = resize(img, self.size), resize(lab, self.size, is_label=True)
            if self.patch is not None:
                img, lab = _pad_to(img, (self.patch,) * 3), _pad_to(lab, (self.patch,) * 3)
            fg = np.flatnonzero(lab > 0)
            if fg.size > max_foreground_samples:
                fg = np.sort(rng.choice(fg, max_foreground_samples, replace=False))
            self.images.append(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)))
            self.labels.append(
                torch.from_numpy(np.ascontiguousarray(lab).astype(np.int16 if lab.max() < 32768 else np.int64))
            )
            self.foreground.append(fg)
        shapes = {tuple(t.shape) for t in self.images}
        if self.patch is None and len(shapes) > 1:
            logger.info(
                "%s: volumes of different shapes %s; batch them one at a time or pass patch/size", folder, shapes
            )
        self.n_classes = max(2, int(max(int(l.max()) for l in self.labels)) + 1)
        self.length = len(self.images) if length is None else int(length)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (in this process; samplers pass it in the key)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _crop_start(self, v: int, rng: np.random.Generator) -> tuple[int, ...]:
        shape, p = self.images[v].shape, self.patch
        assert p is not None, "_crop_start is only called for patch-wise sampling"
        fg = self.foreground[v]
        if fg.size and rng.random() < self.foreground_prob:
            centre = np.unravel_index(int(fg[rng.integers(fg.size)]), shape)
            return tuple(int(np.clip(c - rng.integers(p), 0, n - p)) for c, n in zip(centre, shape))
        return tuple(int(rng.integers(n - p + 1)) for n in shape)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = split_key(key, self.epoch)
        s = item_seed(self.seed, epoch, index)
        v = index % len(self.images)
        img, lab = self.images[v], self.labels[v]
        if self.patch is not None:
            rng = np.random.default_rng(s)
            z, y, x = self._crop_start(v, rng)
            p = self.patch
            img, lab = img[z : z + p, y : y + p, x : x + p], lab[z : z + p, y : y + p, x : x + p]
        img, lab = img[None, None].float(), lab[None, None]
        if self.spatial is not None:
            img, lab = self.spatial(img, lab.long(), generator=torch.Generator().manual_seed(s))
        return {"image": img[0].contiguous(), "label": lab[0, 0].long().contiguous()}


# --------------------------------------------------------------------------- classification


class ClassificationDataset(Dataset):
    """Whole volumes resized to ``size^3`` with one class each, from ``labels.csv``.

    ``labels.csv`` has rows ``name,label`` (an optional ``name,label`` header; names with or
    without file ending) with exactly two classes: ``0``/``1``, or two names mapped to 0/1 in
    sorted order (``classes`` lists them); anything else is refused (see
    :func:`gvsl_app.io.label_csv.binary_classes`). ``names`` restricts the cases. Every case of
    the CSV (or of ``names``) must have an image, else :class:`DatasetError` names them.
    Items: ``{"image": (1, S, S, S) float32, "label": int64 scalar}``; any index >= 0 is
    valid (``index % n``); ``spatial`` optionally augments the image.
    """

    supports_epoch_keys = True

    def __init__(
        self,
        folder: str | os.PathLike,
        size: int,
        *,
        names: Sequence[str] | None = None,
        csv_name: str = "labels.csv",
        modality: str | None = "auto",
        seed: int = 0,
        spatial: SpatialAugment | None = None,
    ) -> None:
        self.folder, self.size, self.seed, self.epoch, self.spatial = Path(folder), int(size), int(seed), 0, spatial
        images = require_volumes(images_folder(self.folder))
        rows = dict(read_label_csv(self.folder / csv_name))
        missing = sorted(n for n in rows if n not in images)
        if missing:
            raise DatasetError(
                f"{self.folder / csv_name} names {len(missing)} case(s) without an image in "
                f"{images_folder(self.folder)}: {', '.join(missing[:10])}."
            )
        if names is None:
            names = sorted(rows)
        names = list(names)
        unlisted = [n for n in names if n not in rows]
        if unlisted:
            raise DatasetError(f"{self.folder / csv_name}: no label for case(s) {', '.join(unlisted[:10])}.")
        if not names:
            raise DatasetError(f"{self.folder}: the list of cases to use is empty.")
        self.classes, to_int = binary_classes(self.folder / csv_name, rows)
        self.names = names
        self.targets = [int(to_int(rows[n])) for n in names]
        cube = (self.size,) * 3
        self.images = torch.from_numpy(
            np.stack([resize(normalise_input(read_image(images[n]), modality), cube) for n in names]).astype(np.float32)
        )[:, None]

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (in this process; samplers pass it in the key)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = split_key(key, self.epoch)
        k = index % len(self.names)
        img = self.images[k : k + 1]
        if self.spatial is not None:
            img = self.spatial(img, generator=torch.Generator().manual_seed(item_seed(self.seed, epoch, index)))
        return {"image": img[0].clone(), "label": torch.tensor(self.targets[k], dtype=torch.int64)}

"""Datasets: GVSL pre-training pairs, labelled crops, classification volumes.

Data folders and their split live in :mod:`gvsl_app.data_folders`; per-item randomness,
sharding and the DataLoader recipe in :mod:`gvsl_app.loading` (both re-exported here).
Every item draws its randomness from ``(seed, epoch, index)`` alone, so what it holds does
not depend on the worker, the DDP rank or what was loaded before.

Where augmentation runs: in the DataLoader workers, per item, on CPU (one thread per
worker, which PyTorch sets in workers). The training loop only receives finished tensors
(prefetched, pinned when CUDA is used), so it never waits on augmentation as long as the
workers keep up, and :mod:`benchmarks.bench_augment` measures that they do. The
transforms are device-agnostic, so a loop whose workers cannot keep up (a fast GPU at
128^3 with few CPU cores) can build ``PairDataset(..., augment=False)`` and call
:class:`gvsl_app.augment.GVSLPairAugment` on the batch on the GPU instead (a few ms),
seeding a device generator from ``batch["seed"]`` (see :func:`batch_generator`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import AppearanceTransform, GVSLPairAugment, RandomAffine, SpatialAugment
from .data_folders import (VOLUME_SUFFIXES, DatasetError, label_files, require_volumes, images_folder,
                           list_cases, list_volume_files, split_names)
from .label_csv import binary_classes, read_label_csv
from .loading import (EpochShardSampler, batch_generator, item_generator, item_seed, make_loader, split_key,
                      worker_init)
from .volume import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetError", "VOLUME_SUFFIXES", "images_folder", "list_volume_files", "list_cases", "split_names",
    "item_seed", "item_generator", "PairDataset", "validation_pair", "LabelledDataset", "load_labelled_volumes",
    "ClassificationDataset", "EpochShardSampler", "make_loader", "worker_init", "batch_generator",
]

SYNTHETIC_PREFIX = "synthetic:"


# --------------------------------------------------------------------------- loading

def _normalise(vol_or_array, modality: str | None) -> np.ndarray:
    if modality is None:  # arrays already scaled to [0, 1]
        arr = vol_or_array.array if isinstance(vol_or_array, Volume) else np.asarray(vol_or_array)
        return np.clip(np.nan_to_num(arr.astype(np.float32, copy=False)), 0.0, 1.0)
    from .preprocess import normalise

    return normalise(vol_or_array, modality)


def _resize(array: np.ndarray, shape, is_label: bool = False) -> np.ndarray:
    from .preprocess import resize_array

    return resize_array(array, shape, is_label=is_label)


def _read_image(path: Path) -> Volume:
    from .io import read_volume

    return read_volume(path)


def _read_label(path: Path, reference: Volume) -> Volume:
    from .io import read_labels

    return read_labels(path, reference=reference)


SYNTHETIC_KINDS = ("cardiac", "brain")


def _parse_synthetic(source: str) -> tuple[tuple[str, ...], int | None]:
    """``synthetic:KIND[+KIND...][:N]`` -> the kinds and N (None when not given)."""
    rest = source[len(SYNTHETIC_PREFIX):]
    kind, _, count = rest.partition(":")
    kinds = tuple(kind.split("+"))
    if not kinds or any(k not in SYNTHETIC_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise DatasetError(f"unknown synthetic source {source!r}; available: synthetic:cardiac[:N], "
                           "synthetic:brain[:N], synthetic:cardiac+brain[:N] (N subjects of each kind)")
    if count:
        try:
            return kinds, int(count)
        except ValueError:
            raise DatasetError(f"{source!r}: the subject count after the second ':' must be an integer") from None
    return kinds, None


def _synthetic_subject(kind: str, seed: int, size: int):
    """Image of one synthetic subject of ``kind`` on a ``size^3`` grid and its modality."""
    if kind == "brain":
        from .brain import make_brain_subject

        return make_brain_subject(seed, (size,) * 3)[0], "mr"
    from .synthetic import make_cardiac_subject

    return make_cardiac_subject(seed, (size,) * 3)[0], "ct"


# --------------------------------------------------------------------------- pre-training pairs

RELATIVE_POSE = RandomAffine(rotation_deg=10.0, scale=0.1, shear_deg=3.0, translation=0.06)
"""The moving scan's extra pose change with ``relative_pose=True``: about what separates two
scans of the same region from different scanners (rotation +-10 degrees, scale +-10 %, shift
+-6 % of the field of view)."""

class PairDataset(Dataset):
    """GVSL pre-training pairs: two different subjects, the same spatial augmentation on both.

    ``source``: a data folder (``images/*`` or the folder itself, any SimpleITK format), a
    sequence of in-memory arrays / :class:`Volume` objects, or ``"synthetic:cardiac"``
    (``n_synthetic`` subjects from :func:`gvsl_app.synthetic.make_cardiac_subject`, subject
    ``i`` seeded with ``subject_seed(seed, i)``; ``"synthetic:cardiac:N"`` sets N),
    ``"synthetic:brain"`` (MNI-derived MR subjects, :func:`gvsl_app.brain.make_brain_subject`)
    or ``"synthetic:cardiac+brain"`` (both; a pair is always two scans of one kind). Every
    volume is normalised to [0, 1] (``modality``: ``"auto"``, ``"ct"``, ``"mr"``, or
    ``None`` for arrays already in [0, 1]) and resized to ``size^3`` once, at construction
    (kept in memory as one ``(N, 1, S, S, S)`` float32 tensor).

    Item ``key`` (an index, or ``(epoch, index)``; any index >= 0 is valid, ``length`` is
    only the epoch length): the pair ``(moving, fixed)`` is drawn with the item's own
    generator, both are warped with one spatial draw (``spatial``: ``True`` for the default
    :class:`SpatialAugment`, an instance, or ``False``), and ``moving_input`` is the
    appearance-transformed moving scan (``appearance``: ``True``/instance/``False``).
    ``relative_pose`` (``True`` for :data:`RELATIVE_POSE`, or a :class:`RandomAffine`) also
    moves the moving scan alone, so the pair differs in pose as well as in anatomy.
    Returns ``{"moving", "fixed", "moving_input"}`` float32 ``(1, S, S, S)``, ``"pair"``
    (the two subject indices) and ``"seed"`` (the item seed). ``augment=False`` returns the
    un-augmented pair (``moving_input`` = ``moving``) for on-device augmentation.
    """

    supports_epoch_keys = True

    def __init__(self, source, size: int, *, length: int | None = None, seed: int = 0,
                 spatial: "bool | SpatialAugment" = True, appearance: "bool | object" = True,
                 augment: bool = True, n_synthetic: int = 16, modality: str | None = "auto",
                 relative_pose: "bool | RandomAffine" = False) -> None:
        self.size = int(size)
        if self.size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        self.seed, self.epoch = int(seed), 0
        self.groups: list[list[int]] = []  # pairs are drawn within one group (one kind of scan)
        self.names, arrays = self._load(source, int(n_synthetic), modality)
        if not self.groups:
            self.groups = [list(range(len(arrays)))]
        if len(arrays) < 2:
            raise DatasetError(f"{self._describe(source)}: GVSL pairs need at least 2 volumes, found {len(arrays)}.")
        cube = (self.size,) * 3
        self.volumes = torch.from_numpy(np.stack([_resize(a, cube) for a in arrays]).astype(np.float32))[:, None]
        self.length = len(self.names) if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        sp = SpatialAugment() if spatial is True else (spatial or None)
        ap = AppearanceTransform() if appearance is True else (appearance or None)
        rel = RELATIVE_POSE if relative_pose is True else (relative_pose or None)
        self.augmenter = GVSLPairAugment(sp, ap, rel)
        self.augment = bool(augment)

    @staticmethod
    def _describe(source) -> str:
        return str(source) if isinstance(source, (str, os.PathLike)) else f"{type(source).__name__} of volumes"

    def _load(self, source, n_synthetic: int, modality) -> tuple[list[str], list[np.ndarray]]:
        if isinstance(source, str) and source.startswith(SYNTHETIC_PREFIX):
            kinds, count = _parse_synthetic(source)
            n = count if count is not None else n_synthetic
            if n < 2:
                raise DatasetError(f"{source}: GVSL pairs need at least 2 subjects, got n={n}.")
            from .synthetic import subject_seed

            names, arrays = [], []
            for kind in kinds:
                group = []
                for i in range(n):
                    image, kind_modality = _synthetic_subject(kind, subject_seed(self.seed, i), self.size)
                    group.append(len(names))
                    names.append(f"synthetic_{i:03d}" if kinds == ("cardiac",) else f"{kind}_{i:03d}")
                    arrays.append(_normalise(image, kind_modality if modality == "auto" else modality))
                self.groups.append(group)
            return names, arrays
        if isinstance(source, (str, os.PathLike)):
            files = require_volumes(images_folder(source))
            names = sorted(files)
            return names, [_normalise(_read_image(files[n]), modality) for n in names]
        if isinstance(source, (list, tuple)):
            arrays = []
            for k, item in enumerate(source):
                arr = item.array if isinstance(item, Volume) else np.asarray(item)
                if arr.ndim != 3:
                    raise DatasetError(f"volume {k} of the list has shape {arr.shape}; 3D (z, y, x) arrays are expected.")
                arrays.append(_normalise(item, modality))
            return [f"volume_{k:03d}" for k in range(len(arrays))], arrays
        raise TypeError(f"PairDataset source must be a folder, 'synthetic:cardiac' or a list of arrays, "
                        f"got {type(source).__name__}")

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (in this process; samplers pass it in the key)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def choose_pair(self, g: torch.Generator) -> tuple[int, int]:
        """Two different subjects of one group (a group chosen in proportion to its size)."""
        group = self.groups[0]
        if len(self.groups) > 1:
            sizes = torch.tensor([len(gr) for gr in self.groups], dtype=torch.float64)
            group = self.groups[int(torch.multinomial(sizes, 1, generator=g))]
        n = len(group)
        i, j = torch.randint(n, (1,), generator=g).item(), torch.randint(n - 1, (1,), generator=g).item()
        return group[i], group[j + (j >= i)]

    def __getitem__(self, key) -> dict:
        epoch, index = split_key(key, self.epoch)
        s = item_seed(self.seed, epoch, index)
        g = torch.Generator().manual_seed(s)
        i, j = self.choose_pair(g)
        moving, fixed = self.volumes[i:i + 1], self.volumes[j:j + 1]
        if self.augment:
            moving, fixed, moving_input = self.augmenter(moving, fixed, g)
        else:
            moving_input = moving
        return {"moving": moving[0].clone(), "fixed": fixed[0].clone(), "moving_input": moving_input[0].clone(),
                "pair": torch.tensor([i, j]), "seed": torch.tensor(s, dtype=torch.int64)}


def validation_pair(dataset: PairDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, un-augmented pair ``(moving, fixed)``, each ``(1, 1, S, S, S)``: subjects 0 and 1."""
    return dataset.volumes[0:1].clone(), dataset.volumes[1:2].clone()


# --------------------------------------------------------------------------- labelled volumes

def _resolve_names(folder: Path, names: Sequence[str] | None) -> tuple[list[str], dict[str, Path]]:
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


def load_labelled_volumes(folder: str | os.PathLike, names: Sequence[str] | None = None,
                          modality: str | None = "auto") -> list[tuple[np.ndarray, np.ndarray, Volume]]:
    """Whole volumes for validation/test: ``[(image normalised float32, label array, image Volume)]``.

    At the native resolution (sliding-window inference works on them); the label map must
    lie on the image's grid (checked by :func:`gvsl_app.io.read_labels`).
    """
    folder = Path(folder)
    names, images = _resolve_names(folder, names)
    labels = label_files(folder, names)
    out = []
    for n in names:
        vol = _read_image(images[n])
        lab = _read_label(labels[n], vol)
        out.append((_normalise(vol, modality), np.asarray(lab.array), vol))
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

    def __init__(self, folder: str | os.PathLike, names: Sequence[str] | None = None, *, patch: int | None = None,
                 size: int | None = None, seed: int = 0, foreground_prob: float = 2 / 3, length: int | None = None,
                 spatial: SpatialAugment | None = None, modality: str | None = "auto",
                 max_foreground_samples: int = 20000) -> None:
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
                img, lab = _resize(img, self.size), _resize(lab, self.size, is_label=True)
            if self.patch is not None:
                img, lab = _pad_to(img, (self.patch,) * 3), _pad_to(lab, (self.patch,) * 3)
            fg = np.flatnonzero(lab > 0)
            if fg.size > max_foreground_samples:
                fg = np.sort(rng.choice(fg, max_foreground_samples, replace=False))
            self.images.append(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)))
            self.labels.append(torch.from_numpy(np.ascontiguousarray(lab).astype(np.int16 if lab.max() < 32768 else np.int64)))
            self.foreground.append(fg)
        shapes = {tuple(t.shape) for t in self.images}
        if self.patch is None and len(shapes) > 1:
            logger.info("%s: volumes of different shapes %s; batch them one at a time or pass patch/size", folder, shapes)
        self.n_classes = max(2, int(max(int(l.max()) for l in self.labels)) + 1)
        self.length = len(self.images) if length is None else int(length)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _crop_start(self, v: int, rng: np.random.Generator) -> tuple[int, ...]:
        shape, p = self.images[v].shape, self.patch
        fg = self.foreground[v]
        if fg.size and rng.random() < self.foreground_prob:
            centre = np.unravel_index(int(fg[rng.integers(fg.size)]), shape)
            return tuple(int(np.clip(c - rng.integers(p), 0, n - p)) for c, n in zip(centre, shape))
        return tuple(int(rng.integers(n - p + 1)) for n in shape)

    def __getitem__(self, key) -> dict:
        epoch, index = split_key(key, self.epoch)
        s = item_seed(self.seed, epoch, index)
        v = index % len(self.images)
        img, lab = self.images[v], self.labels[v]
        if self.patch is not None:
            rng = np.random.default_rng(s)
            z, y, x = self._crop_start(v, rng)
            p = self.patch
            img, lab = img[z:z + p, y:y + p, x:x + p], lab[z:z + p, y:y + p, x:x + p]
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
    :func:`gvsl_app.label_csv.binary_classes`). ``names`` restricts the cases. Every case of
    the CSV (or of ``names``) must have an image, else :class:`DatasetError` names them.
    Items: ``{"image": (1, S, S, S) float32, "label": int64 scalar}``; any index >= 0 is
    valid (``index % n``); ``spatial`` optionally augments the image.
    """

    supports_epoch_keys = True

    def __init__(self, folder: str | os.PathLike, size: int, *, names: Sequence[str] | None = None,
                 csv_name: str = "labels.csv", modality: str | None = "auto", seed: int = 0,
                 spatial: SpatialAugment | None = None) -> None:
        self.folder, self.size, self.seed, self.epoch, self.spatial = Path(folder), int(size), int(seed), 0, spatial
        images = require_volumes(images_folder(self.folder))
        rows = dict(read_label_csv(self.folder / csv_name))
        missing = sorted(n for n in rows if n not in images)
        if missing:
            raise DatasetError(f"{self.folder / csv_name} names {len(missing)} case(s) without an image in "
                               f"{images_folder(self.folder)}: {', '.join(missing[:10])}.")
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
        self.images = torch.from_numpy(np.stack(
            [_resize(_normalise(_read_image(images[n]), modality), cube) for n in names]).astype(np.float32))[:, None]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key) -> dict:
        epoch, index = split_key(key, self.epoch)
        k = index % len(self.names)
        img = self.images[k:k + 1]
        if self.spatial is not None:
            img = self.spatial(img, generator=torch.Generator().manual_seed(item_seed(self.seed, epoch, index)))
        return {"image": img[0].clone(), "label": torch.tensor(self.targets[k], dtype=torch.int64)}

"""Datasets and loaders: GVSL pre-training pairs, labelled crops, classification volumes.

Data folders follow DESIGN.md: ``images/NAME.<ext>`` (any format SimpleITK reads, or a
DICOM series folder), ``labels/NAME.<ext>`` for segmentation, ``labels.csv``
(``name,label``) for classification. A folder without ``images/`` is read as the images
folder itself (pre-training needs no labels).

Randomness is a pure function of ``(seed, epoch, index)``: every item builds its own
generator from those three numbers, so what an item holds does not depend on which worker
process or DDP rank loads it, on the number of workers, or on what was loaded before. An
index is either an ``int`` (the dataset's ``epoch`` attribute is used, 0 by default: a
step-based sampler that hands out ever-growing global indices needs nothing else) or an
``(epoch, index)`` tuple, which is what :class:`EpochShardSampler` yields so that the epoch
reaches persistent workers too.

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

import csv
import logging
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import AppearanceTransform, GVSLPairAugment, SpatialAugment
from .volume import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetError", "VOLUME_SUFFIXES", "images_folder", "list_volume_files", "list_cases", "split_names",
    "item_seed", "item_generator", "PairDataset", "validation_pair", "LabelledDataset", "load_labelled_volumes",
    "ClassificationDataset", "EpochShardSampler", "make_loader", "worker_init", "batch_generator",
]

#: File endings read as volumes (longest first); folders are read as DICOM series.
VOLUME_SUFFIXES = (".nii.gz", ".gipl.gz", ".img.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".hdr",
                   ".vtk", ".gipl", ".tif", ".tiff", ".dcm")

SYNTHETIC_PREFIX = "synthetic:"


class DatasetError(ValueError):
    """A data folder or data set that cannot be used; the message says what and how to fix it."""


# --------------------------------------------------------------------------- folders and names

def _suffix(name: str) -> str | None:
    low = name.lower()
    for suf in VOLUME_SUFFIXES:
        if low.endswith(suf):
            return suf
    return None


def images_folder(folder: str | os.PathLike) -> Path:
    """``folder/images`` when it exists, else ``folder`` itself; errors when missing."""
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(f"{folder}: no such data folder; check the path.")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: is a file, a data folder is expected (with images/NAME.nii.gz inside).")
    sub = folder / "images"
    return sub if sub.is_dir() else folder


def list_volume_files(directory: str | os.PathLike) -> dict[str, Path]:
    """``{name: path}`` of the volumes in ``directory`` (name = file name without its ending).

    Hidden files and files with other endings (``.raw`` data of ``.mhd`` headers, ``.csv``...)
    are skipped; sub-folders are taken as DICOM series (except ``images``/``labels``).
    Two files with the same name (``a.nii`` and ``a.nii.gz``) are an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such folder.")
    out: dict[str, Path] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if entry.name in ("images", "labels"):
                continue
            name = entry.name
        else:
            suf = _suffix(entry.name)
            if suf is None:
                continue
            name = entry.name[: -len(suf)]
        if name in out:
            raise DatasetError(f"{directory}: two volumes are named {name!r} ({out[name].name} and {entry.name}); "
                               "keep one.")
        out[name] = entry
    return out


def _require_volumes(directory: Path) -> dict[str, Path]:
    files = list_volume_files(directory)
    if not files:
        raise DatasetError(f"{directory}: no volumes found (looked for files ending in "
                           f"{', '.join(VOLUME_SUFFIXES)} and DICOM series folders).")
    return files


def _label_files(folder: Path, names: Sequence[str]) -> dict[str, Path]:
    lab_dir = Path(folder) / "labels"
    if not lab_dir.is_dir():
        raise DatasetError(f"{folder}: no labels/ folder; segmentation needs labels/NAME.<ext> for every "
                           "images/NAME.<ext>.")
    labels = list_volume_files(lab_dir)
    missing = [n for n in names if n not in labels]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DatasetError(f"{folder}: {len(missing)} image(s) without a label map in labels/: {shown}. "
                           "Add the label maps (same names) or remove those images.")
    return {n: labels[n] for n in names}


def list_cases(folder: str | os.PathLike, need_labels: bool = False) -> list[str]:
    """Sorted case names of a data folder; with ``need_labels`` every one must have a label map."""
    images = _require_volumes(images_folder(folder))
    names = sorted(images)
    if need_labels:
        _label_files(Path(folder), names)
    return names


def split_names(names: Sequence[str], val_fraction: float = 0.2, test_fraction: float = 0.2,
                seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Deterministic train/validation/test split, independent of the order of ``names``.

    Counts are ``round(n * fraction)``, at least one when the fraction is positive and there
    are cases to spare; training always keeps at least one case. Each part is returned sorted.
    """
    for f, what in ((val_fraction, "val_fraction"), (test_fraction, "test_fraction")):
        if not 0.0 <= float(f) < 1.0:
            raise ValueError(f"{what} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    uniq = sorted(set(names))
    if len(uniq) != len(list(names)):
        raise ValueError("split_names: names must be unique")
    n = len(uniq)
    order = [uniq[i] for i in np.random.default_rng(int(seed)).permutation(n)]

    def count(f: float, available: int) -> int:
        k = int(round(n * f))
        if f > 0 and k == 0:
            k = 1
        return max(0, min(k, available))

    n_test = count(test_fraction, n - 1)
    n_val = count(val_fraction, n - 1 - n_test)
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return sorted(train), sorted(val), sorted(test)


# --------------------------------------------------------------------------- per-item randomness

def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, epoch, index)``."""
    if index < 0 or epoch < 0:
        raise IndexError(f"index and epoch must be >= 0, got index {index}, epoch {epoch}")
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(item_seed(seed, epoch, index))


def _split_key(key, default_epoch: int) -> tuple[int, int]:
    if isinstance(key, (tuple, list)):
        epoch, index = key
    else:
        epoch, index = default_epoch, key
    if isinstance(index, torch.Tensor):
        index = int(index)
    if isinstance(epoch, torch.Tensor):
        epoch = int(epoch)
    return int(epoch), int(index)


def batch_generator(batch: dict, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded from a batch's ``seed`` entries (for on-device augmentation)."""
    seeds = batch["seed"].reshape(-1).tolist()
    mixed = np.random.SeedSequence([int(s) & 0xFFFFFFFFFFFFFFFF for s in seeds]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed((int(mixed[0]) << 31) ^ int(mixed[1]))


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


def _parse_synthetic(source: str) -> tuple[str, int | None]:
    rest = source[len(SYNTHETIC_PREFIX):]
    kind, _, count = rest.partition(":")
    if kind != "cardiac":
        raise DatasetError(f"unknown synthetic source {source!r}; available: synthetic:cardiac[:N]")
    if count:
        try:
            return kind, int(count)
        except ValueError:
            raise DatasetError(f"{source!r}: the subject count after the second ':' must be an integer") from None
    return kind, None


# --------------------------------------------------------------------------- pre-training pairs

class PairDataset(Dataset):
    """GVSL pre-training pairs: two different subjects, the same spatial augmentation on both.

    ``source``: a data folder (``images/*`` or the folder itself, any SimpleITK format), a
    sequence of in-memory arrays / :class:`Volume` objects, or ``"synthetic:cardiac"``
    (``n_synthetic`` subjects from :func:`gvsl_app.synthetic.make_cardiac_subject`, subject
    ``i`` seeded with ``subject_seed(seed, i)``; ``"synthetic:cardiac:N"`` sets N). Every
    volume is normalised to [0, 1] (``modality``: ``"auto"``, ``"ct"``, ``"mr"``, or
    ``None`` for arrays already in [0, 1]) and resized to ``size^3`` once, at construction
    (kept in memory as one ``(N, 1, S, S, S)`` float32 tensor).

    Item ``key`` (an index, or ``(epoch, index)``; any index >= 0 is valid, ``length`` is
    only the epoch length): the pair ``(moving, fixed)`` is drawn with the item's own
    generator, both are warped with one spatial draw (``spatial``: ``True`` for the default
    :class:`SpatialAugment`, an instance, or ``False``), and ``moving_input`` is the
    appearance-transformed moving scan (``appearance``: ``True``/instance/``False``).
    Returns ``{"moving", "fixed", "moving_input"}`` float32 ``(1, S, S, S)``, ``"pair"``
    (the two subject indices) and ``"seed"`` (the item seed). ``augment=False`` returns the
    un-augmented pair (``moving_input`` = ``moving``) for on-device augmentation.
    """

    supports_epoch_keys = True

    def __init__(self, source, size: int, *, length: int | None = None, seed: int = 0,
                 spatial: "bool | SpatialAugment" = True, appearance: "bool | object" = True,
                 augment: bool = True, n_synthetic: int = 16, modality: str | None = "auto") -> None:
        self.size = int(size)
        if self.size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        self.seed, self.epoch = int(seed), 0
        self.names, arrays = self._load(source, int(n_synthetic), modality)
        if len(arrays) < 2:
            raise DatasetError(f"{self._describe(source)}: GVSL pairs need at least 2 volumes, found {len(arrays)}.")
        cube = (self.size,) * 3
        self.volumes = torch.from_numpy(np.stack([_resize(a, cube) for a in arrays]).astype(np.float32))[:, None]
        self.length = len(self.names) if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        sp = SpatialAugment() if spatial is True else (spatial or None)
        ap = AppearanceTransform() if appearance is True else (appearance or None)
        self.augmenter = GVSLPairAugment(sp, ap)
        self.augment = bool(augment)

    @staticmethod
    def _describe(source) -> str:
        return str(source) if isinstance(source, (str, os.PathLike)) else f"{type(source).__name__} of volumes"

    def _load(self, source, n_synthetic: int, modality) -> tuple[list[str], list[np.ndarray]]:
        if isinstance(source, str) and source.startswith(SYNTHETIC_PREFIX):
            _, count = _parse_synthetic(source)
            n = count if count is not None else n_synthetic
            if n < 2:
                raise DatasetError(f"{source}: GVSL pairs need at least 2 subjects, got n={n}.")
            from .synthetic import make_cardiac_subject, subject_seed

            names, arrays = [], []
            for i in range(n):
                image, _ = make_cardiac_subject(subject_seed(self.seed, i), (self.size,) * 3)
                names.append(f"synthetic_{i:03d}")
                arrays.append(_normalise(image, "ct" if modality == "auto" else modality))
            return names, arrays
        if isinstance(source, (str, os.PathLike)):
            files = _require_volumes(images_folder(source))
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
        n = self.volumes.shape[0]
        i, j = torch.randint(n, (1,), generator=g).item(), torch.randint(n - 1, (1,), generator=g).item()
        return i, j + (j >= i)

    def __getitem__(self, key) -> dict:
        epoch, index = _split_key(key, self.epoch)
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
    images = _require_volumes(images_folder(folder))
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
    labels = _label_files(folder, names)
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
        epoch, index = _split_key(key, self.epoch)
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

def _read_label_csv(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing; a classification data set needs labels.csv with rows name,label.")
    rows = []
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise DatasetError(f"{path}, line {lineno}: expected 'name,label', got {','.join(row)!r}.")
            name, label = row[0].strip(), row[1].strip()
            if not rows and name.lower() == "name":
                continue  # header
            suf = _suffix(name)
            rows.append((name[: -len(suf)] if suf else name, label))
    if not rows:
        raise DatasetError(f"{path}: no rows; expected lines 'name,label'.")
    seen = set()
    for name, _ in rows:
        if name in seen:
            raise DatasetError(f"{path}: case {name!r} is listed twice.")
        seen.add(name)
    return rows


class ClassificationDataset(Dataset):
    """Whole volumes resized to ``size^3`` with one class each, from ``labels.csv``.

    ``labels.csv`` has rows ``name,label`` (an optional ``name,label`` header; names with or
    without file ending). Integer labels are kept; other labels are mapped to ``0..K-1`` in
    sorted order (``classes`` lists them). ``names`` restricts the cases. Every case of
    the CSV (or of ``names``) must have an image, else :class:`DatasetError` names them.
    Items: ``{"image": (1, S, S, S) float32, "label": int64 scalar}``; any index >= 0 is
    valid (``index % n``); ``spatial`` optionally augments the image.
    """

    supports_epoch_keys = True

    def __init__(self, folder: str | os.PathLike, size: int, *, names: Sequence[str] | None = None,
                 csv_name: str = "labels.csv", modality: str | None = "auto", seed: int = 0,
                 spatial: SpatialAugment | None = None) -> None:
        self.folder, self.size, self.seed, self.epoch, self.spatial = Path(folder), int(size), int(seed), 0, spatial
        images = _require_volumes(images_folder(self.folder))
        rows = dict(_read_label_csv(self.folder / csv_name))
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
        raw = [rows[n] for n in sorted(rows)]
        try:
            values = sorted({int(r) for r in raw})
            self.classes, to_int = values, int
        except ValueError:
            self.classes = sorted(set(raw))
            index = {c: k for k, c in enumerate(self.classes)}
            to_int = index.__getitem__
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
        epoch, index = _split_key(key, self.epoch)
        k = index % len(self.names)
        img = self.images[k:k + 1]
        if self.spatial is not None:
            img = self.spatial(img, generator=torch.Generator().manual_seed(item_seed(self.seed, epoch, index)))
        return {"image": img[0].clone(), "label": torch.tensor(self.targets[k], dtype=torch.int64)}


# --------------------------------------------------------------------------- sampling and loading

class EpochShardSampler(Sampler):
    """DistributedSampler semantics (shuffle per epoch with ``seed + epoch``, pad to a
    multiple of ``world``, rank ``r`` takes every ``world``-th index from ``r``) that yields
    ``(epoch, index)`` keys, so the epoch reaches persistent worker processes.
    Call ``set_epoch(e)`` before each epoch. ``with_epoch=False`` yields plain indices.
    """

    def __init__(self, n: int, *, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True,
                 drop_last: bool = False, with_epoch: bool = True) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, world={world})")
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.rank, self.world = int(n), int(seed), int(rank), int(world)
        self.shuffle, self.drop_last, self.with_epoch, self.epoch = shuffle, drop_last, with_epoch, 0
        self.num_samples = self.n // self.world if drop_last else math.ceil(self.n / self.world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.num_samples * self.world
        if total > len(order):
            order = (order * math.ceil(total / len(order)))[:total]
        order = order[:total][self.rank:total:self.world]
        for i in order:
            yield (self.epoch, i) if self.with_epoch else i

    def __len__(self) -> int:
        return self.num_samples


def worker_init(worker_id: int) -> None:
    """One compute thread per worker (no oversubscription) and seeded numpy/random for any
    third-party code; our own items never use these global generators."""
    import random
    import signal

    # Ctrl-C in a terminal (and a GUI's or a scheduler's kill of the process group) reaches
    # the workers too; they must leave stopping to the main process, which saves last.pt
    # and then shuts them down. Orphaned workers still exit through DataLoader's watchdog.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    s = torch.initial_seed() % 2 ** 32
    np.random.seed(s)
    random.seed(s)


def make_loader(dataset: Dataset, batch: int, workers: int, seed: int, rank: int = 0, world: int = 1, *,
                shuffle: bool = True, drop_last: bool = False, pin_memory: bool | None = None,
                prefetch_factor: int = 4) -> DataLoader:
    """A DataLoader whose batches are reproducible for a given ``(seed, epoch)``.

    Sharding as ``DistributedSampler`` (:class:`EpochShardSampler`; call
    ``loader.sampler.set_epoch(epoch)`` each epoch), persistent workers with
    ``prefetch_factor`` batches each in flight, one thread per worker, ``pin_memory`` when
    CUDA is available (unless told otherwise).
    """
    sampler = EpochShardSampler(len(dataset), seed=seed, rank=rank, world=world, shuffle=shuffle,
                                drop_last=drop_last, with_epoch=getattr(dataset, "supports_epoch_keys", False))
    workers = max(0, int(workers))
    return DataLoader(
        dataset, batch_size=int(batch), sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0, prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(int(seed)),
    )

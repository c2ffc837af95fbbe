"""GVSL pre-training pairs: two different subjects warped by one shared spatial augmentation.

Every item draws its randomness from ``(seed, epoch, index)`` alone (see
:mod:`gvsl_app.data.loading`), so what it holds does not depend on the worker, the DDP rank or
what was loaded before.

Where augmentation runs: in the DataLoader workers, per item, on CPU (one thread per
worker, which PyTorch sets in workers). The training loop only receives finished tensors
(prefetched, pinned when CUDA is used), so it never waits on augmentation as long as the
workers keep up, and :mod:`benchmarks.bench_augment` measures that they do. The
transforms are device-agnostic, so a loop whose workers cannot keep up (a fast GPU at
128^3 with few CPU cores) can build ``PairDataset(..., augment=False)`` and call
:class:`gvsl_app.data.augment.GVSLPairAugment` on the batch on the GPU instead (a few ms),
seeding a device generator from ``batch["seed"]`` (see :func:`gvsl_app.data.loading.batch_generator`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from gvsl_app.data.augment import AppearanceTransform, GVSLPairAugment, RandomAffine, SpatialAugment, Transform
from gvsl_app.data.dataset_io import normalise_input, read_image, resize
from gvsl_app.data.loading import item_seed, split_key
from gvsl_app.io.folders import DatasetError, images_folder, require_volumes
from gvsl_app.io.volume import Volume

__all__ = [
    "SYNTHETIC_PREFIX",
    "SYNTHETIC_KINDS",
    "RELATIVE_POSE",
    "LARGE_POSE",
    "POSE_RANGES",
    "pose_range",
    "PairDataset",
    "validation_pair",
]

PairSource = str | os.PathLike | Sequence[np.ndarray | Volume]
"""What :class:`PairDataset` reads: a data folder, a ``"synthetic:..."`` source or volumes."""

# --------------------------------------------------------------------------- synthetic sources

SYNTHETIC_PREFIX = "synthetic:"
SYNTHETIC_KINDS = ("cardiac", "brain", "cardiac-hard")


def _parse_synthetic(source: str) -> tuple[tuple[str, ...], int | None]:
    """``synthetic:KIND[+KIND...][:N]`` -> the kinds and N (None when not given)."""
    rest = source[len(SYNTHETIC_PREFIX) :]
    kind, _, count = rest.partition(":")
    kinds = tuple(kind.split("+"))
    if not kinds or any(k not in SYNTHETIC_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise DatasetError(
            f"unknown synthetic source {source!r}; available: synthetic:cardiac[:N], "
            "synthetic:brain[:N], synthetic:cardiac+brain[:N], synthetic:cardiac-hard[:N] (N subjects of each kind)"
        )
    if count:
        try:
            return kinds, int(count)
        except ValueError:
            raise DatasetError(f"{source!r}: the subject count after the second ':' must be an integer") from None
    return kinds, None


def _synthetic_subject(kind: str, seed: int, size: int) -> tuple[Volume, str]:
    """Image of one synthetic subject of ``kind`` on a ``size^3`` grid and its modality."""
    if kind == "brain":
        from gvsl_app.data.brain import make_brain_subject

        return make_brain_subject(seed, (size,) * 3)[0], "mr"
    if kind == "cardiac-hard":
        from gvsl_app.data.cardiac_hard import make_cardiac_hard_subject

        return make_cardiac_hard_subject(seed, (size,) * 3)[0], "ct"
    from gvsl_app.data.synthetic import make_cardiac_subject

    return make_cardiac_subject(seed, (size,) * 3)[0], "ct"


# --------------------------------------------------------------------------- pre-training pairs

RELATIVE_POSE = RandomAffine(rotation_deg=10.0, scale=0.1, shear_deg=3.0, translation=0.06)
"""The moving scan's extra pose change with ``relative_pose=True``: about what separates two
scans of the same region from different scanners (rotation +-10 degrees, scale +-10 %, shift
+-6 % of the field of view)."""

LARGE_POSE = RandomAffine(rotation_deg=30.0, scale=0.2, shear_deg=3.0, translation=0.15)
"""The moving scan's extra pose change with ``relative_pose="large"``: what is left between two
scans of different people or sites after a moments initialisation can still be this far apart
(rotation +-30 degrees about each axis, scale +-20 %, shift +-15 % of the field of view)."""

POSE_RANGES = {"small": RELATIVE_POSE, "large": LARGE_POSE}
"""The named relative-pose ranges of ``gvsl pretrain --relative-pose``."""


def pose_range(relative_pose: bool | str | RandomAffine) -> RandomAffine | None:
    """The relative-pose augmentation a ``relative_pose`` option names (None for none)."""
    if isinstance(relative_pose, RandomAffine):
        return relative_pose
    if relative_pose is False or relative_pose is None:
        return None
    key = "small" if relative_pose is True else str(relative_pose)
    if key not in POSE_RANGES:
        raise ValueError(f"relative_pose must be one of {sorted(POSE_RANGES)} (or true/false), got {relative_pose!r}")
    return POSE_RANGES[key]


class PairDataset(Dataset):
    """GVSL pre-training pairs: two different subjects, the same spatial augmentation on both.

    ``source``: a data folder (``images/*`` or the folder itself, any SimpleITK format), a
    sequence of in-memory arrays / :class:`Volume` objects, or ``"synthetic:cardiac"``
    (``n_synthetic`` subjects from :func:`gvsl_app.data.synthetic.make_cardiac_subject`, subject
    ``i`` seeded with ``subject_seed(seed, i)``; ``"synthetic:cardiac:N"`` sets N),
    ``"synthetic:brain"`` (MNI-derived MR subjects, :func:`gvsl_app.data.brain.make_brain_subject`)
    or ``"synthetic:cardiac+brain"`` (both; a pair is always two scans of one kind). Every
    volume is normalised to [0, 1] (``modality``: ``"auto"``, ``"ct"``, ``"mr"``, or
    ``None`` for arrays already in [0, 1]) and resized to ``size^3`` once, at construction
    (kept in memory as one ``(N, 1, S, S, S)`` float32 tensor).

    Item ``key`` (an index, or ``(epoch, index)``; any index >= 0 is valid, ``length`` is
    only the epoch length): the pair ``(moving, fixed)`` is drawn with the item's own
    generator, both are warped with one spatial draw (``spatial``: ``True`` for the default
    :class:`SpatialAugment`, an instance, or ``False``), and ``moving_input`` is the
    appearance-transformed moving scan (``appearance``: ``True``/instance/``False``).
    ``relative_pose`` (``True`` or ``"small"`` for :data:`RELATIVE_POSE`, ``"large"`` for
    :data:`LARGE_POSE`, or a :class:`RandomAffine`) also
    moves the moving scan alone, so the pair differs in pose as well as in anatomy.
    Returns ``{"moving", "fixed", "moving_input"}`` float32 ``(1, S, S, S)``, ``"pair"``
    (the two subject indices) and ``"seed"`` (the item seed). ``augment=False`` returns the
    un-augmented pair (``moving_input`` = ``moving``) for on-device augmentation.
    """

    supports_epoch_keys = True

    def __init__(
        self,
        source: PairSource,
        size: int,
        *,
        length: int | None = None,
        seed: int = 0,
        spatial: bool | SpatialAugment = True,
        appearance: bool | Transform = True,
        augment: bool = True,
        n_synthetic: int = 16,
        modality: str | None = "auto",
        relative_pose: bool | str | RandomAffine = False,
    ) -> None:
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
        self.volumes = torch.from_numpy(np.stack([resize(a, cube) for a in arrays]).astype(np.float32))[:, None]
        self.length = len(self.names) if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        sp = SpatialAugment() if spatial is True else (spatial or None)
        ap = AppearanceTransform() if appearance is True else (appearance or None)
        rel = pose_range(relative_pose)
        self.augmenter = GVSLPairAugment(sp, ap, rel)
        self.augment = bool(augment)

    @staticmethod
    def _describe(source: PairSource) -> str:
        return str(source) if isinstance(source, (str, os.PathLike)) else f"{type(source).__name__} of volumes"

    def _load_synthetic(
        self, source: str, n_synthetic: int, modality: str | None
    ) -> tuple[list[str], list[np.ndarray]]:
        """Generate the subjects of a ``synthetic:`` source, one group per kind of scan."""
        kinds, count = _parse_synthetic(source)
        n = count if count is not None else n_synthetic
        if n < 2:
            raise DatasetError(f"{source}: GVSL pairs need at least 2 subjects, got n={n}.")
        # imported here so that only synthetic sources pay for the phantom generators
        from gvsl_app.data.synthetic import subject_seed

        names: list[str] = []
        arrays: list[np.ndarray] = []
        for kind in kinds:
            group = []
            for i in range(n):
                image, kind_modality = _synthetic_subject(kind, subject_seed(self.seed, i), self.size)
                group.append(len(names))
                names.append(f"synthetic_{i:03d}" if kinds == ("cardiac",) else f"{kind}_{i:03d}")
                arrays.append(normalise_input(image, kind_modality if modality == "auto" else modality))
            self.groups.append(group)
        return names, arrays

    def _load(self, source: PairSource, n_synthetic: int, modality: str | None) -> tuple[list[str], list[np.ndarray]]:
        """Names and normalised arrays of every volume of ``source`` (at its native size)."""
        if isinstance(source, str) and source.startswith(SYNTHETIC_PREFIX):
            return self._load_synthetic(source, n_synthetic, modality)
        if isinstance(source, (str, os.PathLike)):
            files = require_volumes(images_folder(source))
            names = sorted(files)
            return names, [normalise_input(read_image(files[n]), modality) for n in names]
        if isinstance(source, (list, tuple)):
            arrays = []
            for k, item in enumerate(source):
                arr = item.array if isinstance(item, Volume) else np.asarray(item)
                if arr.ndim != 3:
                    raise DatasetError(
                        f"volume {k} of the list has shape {arr.shape}; 3D (z, y, x) arrays are expected."
                    )
                arrays.append(normalise_input(item, modality))
            return [f"volume_{k:03d}" for k in range(len(arrays))], arrays
        raise TypeError(
            f"PairDataset source must be a folder, 'synthetic:cardiac' or a list of arrays, got {type(source).__name__}"
        )

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
        i, j = int(torch.randint(n, (1,), generator=g).item()), int(torch.randint(n - 1, (1,), generator=g).item())
        return group[i], group[j + (j >= i)]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = split_key(key, self.epoch)
        s = item_seed(self.seed, epoch, index)
        g = torch.Generator().manual_seed(s)
        i, j = self.choose_pair(g)
        moving, fixed = self.volumes[i : i + 1], self.volumes[j : j + 1]
        if self.augment:
            moving, fixed, moving_input = self.augmenter(moving, fixed, g)
        else:
            moving_input = moving
        return {
            "moving": moving[0].clone(),
            "fixed": fixed[0].clone(),
            "moving_input": moving_input[0].clone(),
            "pair": torch.tensor([i, j]),
            "seed": torch.tensor(s, dtype=torch.int64),
        }


def validation_pair(dataset: PairDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, un-augmented pair ``(moving, fixed)``, each ``(1, 1, S, S, S)``: subjects 0 and 1."""
    return dataset.volumes[0:1].clone(), dataset.volumes[1:2].clone()

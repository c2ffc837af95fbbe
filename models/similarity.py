"""Image similarities for the refinement: local NCC for one contrast, MIND-SSC and normalised
gradient fields across contrasts and modalities.

Each :class:`Similarity` turns a scan into features once (``prepare``: the image itself, or
its MIND-SSC descriptors) and scores a warped moving scan's features against the fixed one's
(``loss``: lower is better, in (-1, 0] like :func:`models.losses.local_ncc`, so that the
refinement's smoothness weights and tolerances mean the same for every similarity). Warping
precomputed descriptors instead of recomputing them on every step is how MIND is used in
practice (Heinrich et al., MIND, Medical Image Analysis 2012; "SSC", MICCAI 2013).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import local_ncc, masked_mean
from .spatial import warp

SIMILARITIES = ("ncc", "mind", "ngf")


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptors ``(B, 12, D, H, W)`` of ``image`` ``(B, 1, D, H, W)``.

    For each of the 12 pairs of the six-neighbourhood's neighbours that lie sqrt(2) apart
    (at ``dilation`` voxels), the patch distance between the two neighbours (box of side
    ``2 radius + 1``), normalised by the local variance estimate (the mean over the 12) and
    mapped through ``exp(-d / v)``: a local self-similarity pattern that is the same in any
    contrast where the same structures have edges.
    """
    x = image.float()
    six = torch.tensor([[0, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 2], [2, 1, 1], [1, 2, 1]])
    pairs = [(i, j) for i in range(6) for j in range(i) if int(((six[i] - six[j]) ** 2).sum()) == 2]
    pad = F.pad(x, (dilation,) * 6, mode="replicate")
    d, h, w = x.shape[2:]

    def shifted(offset: torch.Tensor) -> torch.Tensor:
        z, y, xx = (int(o) * dilation for o in offset)
        return pad[:, :, z : z + d, y : y + h, xx : xx + w]

    ssd = torch.cat([(shifted(six[i]) - shifted(six[j])) ** 2 for i, j in pairs], dim=1)
    k = 2 * radius + 1
    ssd = F.avg_pool3d(F.pad(ssd, (radius,) * 6, mode="replicate"), k, stride=1)
    mind = ssd - ssd.min(dim=1, keepdim=True).values
    var = mind.mean(dim=1, keepdim=True)
    mean_var = var.mean()
    var = var.clamp(mean_var * 1e-3, mean_var * 1e3)
    return torch.exp(-mind / var.clamp_min(1e-12))


def ngf_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 0.05, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised gradient fields: minus the mean squared cosine between the two images' gradients.

    ``eps`` (in units of the images' gradient per voxel, images in [0, 1]) keeps noise and flat
    regions from counting; the value lies in (-1, 0], -1 where every edge is parallel.
    ``weight`` (B, 1, D, H, W) restricts the mean to the voxels where it is 1.
    """

    def grads(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x.float(), (1, 1, 1, 1, 1, 1), mode="replicate")
        gz = (x[:, :, 2:, 1:-1, 1:-1] - x[:, :, :-2, 1:-1, 1:-1]) / 2
        gy = (x[:, :, 1:-1, 2:, 1:-1] - x[:, :, 1:-1, :-2, 1:-1]) / 2
        gx = (x[:, :, 1:-1, 1:-1, 2:] - x[:, :, 1:-1, 1:-1, :-2]) / 2
        return torch.cat([gz, gy, gx], dim=1)

    with torch.autocast(device_type=a.device.type, enabled=False):
        ga, gb = grads(a), grads(b)
        dot = (ga * gb).sum(1)
        na = (ga * ga).sum(1) + eps * eps
        nb = (gb * gb).sum(1) + eps * eps
        cos2 = (dot * dot / (na * nb)).unsqueeze(1)
        return -cos2.mean() if weight is None else -masked_mean(cos2, weight)


def mind_loss(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The mean squared difference of two MIND descriptor images over the sum of their variances,
    minus 1: -1 where they are equal, about 0 for unrelated ones (as local NCC scales).
    ``weight`` (B, 1, D, H, W) restricts the mean to the voxels where it is 1.

    A squared difference, as MIND is used (Heinrich et al.), costs a warp of the 12 channels and
    one subtraction a step, where a local NCC of 12 channels would cost 60 box filters.
    """
    with torch.autocast(device_type=a.device.type, enabled=False):
        a, b = a.float(), b.float()
        spread = (a.detach().var() + b.detach().var()).clamp_min(1e-12)
        sq = (a - b).pow(2)
        return (sq.mean() if weight is None else masked_mean(sq, weight)) / spread - 1.0


DATA_WEIGHT = 0.99
"""Least share of a fixed voxel's interpolation weight that must come from the moving scan's data
for the voxel to be compared: above it no voxel mixes in the background."""


def data_weight(mask: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """1 where a fixed voxel's mapped point ``coords`` (voxels) lies in the moving scan's data
    ``mask`` (trilinear weight > :data:`DATA_WEIGHT`), 0 elsewhere; no gradient flows through
    it, so a map cannot improve its score by moving data out of view.
    """
    with torch.no_grad():
        return (warp(mask, coords.detach()) > DATA_WEIGHT).float()


@dataclass(frozen=True)
class Similarity:
    """A refinement similarity by name (``ncc``, ``mind`` or ``ngf``) with its local window."""

    name: str = "ncc"
    window: int = 9

    def __post_init__(self) -> None:
        if self.name not in SIMILARITIES:
            raise ValueError(f"unknown similarity {self.name!r}: choose one of {', '.join(SIMILARITIES)}")

    @property
    def pointwise(self) -> bool:
        """True when the loss compares voxel by voxel (MIND's descriptors), so that it can be
        evaluated on a sample of the voxels; local NCC and NGF need each voxel's neighbours.
        """
        return self.name == "mind"

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """What is warped and compared: the image, or its MIND-SSC descriptors."""
        return mind_ssc(image) if self.name == "mind" else image

    def prepare_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The voxels of a prepared scan that show its own data, given ``mask`` (1, 1, D, H, W; 1
        where the scan has data, as a float): the mask itself for NCC (its window statistics
        are masked), eroded by the MIND descriptors' reach (their patches and neighbours, 3
        voxels) or by NGF's central differences (1 voxel), whose values near a field of view's
        edge mix in the background.
        """
        reach = {"mind": 3, "ngf": 1}.get(self.name, 0)
        mask = (mask.float() > 0.5).float()
        if reach:
            mask = -F.max_pool3d(-mask, 2 * reach + 1, stride=1, padding=reach)
        return mask

    def loss(self, warped: torch.Tensor, fixed: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Lower is better, about -1 for a perfect match and 0 for unrelated images: local NCC
        of the images, NGF, or the descriptors' normalised squared difference; ``weight``
        (1 where compared, 0 elsewhere) restricts it to the overlap of the two scans' data.
        """
        if self.name == "ngf":
            return ngf_loss(warped, fixed, weight=weight)
        if self.name == "mind":
            return mind_loss(warped, fixed, weight=weight)
        return local_ncc(warped, fixed, window=self.window, weight=weight)

    def score(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        weight: torch.Tensor | None = None,
        features: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    ) -> float:
        """How alike two images are by this similarity (higher is better), features computed here;
        ``weight`` as in :meth:`loss`, for ``moving`` as given (its data mask, prepared here).
        ``features``: ``prepare(moving)`` and ``prepare(fixed)``, each where the caller has it
        already (MIND's descriptors of a large scan take a while).
        """
        with torch.no_grad():
            w = None if weight is None else self.prepare_mask(weight)
            m = self.prepare(moving) if features[0] is None else features[0]
            f = self.prepare(fixed) if features[1] is None else features[1]
            return float(-self.loss(m, f, weight=w))

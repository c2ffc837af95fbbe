"""The map a match carries from stage to stage, as a value: each stage returns a new one."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models import local_ncc
from models.similarity import Similarity, data_weight
from models.spatial import voxel_grid, warp

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class NetworkMap:
    """A sampling map of the moving scan on a working grid, with what it does to the pair.

    ``coordinates`` (1, 3, D, H, W) are voxel coordinates (z, y, x) into the moving image for
    every voxel of the grid; ``affine`` (1, 3, 4) is its global part in the same voxels.
    ``ncc_before`` / ``ncc_after`` are the local NCC of the pair under the identity and under
    this map on this grid, ``score_before`` / ``score_after`` the same by the match's
    similarity (equal to them for ``ncc``): what the fallback judges by.
    """

    coordinates: torch.Tensor
    affine: torch.Tensor
    ncc_before: float
    ncc_after: float
    score_before: float
    score_after: float

    @property
    def grid(self) -> Shape:
        """The working grid's shape (z, y, x)."""
        d, h, w = (int(n) for n in self.coordinates.shape[2:])
        return (d, h, w)

    @classmethod
    def identity(cls, grid: Shape, ncc: float, score: float) -> NetworkMap:
        """The identity map on ``grid``, the pair scoring ``ncc`` / ``score`` under it."""
        return cls(voxel_grid(grid).unsqueeze(0), torch.eye(3, 4).unsqueeze(0), ncc, ncc, score, score)

    def as_identity(self) -> NetworkMap:
        """The identity on this map's grid, scored as this map's starting point."""
        return NetworkMap.identity(self.grid, self.ncc_before, self.score_before)


@torch.no_grad()
def scored(
    coordinates: torch.Tensor,
    affine: torch.Tensor,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    similarity: Similarity,
    mask: torch.Tensor | None = None,
    before: NetworkMap | None = None,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> NetworkMap:
    """A map of ``moving`` (1, 1, D, H, W) onto ``fixed`` with its scores before and after;
    ``mask`` (on ``moving``'s grid, 1 where it has data) restricts each score to the fixed
    voxels where the (warped) moving scan has data. ``before``: a map of the same pair whose
    scores before are taken instead of computed again; ``features``: the similarity's features
    of ``moving`` and ``fixed`` when the caller has them (computed here otherwise).
    """
    coords = coordinates.to(moving.device)
    warped = warp(moving, coords)
    w_after = None if mask is None else data_weight(mask, coords)
    ncc_after = float(-local_ncc(warped, fixed, weight=w_after))
    own = similarity.name == "ncc"
    moving_features, fixed_features = features or (None, None)
    if not own and fixed_features is None:
        fixed_features = similarity.prepare(fixed)
    if before is not None:
        ncc_before, score_before = before.ncc_before, before.score_before
    else:
        w_before = None if mask is None else (mask > 0.5).float()
        ncc_before = float(-local_ncc(moving, fixed, weight=w_before))
        given = (moving_features, fixed_features)
        score_before = ncc_before if own else similarity.score(moving, fixed, w_before, given)
    score_after = ncc_after if own else similarity.score(warped, fixed, w_after, (None, fixed_features))
    return NetworkMap(coordinates.float().cpu(), affine.float().cpu(), ncc_before, ncc_after, score_before, score_after)

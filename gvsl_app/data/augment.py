"""GVSL augmentations: what a training pair needs, and every transform in one namespace.

:class:`GVSLPairAugment` gives the same spatial draw to the moving and fixed scans (plus,
optionally, a pose change of the moving scan alone) and the appearance-transformed moving
scan for the restoration head. It runs per item in DataLoader workers (see
:mod:`gvsl_app.data.datasets`) or on a batch on the training device.

The transforms live in small modules named for what they hold and are re-exported here:
:mod:`~gvsl_app.data.transforms` (the protocol: explicit randomness, ``Compose``),
:mod:`~gvsl_app.data.appearance` (Models Genesis-style appearance transforms) and
:mod:`~gvsl_app.data.spatial_augment` (affine and elastic).
"""

from __future__ import annotations

import torch

from gvsl_app.data.appearance import AppearanceTransform, InPaint, LocalPixelShuffle, NonLinearIntensity, OutPaint
from gvsl_app.data.spatial_augment import RandomAffine, RandomElastic, SpatialAugment
from gvsl_app.data.transforms import Compose, Transform, _check_volume, _resolve_generator, make_generator
from models.spatial import compose_coordinates, sampling_coordinates, warp

__all__ = [
    "Transform",
    "Compose",
    "LocalPixelShuffle",
    "NonLinearIntensity",
    "InPaint",
    "OutPaint",
    "AppearanceTransform",
    "RandomAffine",
    "RandomElastic",
    "SpatialAugment",
    "GVSLPairAugment",
    "make_generator",
]


def _then_affine(coords: torch.Tensor, affine: RandomAffine, g: torch.Generator) -> torch.Tensor:
    """``coords`` composed with one more random affine ``R``: ``p -> coords(R p)`` in one map.

    The displacement ``coords - p`` is sampled at ``R p`` (border values outside, where it is
    smooth) so that the moving scan is interpolated once, like the fixed one.
    """
    shape = tuple(coords.shape[2:])
    rel = sampling_coordinates(shape, affine=affine.sample(shape, coords.shape[0], g, coords.device))
    return compose_coordinates(coords, rel)


class GVSLPairAugment:
    """What a GVSL pair needs: same spatial draw on both scans, appearance on the moving one.

    ``aug(moving, fixed, generator) -> (moving, fixed, moving_input)``, all (B, 1, D, H, W).
    Both scans are warped with one ``grid_sample`` call (stacked as channels). Pass
    ``spatial=None`` / ``appearance=None`` to switch a part off. ``relative`` (a
    :class:`RandomAffine`) also moves the moving scan alone by a random affine, so that
    the pair differs in pose by more than its two subjects do: what the matching's affine
    head must learn to undo.
    """

    def __init__(
        self,
        spatial: SpatialAugment | None = None,
        appearance: Transform | None = None,
        relative: RandomAffine | None = None,
    ) -> None:
        self.spatial, self.appearance, self.relative = spatial, appearance, relative

    @classmethod
    def default(cls, spatial: bool = True, appearance: bool = True) -> GVSLPairAugment:
        """The pre-training default: a random spatial warp and the appearance transform."""
        return cls(SpatialAugment() if spatial else None, AppearanceTransform() if appearance else None)

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, generator: torch.Generator | int):
        """``(moving, fixed, moving_input)``: the pair warped alike, and the moving scan's appearance-changed copy."""
        g = _resolve_generator(generator, None, "GVSLPairAugment")
        _check_volume(moving, "GVSLPairAugment")
        _check_volume(fixed, "GVSLPairAugment")
        if moving.shape != fixed.shape:
            raise ValueError(f"GVSLPairAugment: moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} differ")
        if self.spatial is not None:
            c = moving.shape[1]
            coords = self.spatial.coordinates(moving.shape[2:], moving.shape[0], g, device=moving.device)
            if self.relative is None:
                both = self.spatial.apply(torch.cat([moving, fixed], dim=1), coords)
                moving, fixed = both[:, :c], both[:, c:]
            else:
                fixed = self.spatial.apply(fixed, coords)
                moving = self.spatial.apply(moving, _then_affine(coords, self.relative, g))
        elif self.relative is not None:
            shape = tuple(moving.shape[2:])
            rel = self.relative.sample(shape, moving.shape[0], g, moving.device)
            moving = warp(moving, sampling_coordinates(shape, affine=rel)).to(moving.dtype)
        moving_input = self.appearance(moving, generator=g) if self.appearance is not None else moving
        return moving.contiguous(), fixed.contiguous(), moving_input.contiguous()

"""The GVSL network: shared U-Net backbone, Z-Matching head and restoration head."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .blocks import use_norm
from .heads import AffineHead, DeformableHead, KeypointAffineHead, PyramidDeformableHead, RestorationHead
from .spatial import AffineBounds, bounded_affine, identity_affine, sampling_coordinates, warp
from .unet import PAPER_WIDTHS, UNet3D

AFFINE_HEADS = ("keypoints", "paper")
DEFORMABLE_HEADS = ("pyramid", "pyramid-wide", "pyramid-corr", "pyramid-full", "paper")
PAPER_HEADS: dict[str, str] = {"affine_head": "paper", "deformable_head": "paper"}
"""``GVSL(**PAPER_HEADS)``: the paper's Z-Matching heads (the authors' checkpoint has them)."""


@dataclass
class GVSLOutput:
    """Named outputs of a GVSL forward pass (all on the working grid of the fixed scan).

    ``warped``: the moving (or ``source``) image resampled once through the composed map.
    ``affine``: ``(B, 3, 4)`` voxel-space matrix. ``displacement``: deformable part
    ``(B, 3, D, H, W)`` in voxels (dz, dy, dx), applied before the affine.
    ``coordinates``: the total map ``p -> A(p + u(p))`` as voxel coordinates in the moving
    grid, ``(B, 3, D, H, W)``; ``coordinates - p`` is the total displacement for export.
    ``restored``: the restoration head's output for the moving scan, or ``None``.
    """

    warped: torch.Tensor
    affine: torch.Tensor
    displacement: torch.Tensor
    coordinates: torch.Tensor
    restored: torch.Tensor | None = None
    affine_parameters: dict[str, torch.Tensor] = field(default_factory=dict)


class GVSL(nn.Module):
    """Geometric Visual Similarity Learning network (He et al., CVPR 2023).

    ``GVSL()`` has the paper's widths; ``GVSL(**PAPER_HEADS)`` also the paper's heads
    (32,440,739 parameters, the same as the authors' release);
    ``GVSL(widths=(8, 16, 32, 64, 128, 64, 32, 16, 8))`` is the CPU demo size.
    ``use_affine=False`` gives the "w/o affine head" ablation (the affine stays identity).
    ``affine_head`` chooses the global matching head: ``"keypoints"`` (the default: soft
    keypoints in both scans and a closed-form least-squares affine, see
    :class:`~models.heads.KeypointAffineHead`) or ``"paper"`` (the paper's pooled
    bottleneck regressing 15 bounded parameters, :class:`~models.heads.AffineHead`; the
    authors' released checkpoint has this head). ``deformable_head``: ``"pyramid"`` (the
    default: coarse-to-fine heads at 1/4 and 1/2 resolution, a smooth field by
    construction, :class:`~models.heads.PyramidDeformableHead`), ``"pyramid-wide"`` (the same
    with heads four times the local width wide instead of half), ``"pyramid-corr"`` (a local
    correlation cost volume into each level), ``"pyramid-full"`` (the
    same plus a full-resolution level, an ablation) or ``"paper"`` (one head at full
    resolution). docs/results/matching.md measures these choices against the paper's.
    Call ``model(moving, fixed)`` with ``(B, 1, D, H, W)`` tensors of any size >= 16.
    """

    # Set by gvsl_app's weight loader, absent on a model built here (read them with getattr):
    # the cube the checkpoint was trained on and the modalities it was pre-trained on.
    working_size: int | None
    trained_modalities: frozenset[str] | None

    def __init__(
        self,
        widths: Sequence[int] = PAPER_WIDTHS,
        in_channels: int = 1,
        use_affine: bool = True,
        bounds: AffineBounds = AffineBounds(),
        affine_head: str = "keypoints",
        deformable_head: str = "pyramid",
        norm: str = "default",
    ):
        super().__init__()
        if affine_head not in AFFINE_HEADS:
            raise ValueError(f"unknown affine head {affine_head!r}; choose one of {', '.join(AFFINE_HEADS)}")
        if deformable_head not in DEFORMABLE_HEADS:
            raise ValueError(
                f"unknown deformable head {deformable_head!r}; choose one of {', '.join(DEFORMABLE_HEADS)}"
            )
        self.unet = UNet3D(widths, in_channels)
        w = self.unet.widths
        self.affine_kind = affine_head
        self.affine_head = AffineHead(w[4]) if affine_head == "paper" else KeypointAffineHead(w[8])
        self.deformable_kind = deformable_head
        if deformable_head == "paper":
            self.deformable_head: nn.Module = DeformableHead(w[8])
        else:
            levels = (4, 2, 1) if deformable_head == "pyramid-full" else (4, 2)
            radii = (2, 1) if deformable_head == "pyramid-corr" else None
            hidden = 4 * w[8] if deformable_head == "pyramid-wide" else None  # 32 instead of 4 at width 8
            self.deformable_head = PyramidDeformableHead(w[8], levels, radii, hidden)
        self.restoration_head = RestorationHead(w[8])
        self.norm = norm
        use_norm(self, norm)
        self.use_affine = use_affine
        self.bounds = bounds

    @property
    def widths(self) -> tuple[int, ...]:
        """The backbone's channel widths per level."""
        return self.unet.widths

    @classmethod
    def from_config(cls, config: dict) -> GVSL:
        """The network :meth:`config` describes. Keys missing from a checkpoint written before
        the head options existed (and the authors' release) mean the paper's heads.
        """
        return cls(
            widths=config["widths"],
            in_channels=config.get("in_channels", 1),
            use_affine=config.get("use_affine", True),
            affine_head=config.get("affine_head", "paper"),
            deformable_head=config.get("deformable_head", "paper"),
            norm=config.get("norm", "default"),
        )

    def config(self) -> dict:
        """JSON-serialisable constructor arguments (stored in every checkpoint)."""
        return {
            "widths": list(self.widths),
            "in_channels": self.unet.inc.double_conv[0].in_channels,
            "use_affine": self.use_affine,
            "affine_head": self.affine_kind,
            "deformable_head": self.deformable_kind,
            **({"norm": self.norm} if self.norm != "default" else {}),
        }

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features ``(global, local)`` of a batch of volumes."""
        return self.unet(x)

    def forward(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        *,
        source: torch.Tensor | None = None,
        restore: bool = True,
        deformable: bool = True,
    ) -> GVSLOutput:
        """Match ``moving`` onto ``fixed``; optionally restore ``moving``.

        ``source`` (default ``moving``) is the image that is warped: during pre-training the
        backbone sees the appearance-transformed moving scan while the clean scan is warped
        and compared. ``restore=False`` skips the restoration head (registration-only);
        ``deformable=False`` matches with the affine part alone (an affine warm-up).
        """
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must have the same shape")
        b = moving.shape[0]
        shape = tuple(fixed.shape[2:])
        g, f = self.unet(torch.cat([moving, fixed], dim=0))
        g_m, g_f, f_m, f_f = g[:b], g[b:], f[:b], f[b:]

        if self.use_affine and self.affine_kind == "paper":
            params = self.affine_head(g_m, g_f)
            affine = bounded_affine(params, shape, self.bounds)
        elif self.use_affine:
            params = self.affine_head(f_m, f_f)
            affine = params.pop("affine")
        else:
            params = {}
            affine = identity_affine(b, device=moving.device)
        aligned = warp(f_m, sampling_coordinates(shape, affine=affine, batch=b)).to(f_f.dtype)
        displacement = self.deformable_head(aligned, f_f)
        if not deformable:
            # Zeroed rather than skipped: DDP expects every parameter in every step's graph.
            displacement = displacement * 0.0
        coords = sampling_coordinates(shape, affine=affine, displacement=displacement)
        warped = warp(moving if source is None else source, coords)
        restored = self.restoration_head(f_m).float() if restore else None
        return GVSLOutput(
            warped=warped,
            affine=affine,
            displacement=displacement,
            coordinates=coords,
            restored=restored,
            affine_parameters=params,
        )

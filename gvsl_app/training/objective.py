"""The pre-training loss of each variant as one module (so DDP can wrap it whole)."""

from __future__ import annotations

import functools
from typing import cast

import torch
from torch import nn

from gvsl_app.training.config import PretrainConfig
from models import GVSL, local_ncc, multiscale_ncc, restoration_mse, smoothness
from models.device import autocast
from models.spatial import sampling_coordinates, warp

__all__ = ["PretrainObjective"]


class PretrainObjective(nn.Module):
    """The loss of one pre-training variant as a module (so DDP can wrap it whole).

    ``gvsl``: NCC (or multi-scale NCC, ``config.similarity``) + smoothness on the match of
    the moving scan to the fixed scan + restoration MSE of the appearance-transformed moving
    scan. With ``match_input="transformed"`` (the paper's recipe) the backbone matches the
    appearance-transformed moving scan (the clean one is warped); with ``"clean"`` (the
    default) it matches the clean scans and restores the transformed one in a second pass.
    ``restoration``: MSE only (Models Genesis-style fundament). ``matching``: Z-Matching only,
    on clean scans. ``no-affine``: like ``gvsl`` with the affine head disabled.
    """

    def __init__(self, model: GVSL, config: PretrainConfig):
        super().__init__()
        self.model = model
        self.variant = config.variant
        self.similarity = functools.partial(
            multiscale_ncc if config.similarity == "multiscale-ncc" else local_ncc, eps=config.ncc_eps
        )
        self.match_clean = config.match_input == "clean"
        self.w = (config.w_ncc, config.w_smooth, config.w_mse)
        self.w_affine = config.w_affine if config.variant != "no-affine" else 0.0

    def forward(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        moving_input: torch.Tensor,
        amp_device: torch.device | None = None,
        deformable: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The loss terms of one batch (their weighted sum under ``loss``) for the configured variant."""
        w_ncc, w_smooth, w_mse = self.w
        terms: dict[str, torch.Tensor] = {}
        with autocast(amp_device or moving.device, enabled=amp_device is not None):
            if self.variant == "restoration":
                terms["mse"] = restoration_mse(self._restore(moving_input), moving)
            else:
                restore = self.variant != "matching"
                clean = self.variant == "matching" or self.match_clean
                out = self.model(
                    moving if clean else moving_input,
                    fixed,
                    source=moving,
                    restore=restore and not clean,
                    deformable=deformable,
                )
                terms["ncc"] = self.similarity(out.warped, fixed)
                terms["smooth"] = smoothness(out.displacement)
                if self.w_affine > 0:
                    # The affine part scored on its own: otherwise the deformable head, which
                    # learns faster, absorbs the global misalignment and the affine head starves.
                    coords = sampling_coordinates(tuple(fixed.shape[2:]), affine=out.affine, batch=fixed.shape[0])
                    terms["ncc_affine"] = self.similarity(warp(moving, coords), fixed)
                if restore:
                    restored = self._restore(moving_input) if clean else out.restored
                    terms["mse"] = restoration_mse(restored, moving)
        weights = {"ncc": w_ncc, "smooth": w_smooth, "mse": w_mse, "ncc_affine": self.w_affine}
        # never the empty sum's int 0: every variant adds at least one term
        terms["loss"] = cast(torch.Tensor, sum(weights[k] * v for k, v in terms.items()))
        return terms

    def _restore(self, corrupted: torch.Tensor) -> torch.Tensor:
        _, local = self.model.features(corrupted)
        return self.model.restoration_head(local).float()

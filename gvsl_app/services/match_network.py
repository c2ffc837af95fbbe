"""The network stage of matching: the pair resized to the working cube, one forward pass (or a
few composed passes), channels-last on the CPU, the CPU again on CUDA out-of-memory.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch

from gvsl_app.data.preprocess import resize_array
from gvsl_app.services.match_map import NetworkMap, scored
from models import GVSL
from models.device import autocast, cpu_threads, threads_for_load
from models.similarity import Similarity
from models.spatial import compose_affines, compose_coordinates, warp

log = logging.getLogger("gvsl_app.services.matching")

__all__ = ["working_cube", "network_map", "run_network", "compose_passes"]


def working_cube(array: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """A normalised scan resized to ``shape``, as a (1, 1, D, H, W) tensor."""
    return torch.from_numpy(resize_array(array, shape))[None, None]


def network_map(
    model: GVSL,
    cubes: tuple[torch.Tensor, torch.Tensor],
    dev: torch.device,
    passes: int,
    similarity: Similarity,
    mask: torch.Tensor | None = None,
) -> tuple[NetworkMap, torch.device]:
    """The network's map on the working cube, applied ``passes`` times (:func:`compose_passes`);
    on CUDA out-of-memory the CPU instead, with a warning. ``mask`` (the moving cube's data,
    for a partial field of view) restricts the map's scores to where the moving scan has data.
    """
    f_w, m_w = cubes
    # threads beyond the cores other processes leave free wait on each other at every layer
    with cpu_threads(threads_for_load()) if dev.type == "cpu" else contextlib.nullcontext():
        try:
            coords, affine, used = run_network(model, m_w, f_w, dev)
        except torch.cuda.OutOfMemoryError:
            log.warning("CUDA out of memory at working size %d; falling back to the CPU", m_w.shape[-1])
            torch.cuda.empty_cache()
            model, used = model.cpu(), torch.device("cpu")
            coords, affine, used = run_network(model, m_w, f_w, used)
        for _ in range(passes - 1):
            coords, affine = compose_passes(coords, affine, run_network(model, warp(m_w, coords), f_w, used))
    return scored(coords, affine, m_w, f_w, similarity, mask), used


@torch.no_grad()
def compose_passes(
    coords: torch.Tensor, affine: torch.Tensor, again: tuple[torch.Tensor, torch.Tensor, torch.device]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A map followed by a second prediction on the already-warped moving scan.

    A network that stops short of the full alignment (it underfits at CPU budgets) closes
    part of the remaining gap when shown its own result: the composed map samples the first
    map's displacement at the second map's points, so the moving scan is still resampled
    once. The global parts compose as matrices (``A1 A2``).
    """
    return compose_coordinates(coords, again[0]), compose_affines(affine, again[1])


@torch.no_grad()
def run_network(
    model: GVSL, moving: torch.Tensor, fixed: torch.Tensor, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    """The network's map on the working cube: (coordinates, affine, device), on the CPU."""
    model = model.to(dev).eval()
    m, f = moving.to(dev), fixed.to(dev)
    if dev.type == "cpu":
        # oneDNN's 3D convolutions and trilinear upsampling run ~30 % faster channels-last;
        # the weights go back afterwards so a shared model (the GUI's) is left as it was.
        # torch's stub for Module.to lacks the memory_format keyword that Module.to accepts
        model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        m, f = m.contiguous(memory_format=torch.channels_last_3d), f.contiguous(memory_format=torch.channels_last_3d)
    try:
        with autocast(dev):
            o = model(m, f, restore=False)
    finally:
        if dev.type == "cpu":
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # as above
    return o.coordinates.float().cpu(), o.affine.float().cpu(), dev

"""GVSL augmentations: Models Genesis style appearance transforms and affine + elastic spatial ones.

Every transform is a callable object working on torch tensors ``(B, C, D, H, W)`` (float32,
values in ``[0, 1]``) on any device. Randomness is explicit: a call takes ``generator=``
(a ``torch.Generator`` on any device, or an ``int`` seed), or the object is built with one;
with neither, the call raises instead of silently using the global RNG. Random numbers are
drawn on the generator's device and moved to the data's device, so the same generator seed
gives the same result on the same device. Decisions are made per sample of the batch.

Appearance transforms (the paper's transformation set for the fundamental self-restoration,
after Models Genesis, Zhou et al. 2019), written from their description:

* :class:`LocalPixelShuffle` - voxels are permuted inside many small random blocks. Done
  vectorised: the volume (from a random offset) is cut into non-overlapping blocks of a
  random size, a random subset of blocks is chosen and the voxels of each chosen block are
  permuted with ``argsort`` of random keys. Works on any size (dimensions under 20
  included: the block size is at least 1 and never exceeds the axis).
* :class:`NonLinearIntensity` - a cubic Bezier curve through ``(0, 0)`` and ``(1, 1)`` with
  two random control points, monotone (half the time) or flipped, applied through a
  4096-entry uniform lookup table (one gather per voxel, no per-voxel search).
* :class:`InPaint` / :class:`OutPaint` - random boxes replaced by uniform noise / only the
  union of random boxes kept and everything else replaced by noise.
* :class:`AppearanceTransform` - the composite in Models Genesis order (shuffle ->
  non-linear -> painting) with default probabilities: local shuffle 0.5, non-linear 0.9,
  painting 0.9 and, given painting, in-painting 0.8 / out-painting 0.2. (Models Genesis'
  own configuration favours out-painting, 0.2 / 0.8; the GVSL paper names in-painting,
  local shuffling and non-linear as its transformation set, hence in-painting is favoured
  here; ``inpaint_rate`` switches it.)

Spatial transforms (:class:`RandomAffine`, :class:`RandomElastic`, :class:`SpatialAugment`)
produce voxel sampling coordinates through :mod:`models.spatial` (the composed map
``p -> A(p + u(p))``, ``align_corners=True``), so the *same* draw can be applied to several
tensors: both scans of a pair, and label maps with nearest-neighbour sampling.

:class:`GVSLPairAugment` is what a GVSL training pair needs: the same spatial draw on the
moving and fixed scans and the appearance-transformed moving scan for the restoration head.
It runs per item in DataLoader workers (see :mod:`gvsl_app.datasets`) or on a batch on the
training device.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from models.spatial import (affine_from_parameters, affine_points, identity_affine, sampling_coordinates, voxel_grid,
                            warp)

__all__ = [
    "Transform", "Compose", "LocalPixelShuffle", "NonLinearIntensity", "InPaint", "OutPaint",
    "AppearanceTransform", "RandomAffine", "RandomElastic", "SpatialAugment", "GVSLPairAugment",
    "make_generator",
]

# --------------------------------------------------------------------------- randomness helpers

def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(int(seed))


def _resolve_generator(call: "torch.Generator | int | None", own: "torch.Generator | int | None",
                       who: str) -> torch.Generator:
    g = call if call is not None else own
    if g is None:
        raise ValueError(f"{who}: no random generator; pass generator=torch.Generator(...) (or an int seed) "
                         "to the call or to the constructor")
    if isinstance(g, torch.Generator):
        return g
    if isinstance(g, int):
        return make_generator(g)
    raise TypeError(f"{who}: generator must be a torch.Generator or an int seed, got {type(g).__name__}")


def _rand(shape: Sequence[int], g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device, moved to ``device``."""
    return torch.rand(tuple(shape), generator=g, device=g.device).to(device)


def _check_volume(x: torch.Tensor, who: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who}: expected a tensor (B, C, D, H, W), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{who}: expected a floating-point tensor, got {x.dtype}")


def _sample_mask(prob: float, batch: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Per-sample Bernoulli(prob) decisions, shape (B,) bool."""
    return _rand((batch,), g, device) < float(prob)


def _none_selected(mask: torch.Tensor) -> bool:
    """True when no sample is selected; only checked on CPU (never forces a device sync)."""
    return mask.device.type == "cpu" and not bool(mask.any())


def _blend(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (old.dim() - 1))), new, old)


class Transform:
    """Base class: ``transform(x, generator=None) -> x'`` for ``x`` of shape (B, C, D, H, W)."""

    def __init__(self, generator: "torch.Generator | int | None" = None) -> None:
        self.generator = generator

    def __call__(self, x: torch.Tensor, generator: "torch.Generator | int | None" = None) -> torch.Tensor:
        name = type(self).__name__
        _check_volume(x, name)
        return self.apply(x, _resolve_generator(generator, self.generator, name))

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "generator")
        return f"{type(self).__name__}({fields})"


class Compose(Transform):
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Iterable, generator: "torch.Generator | int | None" = None) -> None:
        super().__init__(generator)
        self.transforms = list(transforms)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, generator=g)
        return x


# --------------------------------------------------------------------------- local pixel shuffle

def _per_axis(value, shape: Sequence[int], default) -> list[int]:
    if value is None:
        return [default(n) for n in shape]
    if isinstance(value, (int, float)):
        return [int(value)] * len(shape)
    value = [int(v) for v in value]
    if len(value) != len(shape):
        raise ValueError(f"expected {len(shape)} values, got {value}")
    return value


class LocalPixelShuffle(Transform):
    """Permute voxels inside many small random blocks (texture destroyed, shapes kept).

    ``max_block``: largest block edge (int or per-axis triple); default ``max(2, n // 10)``
    per axis (the Models Genesis range), clipped to the axis. ``n_blocks`` is the expected
    number of blocks shuffled per volume: the fraction of blocks chosen is
    ``min(1, n_blocks / number_of_blocks)`` (Models Genesis draws 10,000 overlapping blocks,
    which covers most of a volume). Each of ``rounds`` passes draws one block size and one
    grid offset for the batch and chooses blocks per sample; a voxel moves at most
    ``rounds * (max_block - 1)`` along each axis, and the values inside every block are
    only permuted, never changed.

    ``permutations``: how many distinct random permutations are drawn per pass (sorting
    random keys is the costly part); each chosen block uses a random one of them, so every
    block gets a uniformly random permutation, but blocks are not independent of each
    other. ``None`` draws one per block (about 3x slower at 128^3).
    """

    def __init__(self, prob: float = 0.5, n_blocks: int = 10000, max_block=None, rounds: int = 1,
                 permutations: int | None = 1024, generator: "torch.Generator | int | None" = None) -> None:
        super().__init__(generator)
        self.prob, self.n_blocks, self.max_block, self.rounds = float(prob), int(n_blocks), max_block, int(rounds)
        self.permutations = permutations

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, c = x.shape[:2]
        shape = tuple(x.shape[2:])
        selected = _sample_mask(self.prob, b, g, x.device)
        if _none_selected(selected):
            return x
        max_block = [max(1, min(m, n)) for m, n in zip(_per_axis(self.max_block, shape, lambda n: max(2, n // 10)), shape)]
        out = x
        for _ in range(self.rounds):
            u = torch.rand(6, generator=g, device=g.device).tolist()  # host values: they set shapes
            block = [1 + min(int(u[i] * m), m - 1) for i, m in enumerate(max_block)]
            if math.prod(block) == 1 and max(shape) >= 2:  # a 1x1x1 block shuffles nothing
                axis = max(range(3), key=lambda i: shape[i])
                block[axis] = 2
            offset = [min(int(u[3 + i] * bs), n - bs) for i, (bs, n) in enumerate(zip(block, shape))]
            counts = [(n - o) // bs for n, o, bs in zip(shape, offset, block)]
            n_patches, vol = math.prod(counts), math.prod(block)
            (k0, k1, k2), (b0, b1, b2), (o0, o1, o2) = counts, block, offset
            region = out[:, :, o0:o0 + k0 * b0, o1:o1 + k1 * b1, o2:o2 + k2 * b2]
            patches = (region.reshape(b, c, k0, b0, k1, b1, k2, b2)
                       .permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(b, c, n_patches, vol))
            fraction = min(1.0, self.n_blocks / max(n_patches, 1))
            chosen = (_rand((b, n_patches), g, x.device) < fraction) & selected[:, None]
            # A bank of random permutations (row 0: the identity, for blocks left alone);
            # each chosen block takes a random one of them.
            n_perm = b * n_patches if self.permutations is None else max(1, min(b * n_patches, int(self.permutations)))
            bank = torch.cat([torch.arange(vol, device=x.device)[None],
                              _rand((n_perm, vol), g, x.device).argsort(dim=-1)])
            pick = 1 + (_rand((b, n_patches), g, x.device) * n_perm).long().clamp(max=n_perm - 1)
            order = bank[torch.where(chosen, pick, torch.zeros_like(pick))]
            shuffled = patches.gather(-1, order[:, None].expand(b, c, n_patches, vol))
            shuffled = (shuffled.reshape(b, c, k0, k1, k2, b0, b1, b2)
                        .permute(0, 1, 2, 5, 3, 6, 4, 7).reshape(region.shape))
            out = out.clone() if out is x else out
            out[:, :, o0:o0 + k0 * b0, o1:o1 + k1 * b1, o2:o2 + k2 * b2] = shuffled
        return out


# --------------------------------------------------------------------------- non-linear intensity

def _bezier_lut(ctrl: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Lookup tables ``(B, size)`` on a uniform [0, 1] grid of the Bezier intensity curves.

    ``ctrl`` (B, 4): the two inner control points ``(x1, y1, x2, y2)``; endpoints (0, 0), (1, 1).
    Monotone curve: x and y samples both sorted. Flipped (``flip``): x sorted, y taken in
    reverse curve order, which maps dark to bright (a non-monotone, inverting curve).
    """
    t = torch.linspace(0.0, 1.0, size, device=ctrl.device, dtype=torch.float32)
    w1, w2, w3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
    xs = w1 * ctrl[:, 0:1] + w2 * ctrl[:, 2:3] + w3
    ys = w1 * ctrl[:, 1:2] + w2 * ctrl[:, 3:4] + w3
    xs = xs.sort(dim=-1).values
    ys = torch.where(flip[:, None], ys.flip(-1), ys.sort(dim=-1).values)
    grid = t.expand(ctrl.shape[0], -1).contiguous()
    hi = torch.searchsorted(xs, grid, right=True).clamp(1, size - 1)
    lo = hi - 1
    x0, x1 = xs.gather(1, lo), xs.gather(1, hi)
    y0, y1 = ys.gather(1, lo), ys.gather(1, hi)
    dx = x1 - x0
    w = torch.where(dx > 1e-12, (grid - x0) / dx.clamp_min(1e-12), torch.zeros_like(dx)).clamp(0, 1)
    return (y0 + w * (y1 - y0)).clamp(0, 1)


def _apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Map values of ``x`` (B, ...) in [0, 1] through per-sample uniform lookup tables (B, K).

    Nearest entry (one gather; about 10x cheaper than interpolating between two entries on
    CPU): with K = 4096 the input is quantised to 1/4095 of the range, half a Hounsfield
    unit for the project's 2048 HU CT window, far below any grey-level difference that matters.
    """
    b, k = lut.shape
    idx = (x.reshape(b, -1).clamp(0, 1) * (k - 1) + 0.5).long()
    return lut.gather(1, idx).reshape(x.shape)


class NonLinearIntensity(Transform):
    """Random Bezier intensity curve (monotone or flipped, 50/50), output stays in [0, 1].

    The curve is tabulated on ``lut_size`` uniformly spaced input values and applied with
    a nearest-entry lookup.
    """

    def __init__(self, prob: float = 0.9, lut_size: int = 4096, generator: "torch.Generator | int | None" = None) -> None:
        super().__init__(generator)
        self.prob, self.lut_size = float(prob), int(lut_size)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        selected = _sample_mask(self.prob, b, g, x.device)
        ctrl = _rand((b, 4), g, x.device)
        flip = _rand((b,), g, x.device) < 0.5
        if _none_selected(selected):
            return x
        out = _apply_lut(x.float(), _bezier_lut(ctrl, flip, self.lut_size)).to(x.dtype)
        return _blend(selected, out, x)


# --------------------------------------------------------------------------- in/out-painting

def _box_union(batch: int, shape: Sequence[int], n_boxes: int, continue_prob: float, size_range: tuple[float, float],
               g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Union of up to ``n_boxes`` random boxes per sample, ``(B, 1, D, H, W)`` bool.

    Box ``k`` exists when the first ``k + 1`` draws are below ``continue_prob`` (as the
    Models Genesis ``while random() < 0.95`` loop), except the first one which always does.
    Edges are drawn in ``[size_range[0] * n, size_range[1] * n]`` (at least 1, at most n).
    """
    k = max(1, int(n_boxes))
    u = _rand((batch, k, 7), g, device)
    alive = torch.cumprod((u[..., 6] < continue_prob).float(), dim=1).bool()
    alive[:, 0] = True
    masks = []
    for axis, n in enumerate(shape):
        lo = max(1, min(n, int(size_range[0] * n)))
        hi = max(lo, min(n, int(size_range[1] * n)))
        size = (lo + (u[..., axis] * (hi - lo + 1)).floor()).clamp(max=hi)
        start = (u[..., 3 + axis] * (n - size + 1)).floor()
        pos = torch.arange(n, device=device, dtype=u.dtype)
        masks.append((pos >= start[..., None]) & (pos < (start + size)[..., None]))  # (B, K, n)
    mz, my, mx = masks
    # Union of the boxes as a batched matrix product: count(z, y, x) = sum_k zy_k(z, y) x_k(x).
    zy = (mz[:, :, :, None] & my[:, :, None, :] & alive[:, :, None, None]).reshape(batch, k, -1).float()
    count = torch.bmm(zy.transpose(1, 2), mx.float())  # (B, D*H, W)
    return (count > 0.5).reshape(batch, 1, *shape)


class InPaint(Transform):
    """Replace up to ``n_boxes`` random boxes (edges n/6..n/3) by uniform noise."""

    def __init__(self, prob: float = 0.9, n_boxes: int = 5, continue_prob: float = 0.95,
                 size_range: tuple[float, float] = (1 / 6, 1 / 3), generator: "torch.Generator | int | None" = None) -> None:
        super().__init__(generator)
        self.prob, self.n_boxes, self.continue_prob, self.size_range = float(prob), int(n_boxes), continue_prob, size_range

    def fill_mask(self, batch: int, shape, g: torch.Generator, device) -> torch.Tensor:
        return _box_union(batch, shape, self.n_boxes, self.continue_prob, self.size_range, g, device)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        selected = _sample_mask(self.prob, b, g, x.device)
        if _none_selected(selected):
            return x
        fill = self.fill_mask(b, x.shape[2:], g, x.device) & selected.view(-1, 1, 1, 1, 1)
        return torch.where(fill, _rand(x.shape, g, x.device).to(x.dtype), x)


class OutPaint(Transform):
    """Keep only the union of up to ``n_boxes`` random boxes (edges 3n/7..4n/7); noise elsewhere."""

    def __init__(self, prob: float = 0.9, n_boxes: int = 5, continue_prob: float = 0.95,
                 size_range: tuple[float, float] = (3 / 7, 4 / 7), generator: "torch.Generator | int | None" = None) -> None:
        super().__init__(generator)
        self.prob, self.n_boxes, self.continue_prob, self.size_range = float(prob), int(n_boxes), continue_prob, size_range

    def fill_mask(self, batch: int, shape, g: torch.Generator, device) -> torch.Tensor:
        return ~_box_union(batch, shape, self.n_boxes, self.continue_prob, self.size_range, g, device)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        selected = _sample_mask(self.prob, b, g, x.device)
        if _none_selected(selected):
            return x
        fill = self.fill_mask(b, x.shape[2:], g, x.device) & selected.view(-1, 1, 1, 1, 1)
        return torch.where(fill, _rand(x.shape, g, x.device).to(x.dtype), x)


class AppearanceTransform(Transform):
    """Models Genesis composite, decided per sample: shuffle -> non-linear -> in/out-painting.

    Defaults: local shuffle 0.5, non-linear 0.9, painting 0.9, in-painting given painting 0.8
    (out-painting 0.2). Painting computes a single noise volume and one fill mask per sample.
    """

    def __init__(self, shuffle_prob: float = 0.5, nonlinear_prob: float = 0.9, paint_prob: float = 0.9,
                 inpaint_rate: float = 0.8, n_blocks: int = 10000, max_block=None,
                 generator: "torch.Generator | int | None" = None) -> None:
        super().__init__(generator)
        self.shuffle = LocalPixelShuffle(shuffle_prob, n_blocks=n_blocks, max_block=max_block)
        self.nonlinear = NonLinearIntensity(nonlinear_prob)
        self.inpaint = InPaint(1.0)
        self.outpaint = OutPaint(1.0)
        self.paint_prob, self.inpaint_rate = float(paint_prob), float(inpaint_rate)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self.shuffle(x, generator=g)
        x = self.nonlinear(x, generator=g)
        b = x.shape[0]
        paint = _sample_mask(self.paint_prob, b, g, x.device)
        inner = _sample_mask(self.inpaint_rate, b, g, x.device)
        if _none_selected(paint):
            return x
        shape = x.shape[2:]
        fill = torch.where(inner.view(-1, 1, 1, 1, 1), self.inpaint.fill_mask(b, shape, g, x.device),
                           self.outpaint.fill_mask(b, shape, g, x.device))
        fill = fill & paint.view(-1, 1, 1, 1, 1)
        return torch.where(fill, _rand(x.shape, g, x.device).to(x.dtype), x)


# --------------------------------------------------------------------------- spatial

def _pair(value, name: str) -> tuple[float, float]:
    """A symmetric scalar ``v`` -> ``(-v, v)``; a pair is taken as ``(lo, hi)``."""
    if isinstance(value, (int, float)):
        return -float(value), float(value)
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name}: range ({lo}, {hi}) is empty")
    return lo, hi


def _uniform(lo_hi: tuple[float, float], shape, g, device) -> torch.Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * _rand(shape, g, device)


class RandomAffine:
    """Random voxel-space affine about the grid centre (rotation, scaling, shearing, translation).

    ``rotation_deg``: +-degrees about each axis (or ``(lo, hi)``); ``scale``: +-relative change
    (0.1 -> factors in [0.9, 1.1]) or a ``(lo, hi)`` factor range; ``shear_deg``: +-shear
    angle per off-diagonal pair; ``translation``: +-fraction of each axis' extent.
    ``isotropic_scale`` uses one factor for the three axes. ``prob``: per-sample chance of
    applying it (identity otherwise).
    """

    def __init__(self, rotation_deg=15.0, scale=0.1, shear_deg=5.0, translation=0.05,
                 isotropic_scale: bool = False, prob: float = 1.0) -> None:
        self.rotation = _pair(rotation_deg, "rotation_deg")
        self.scale = (1 - float(scale), 1 + float(scale)) if isinstance(scale, (int, float)) else _pair(scale, "scale")
        if self.scale[0] <= 0:
            raise ValueError(f"scale factors must stay positive, got {self.scale}")
        self.shear = _pair(shear_deg, "shear_deg")
        self.translation = _pair(translation, "translation")
        self.isotropic_scale, self.prob = bool(isotropic_scale), float(prob)

    def sample(self, shape: Sequence[int], batch: int, g: torch.Generator, device) -> torch.Tensor:
        """``(B, 3, 4)`` voxel-space matrices for a grid of ``shape``."""
        shape = tuple(int(n) for n in shape)
        rot = torch.deg2rad(_uniform(self.rotation, (batch, 3), g, device))
        extent = torch.tensor([n - 1 for n in shape], device=device, dtype=torch.float32)
        trans = _uniform(self.translation, (batch, 3), g, device) * extent
        scale = _uniform(self.scale, (batch, 1 if self.isotropic_scale else 3), g, device).expand(batch, 3)
        shear = torch.tan(torch.deg2rad(_uniform(self.shear, (batch, 6), g, device)))
        aff = affine_from_parameters(rot, trans, scale.contiguous(), shear, shape)
        if self.prob < 1.0:
            keep = _sample_mask(self.prob, batch, g, device)
            aff = _blend(keep, aff, identity_affine(batch, device=device))
        return aff

    def __repr__(self) -> str:
        return f"RandomAffine({vars(self)})"


class RandomElastic:
    """Smooth random displacement: a coarse random grid upsampled trilinearly.

    ``grid``: control points per axis (int or triple, at least 2); ``magnitude``: largest
    control-point displacement as a fraction of each axis' extent (uniform in
    ``[-magnitude, magnitude]``). The displacement gradient is at most about
    ``2 * magnitude * (grid - 1)``, so the map does not fold while that stays below 1
    (default 0.02 * 2 * 4 = 0.16). ``prob``: per-sample chance (zero field otherwise).
    """

    def __init__(self, grid=5, magnitude: float = 0.02, prob: float = 1.0) -> None:
        self.grid, self.magnitude, self.prob = grid, float(magnitude), float(prob)

    def sample_coarse(self, shape: Sequence[int], batch: int, g: torch.Generator, device) -> torch.Tensor:
        """Control-point displacements ``(B, 3, gz, gy, gx)`` in voxels of the grid ``shape``."""
        shape = tuple(int(n) for n in shape)
        coarse_shape = [max(2, v) for v in _per_axis(self.grid, shape, lambda n: 5)]
        coarse = (2 * _rand((batch, 3, *coarse_shape), g, device) - 1) * self.magnitude
        extent = torch.tensor([max(n - 1, 0) for n in shape], device=device, dtype=torch.float32)
        coarse = coarse * extent.view(1, 3, 1, 1, 1)
        if self.prob < 1.0:
            keep = _sample_mask(self.prob, batch, g, device)
            coarse = coarse * keep.view(-1, 1, 1, 1, 1).to(coarse.dtype)
        return coarse

    def sample(self, shape: Sequence[int], batch: int, g: torch.Generator, device) -> torch.Tensor:
        """``(B, 3, D, H, W)`` displacement in voxels, channels (dz, dy, dx)."""
        coarse = self.sample_coarse(shape, batch, g, device)
        return F.interpolate(coarse, size=tuple(int(n) for n in shape), mode="trilinear", align_corners=True)

    def __repr__(self) -> str:
        return f"RandomElastic({vars(self)})"


def _coarse_positions(shape: Sequence[int], coarse_shape: Sequence[int], device) -> torch.Tensor:
    """Voxel positions ``(3, gz, gy, gx)`` of a coarse grid spanning ``shape`` corner to corner."""
    axes = [torch.linspace(0.0, float(n - 1), int(k), device=device) for n, k in zip(shape, coarse_shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


class SpatialAugment:
    """Affine + elastic spatial augmentation whose draw can be applied to several tensors.

    ``coords = aug.coordinates(shape, batch, generator)`` returns voxel sampling coordinates
    ``(B, 3, D, H, W)`` of the composed map ``p -> A(p + u(p))``; ``aug.apply(t, coords)``
    warps any tensor with them (images trilinear, integer label maps nearest with exact
    label values). ``aug(a, b, ..., generator=g)`` draws once and warps all.
    """

    def __init__(self, affine: "RandomAffine | bool" = True, elastic: "RandomElastic | bool" = True,
                 generator: "torch.Generator | int | None" = None, padding_mode: str = "zeros") -> None:
        # True: the default draw; False/None: that part switched off.
        self.affine = RandomAffine() if affine is True else (affine or None)
        self.elastic = RandomElastic() if elastic is True else (elastic or None)
        self.generator, self.padding_mode = generator, padding_mode

    def coordinates(self, shape: Sequence[int], batch: int = 1, generator: "torch.Generator | int | None" = None,
                    device=None) -> torch.Tensor:
        g = _resolve_generator(generator, self.generator, "SpatialAugment")
        device = torch.device(device) if device is not None else g.device
        shape = tuple(int(n) for n in shape)
        aff = self.affine.sample(shape, batch, g, device) if self.affine is not None else identity_affine(batch, device=device)
        if self.elastic is None:
            return sampling_coordinates(shape, affine=aff, batch=batch)
        coarse = self.elastic.sample_coarse(shape, batch, g, device)
        # p -> A(p + u(p)) with u the trilinear upsampling of a coarse grid: A is affine and the
        # identity map is reproduced exactly by trilinear interpolation (align_corners=True), so
        # the composed coordinates are the upsampling of A(p_c + u_c) on the coarse grid: one
        # interpolation of 3 channels instead of a full-size grid, displacement and matrix product.
        # (Equal to models.spatial.sampling_coordinates(shape, aff, upsampled u); see the tests.)
        pc = _coarse_positions(shape, coarse.shape[2:], device)
        coarse_coords = affine_points(aff, pc.unsqueeze(0) + coarse)
        return F.interpolate(coarse_coords, size=shape, mode="trilinear", align_corners=True)

    def apply(self, x: torch.Tensor, coords: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Warp ``x`` (B, C, D, H, W) with ``coords``; integer tensors use nearest and keep their dtype."""
        if x.dim() != 5:
            raise ValueError(f"SpatialAugment.apply: expected (B, C, D, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            out = warp(x.float(), coords.to(x.device), mode="nearest", padding_mode="zeros")
            return out.round().to(x.dtype)
        return warp(x, coords.to(x.device), mode=mode or "bilinear", padding_mode=self.padding_mode).to(x.dtype)

    def __call__(self, *tensors: torch.Tensor, generator: "torch.Generator | int | None" = None,
                 modes: Sequence[str | None] | None = None):
        if not tensors:
            raise ValueError("SpatialAugment: nothing to warp")
        ref = tensors[0]
        coords = self.coordinates(ref.shape[2:], ref.shape[0], generator, device=ref.device)
        modes = list(modes) if modes is not None else [None] * len(tensors)
        out = tuple(self.apply(t, coords, m) for t, m in zip(tensors, modes))
        return out[0] if len(out) == 1 else out

    def __repr__(self) -> str:
        return f"SpatialAugment(affine={self.affine!r}, elastic={self.elastic!r})"


def _then_affine(coords: torch.Tensor, affine: RandomAffine, g: torch.Generator) -> torch.Tensor:
    """``coords`` composed with one more random affine ``R``: ``p -> coords(R p)`` in one map.

    The displacement ``coords - p`` is sampled at ``R p`` (border values outside, where it is
    smooth) so that the moving scan is interpolated once, like the fixed one.
    """
    shape = tuple(coords.shape[2:])
    rel = sampling_coordinates(shape, affine=affine.sample(shape, coords.shape[0], g, coords.device))
    grid = voxel_grid(shape, device=coords.device).unsqueeze(0)
    return rel + warp(coords - grid, rel, padding_mode="border")


class GVSLPairAugment:
    """What a GVSL pair needs: same spatial draw on both scans, appearance on the moving one.

    ``aug(moving, fixed, generator) -> (moving, fixed, moving_input)``, all (B, 1, D, H, W).
    Both scans are warped with one ``grid_sample`` call (stacked as channels). Pass
    ``spatial=None`` / ``appearance=None`` to switch a part off. ``relative`` (a
    :class:`RandomAffine`) also moves the moving scan alone by a random affine, so that
    the pair differs in pose by more than its two subjects do: what the matching's affine
    head must learn to undo.
    """

    def __init__(self, spatial: SpatialAugment | None = None, appearance: Transform | None = None,
                 relative: RandomAffine | None = None) -> None:
        self.spatial, self.appearance, self.relative = spatial, appearance, relative

    @classmethod
    def default(cls, spatial: bool = True, appearance: bool = True) -> "GVSLPairAugment":
        return cls(SpatialAugment() if spatial else None, AppearanceTransform() if appearance else None)

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, generator: "torch.Generator | int"):
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

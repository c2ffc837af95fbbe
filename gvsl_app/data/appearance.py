"""Appearance transforms for self-restoration (the paper's set, after Models Genesis).

Written from their description (Zhou et al. 2019):

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gvsl_app.data.transforms import Transform, _blend, _none_selected, _per_axis, _rand, _sample_mask

# --------------------------------------------------------------------------- local pixel shuffle


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

    def __init__(
        self,
        prob: float = 0.5,
        n_blocks: int = 10000,
        max_block=None,
        rounds: int = 1,
        permutations: int | None = 1024,
        generator: torch.Generator | int | None = None,
    ) -> None:
        super().__init__(generator)
        self.prob, self.n_blocks, self.max_block, self.rounds = float(prob), int(n_blocks), max_block, int(rounds)
        self.permutations = permutations

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Shuffle the voxels within random small blocks of the selected volumes."""
        b, c = x.shape[:2]
        shape = tuple(x.shape[2:])
        selected = _sample_mask(self.prob, b, g, x.device)
        if _none_selected(selected):
            return x
        max_block = [
            max(1, min(m, n)) for m, n in zip(_per_axis(self.max_block, shape, lambda n: max(2, n // 10)), shape)
        ]
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
            region = out[:, :, o0 : o0 + k0 * b0, o1 : o1 + k1 * b1, o2 : o2 + k2 * b2]
            patches = (
                region.reshape(b, c, k0, b0, k1, b1, k2, b2)
                .permute(0, 1, 2, 4, 6, 3, 5, 7)
                .reshape(b, c, n_patches, vol)
            )
            fraction = min(1.0, self.n_blocks / max(n_patches, 1))
            chosen = (_rand((b, n_patches), g, x.device) < fraction) & selected[:, None]
            # A bank of random permutations (row 0: the identity, for blocks left alone);
            # each chosen block takes a random one of them.
            n_perm = b * n_patches if self.permutations is None else max(1, min(b * n_patches, int(self.permutations)))
            bank = torch.cat(
                [torch.arange(vol, device=x.device)[None], _rand((n_perm, vol), g, x.device).argsort(dim=-1)]
            )
            pick = 1 + (_rand((b, n_patches), g, x.device) * n_perm).long().clamp(max=n_perm - 1)
            order = bank[torch.where(chosen, pick, torch.zeros_like(pick))]
            shuffled = patches.gather(-1, order[:, None].expand(b, c, n_patches, vol))
            shuffled = (
                shuffled.reshape(b, c, k0, k1, k2, b0, b1, b2).permute(0, 1, 2, 5, 3, 6, 4, 7).reshape(region.shape)
            )
            out = out.clone() if out is x else out
            out[:, :, o0 : o0 + k0 * b0, o1 : o1 + k1 * b1, o2 : o2 + k2 * b2] = shuffled
        return out


# --------------------------------------------------------------------------- non-linear intensity


def _bezier_lut(ctrl: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Lookup tables ``(B, size)`` on a uniform [0, 1] grid of the Bezier intensity curves.

    ``ctrl`` (B, 4): the two inner control points ``(x1, y1, x2, y2)``; endpoints (0, 0), (1, 1).
    Monotone curve: x and y samples both sorted. Flipped (``flip``): x sorted, y taken in
    reverse curve order, which maps dark to bright (a non-monotone, inverting curve).
    """
    t = torch.linspace(0.0, 1.0, size, device=ctrl.device, dtype=torch.float32)
    w1, w2, w3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3
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

    def __init__(self, prob: float = 0.9, lut_size: int = 4096, generator: torch.Generator | int | None = None) -> None:
        super().__init__(generator)
        self.prob, self.lut_size = float(prob), int(lut_size)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Map the selected volumes' intensities through a random monotone Bezier curve."""
        b = x.shape[0]
        selected = _sample_mask(self.prob, b, g, x.device)
        ctrl = _rand((b, 4), g, x.device)
        flip = _rand((b,), g, x.device) < 0.5
        if _none_selected(selected):
            return x
        out = _apply_lut(x.float(), _bezier_lut(ctrl, flip, self.lut_size)).to(x.dtype)
        return _blend(selected, out, x)


# --------------------------------------------------------------------------- in/out-painting


def _box_union(
    batch: int,
    shape: Sequence[int],
    n_boxes: int,
    continue_prob: float,
    size_range: tuple[float, float],
    g: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
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


class _BoxPaint(Transform):
    """Uniform noise inside (in-painting) or outside (out-painting) a union of random boxes."""

    outside = False

    def __init__(
        self,
        prob: float = 0.9,
        n_boxes: int = 5,
        continue_prob: float = 0.95,
        size_range: tuple[float, float] = (1 / 6, 1 / 3),
        generator: torch.Generator | int | None = None,
    ) -> None:
        super().__init__(generator)
        self.prob, self.n_boxes = float(prob), int(n_boxes)
        self.continue_prob, self.size_range = continue_prob, size_range

    def fill_mask(self, batch: int, shape, g: torch.Generator, device) -> torch.Tensor:
        boxes = _box_union(batch, shape, self.n_boxes, self.continue_prob, self.size_range, g, device)
        return ~boxes if self.outside else boxes

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        selected = _sample_mask(self.prob, b, g, x.device)
        if _none_selected(selected):
            return x
        fill = self.fill_mask(b, x.shape[2:], g, x.device) & selected.view(-1, 1, 1, 1, 1)
        return torch.where(fill, _rand(x.shape, g, x.device).to(x.dtype), x)


class InPaint(_BoxPaint):
    """Replace up to ``n_boxes`` random boxes (edges n/6..n/3) by uniform noise."""


class OutPaint(_BoxPaint):
    """Keep only the union of up to ``n_boxes`` random boxes (edges 3n/7..4n/7); noise elsewhere."""

    outside = True

    def __init__(
        self,
        prob: float = 0.9,
        n_boxes: int = 5,
        continue_prob: float = 0.95,
        size_range: tuple[float, float] = (3 / 7, 4 / 7),
        generator: torch.Generator | int | None = None,
    ) -> None:
        super().__init__(prob, n_boxes, continue_prob, size_range, generator)


class AppearanceTransform(Transform):
    """Models Genesis composite, decided per sample: shuffle -> non-linear -> in/out-painting.

    Defaults: local shuffle 0.5, non-linear 0.9, painting 0.9, in-painting given painting 0.8
    (out-painting 0.2). Painting computes a single noise volume and one fill mask per sample.
    """

    def __init__(
        self,
        shuffle_prob: float = 0.5,
        nonlinear_prob: float = 0.9,
        paint_prob: float = 0.9,
        inpaint_rate: float = 0.8,
        n_blocks: int = 10000,
        max_block=None,
        generator: torch.Generator | int | None = None,
    ) -> None:
        super().__init__(generator)
        self.shuffle = LocalPixelShuffle(shuffle_prob, n_blocks=n_blocks, max_block=max_block)
        self.nonlinear = NonLinearIntensity(nonlinear_prob)
        self.inpaint = InPaint(1.0)
        self.outpaint = OutPaint(1.0)
        self.paint_prob, self.inpaint_rate = float(paint_prob), float(inpaint_rate)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Shuffle, remap intensities, then in- or out-paint, each with its own probability."""
        x = self.shuffle(x, generator=g)
        x = self.nonlinear(x, generator=g)
        b = x.shape[0]
        paint = _sample_mask(self.paint_prob, b, g, x.device)
        inner = _sample_mask(self.inpaint_rate, b, g, x.device)
        if _none_selected(paint):
            return x
        shape = x.shape[2:]
        fill = torch.where(
            inner.view(-1, 1, 1, 1, 1),
            self.inpaint.fill_mask(b, shape, g, x.device),
            self.outpaint.fill_mask(b, shape, g, x.device),
        )
        fill = fill & paint.view(-1, 1, 1, 1, 1)
        return torch.where(fill, _rand(x.shape, g, x.device).to(x.dtype), x)

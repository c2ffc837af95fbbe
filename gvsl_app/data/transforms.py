"""The transform protocol: explicit randomness, per-sample decisions, composition.

Every transform is a callable object working on torch tensors ``(B, C, D, H, W)`` (float32,
values in ``[0, 1]``) on any device. Randomness is explicit: a call takes ``generator=``
(a ``torch.Generator`` on any device, or an ``int`` seed), or the object is built with one;
with neither, the call raises instead of silently using the global RNG. Random numbers are
drawn on the generator's device and moved to the data's device, so the same generator seed
gives the same result on the same device. Decisions are made per sample of the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(int(seed))


def _resolve_generator(
    call: torch.Generator | int | None, own: torch.Generator | int | None, who: str
) -> torch.Generator:
    g = call if call is not None else own
    if g is None:
        raise ValueError(
            f"{who}: no random generator; pass generator=torch.Generator(...) (or an int seed) "
            "to the call or to the constructor"
        )
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

    def __init__(self, generator: torch.Generator | int | None = None) -> None:
        self.generator = generator

    def __call__(self, x: torch.Tensor, generator: torch.Generator | int | None = None) -> torch.Tensor:
        """``x`` checked, then transformed with ``generator`` (else the transform's own)."""
        name = type(self).__name__
        _check_volume(x, name)
        return self.apply(x, _resolve_generator(generator, self.generator, name))

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # pragma: no cover - abstract
        """Transform ``x`` (B, C, D, H, W) with the random numbers of ``g``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "generator")
        return f"{type(self).__name__}({fields})"


class Compose(Transform):
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Iterable, generator: torch.Generator | int | None = None) -> None:
        super().__init__(generator)
        self.transforms = list(transforms)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Apply each transform in turn with the same generator."""
        for t in self.transforms:
            x = t(x, generator=g)
        return x


def _per_axis(value, shape: Sequence[int], default) -> list[int]:
    if value is None:
        return [default(n) for n in shape]
    if isinstance(value, (int, float)):
        return [int(value)] * len(shape)
    value = [int(v) for v in value]
    if len(value) != len(shape):
        raise ValueError(f"expected {len(shape)} values, got {value}")
    return value

"""One home for every user-facing choice and default of the engine (no torch, no Qt).

The ``gvsl`` command line builds its ``match``, ``segment`` and ``embed`` options from the
dataclasses here (:func:`gvsl_app.cli.add_options`) and the napari widgets build their form
rows from the same fields, so a default or a list of choices is written once. Fixed choices
are ``str`` enums: they compare equal to their text (``InitMode.AUTO == "auto"``), print as
it, and travel through YAML/JSON as plain strings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

O = TypeVar("O")


class Choice(str, Enum):
    """A fixed choice whose value is its command-line spelling."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Every spelling, in declaration order (argparse ``choices``, a combo box's items)."""
        return tuple(str(m.value) for m in cls)


class Variant(Choice):
    """What ``gvsl pretrain`` trains: the full method or one of its ablations."""

    GVSL = "gvsl"
    RESTORATION = "restoration"
    MATCHING = "matching"
    NO_AFFINE = "no-affine"


class AffineHead(Choice):
    """The global (affine) Z-Matching head: keypoints (ours) or the paper's pooled regression."""

    KEYPOINTS = "keypoints"
    PAPER = "paper"


class DeformableHead(Choice):
    """The local (deformable) Z-Matching head."""

    PYRAMID = "pyramid"
    PYRAMID_WIDE = "pyramid-wide"
    PYRAMID_CORR = "pyramid-corr"
    PYRAMID_FULL = "pyramid-full"
    PAPER = "paper"


class TrainingSimilarity(Choice):
    """The pre-training matching loss."""

    MULTISCALE_NCC = "multiscale-ncc"
    NCC = "ncc"


class MatchInput(Choice):
    """What the pre-training's matching sees: the clean scans or the appearance-transformed one."""

    CLEAN = "clean"
    TRANSFORMED = "transformed"


class PoseRange(Choice):
    """How far ``--relative-pose`` moves the moving scan of a pre-training pair."""

    SMALL = "small"
    LARGE = "large"


class Task(Choice):
    """A downstream task of ``gvsl finetune``."""

    SEG = "seg"
    CLS = "cls"


class JobStatus(Choice):
    """The life of a background job (matching, segmentation, embedding) or a training process."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    STARTING = "starting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FOLLOWING = "following"


class RefinePreset(Choice):
    """The refinement's schedule: chosen from the scans (``auto``) or named."""

    AUTO = "auto"
    STANDARD = "standard"
    BRAIN = "brain"


class InitMode(Choice):
    """How the moving scan is first placed on the fixed one, before the network."""

    AUTO = "auto"
    NONE = "none"
    GEOMETRY = "geometry"
    MASS = "mass"
    MOMENTS = "moments"


class SkullStrip(Choice):
    """Whether the brain tissue segmenter first masks the brain (``auto``) or sees the whole image (``off``)."""

    AUTO = "auto"
    OFF = "off"


class MatchSimilarity(Choice):
    """What the refinement (and the fallback's judgement) compares: chosen from the scans'
    intensities (``auto``), local NCC (one contrast), MIND-SSC descriptors or normalised
    gradient fields (across contrasts and modalities).
    """

    AUTO = "auto"
    NCC = "ncc"
    MIND = "mind"
    NGF = "ngf"


def option(default: Any, help: str, *, choices: type[Choice] | None = None, flag: str | None = None, **extra: Any):
    """A dataclass field that carries what a front end needs to offer it: its help text, its
    choices (a :class:`Choice` enum), and its command-line spelling when it is not the field's
    name with dashes (``refine`` is ``--refine/--no-refine``).
    """
    meta = {"help": help, "choices": choices, "flag": flag, **extra}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class MatchOptions:
    """The options of one Z-Matching (``gvsl match``, the Z-Matching widget, :func:`match`).

    ``size`` is the network's working cube (None: the cube the weights were trained at);
    ``refine`` polishes the network's map on this pair with the ``refine_preset`` schedule
    (``auto``: ``brain`` for MR of a head-sized field of view at up to ~2 mm voxels, else ``standard``);
    ``init`` places the moving scan before the network (``auto`` tries the identity, the
    centres of the fields of view, the centres of intensity mass and the principal axes, and
    keeps the best by the similarity); ``similarity`` is what the refinement and the
    fallback compare (``auto``: MIND-SSC when the two scans' intensities say they are of
    different contrasts, else local NCC); ``passes`` applies the network again to its own
    result; ``fallback`` keeps the identity (or the initial alignment) when the network's map
    makes the pair less alike; ``overlap_mask`` restricts every similarity to where the placed
    moving scan has data (a partial field of view).
    """

    size: int | None = option(
        None,
        "working cube side in voxels (default: the cube the weights were trained at)",
        minimum=16,
        maximum=512,
        why="the network pools four times",
    )
    refine: bool = option(
        True,
        "polish the network's map on this pair by instance optimisation (default; ~9 s for a 128^3 pair on a "
        "2-core CPU); --no-refine returns the network's map alone (~2 s)",
    )
    refine_preset: RefinePreset = option(
        RefinePreset.AUTO,
        "the refinement's schedule: auto (default: brain for MR of a head at up to ~2 mm voxels, else "
        "standard), standard (CT and large deformations) or brain (brain MR and other ~1 mm scans with small "
        "smooth deformations: stiffer and finer, ~1.5x the time)",
        choices=RefinePreset,
    )
    init: InitMode = option(
        InitMode.AUTO,
        "initial alignment before the network: auto (default: the best of none, geometry, mass and moments by "
        "the similarity), none (the scans' own physical frames), geometry (centres of the fields of view), mass "
        "(centres of intensity mass) or moments (principal axes, candidate rotations scored by the similarity)",
        choices=InitMode,
    )
    similarity: MatchSimilarity = option(
        MatchSimilarity.AUTO,
        "what the refinement compares: auto (default: mind when the scans' intensities differ in kind, e.g. CT "
        "against MR or T1 against T2, else ncc), ncc (local NCC), mind (MIND-SSC descriptors) or ngf "
        "(normalised gradient fields)",
        choices=MatchSimilarity,
    )
    passes: int = option(
        1,
        "apply the network N times, each to its own result, and compose the maps (default 1; 3 helps the "
        "network alone on CT)",
        minimum=1,
        maximum=10,
    )
    fallback: bool = option(
        True,
        "use the identity (or the initial alignment) when the network's map lowers the similarity (default); "
        "--no-fallback keeps the network's map whatever it does",
    )
    overlap_mask: bool = option(
        True,
        "compare the pair only where the moving scan, once placed, has data (default), so that a partial field "
        "of view is matched where it has data and its edge pulls on nothing; --no-overlap-mask compares the "
        "whole fixed grid, the moving scan's background included",
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class SegmentOptions:
    """The options of ``gvsl segment`` and the Segmentation widget (besides the weights)."""

    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    skull_strip: str = option(
        "auto",
        "brain tissue segmenter only: auto masks the brain first on a whole head (skull, scalp, neck left out; "
        "an already skull-stripped image is left whole); off segments the whole image",
        choices=SkullStrip,
    )


class FeatureLevel(Choice):
    """Which features ``gvsl embed`` and the Feature clusters widget embed: one level of the
    U-Net's decoder, coarse to fine (``decoder-1`` at 1/8 of the working cube, ``decoder-4`` at
    full resolution: the last decoder level, the network's local features), or ``hypercolumn``:
    the four read at the same voxels and concatenated.
    """

    DECODER_1 = "decoder-1"
    DECODER_2 = "decoder-2"
    DECODER_3 = "decoder-3"
    DECODER_4 = "decoder-4"
    HYPERCOLUMN = "hypercolumn"


@dataclass(frozen=True)
class EmbedOptions:
    """The options of ``gvsl embed`` and the Feature clusters widget (besides the weights)."""

    per_label: int = option(500, "voxels sampled per structure", minimum=1, maximum=5000)
    size: int = option(96, "working cube side in voxels", minimum=16, maximum=512, why="the network pools four times")
    seed: int = option(0, "seed of the voxel sampling and of t-SNE", minimum=0, maximum=2**32 - 1)
    level: FeatureLevel = option(
        FeatureLevel.DECODER_4,
        "the features embedded: a decoder level, coarse to fine (decoder-1 at 1/8 of the working cube ... "
        "decoder-4 at full resolution, the last decoder level: default), or hypercolumn (the four read at each "
        "voxel and concatenated); the report scores every level (silhouette and 5-NN accuracy) either way",
        choices=FeatureLevel,
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")

    def __post_init__(self) -> None:
        check_options(self)


def check_options(options: Any) -> None:
    """Coerce choice fields to their enum and refuse a value out of range, naming the option
    as the command line spells it (a ValueError, one line).
    """
    for f in dataclasses.fields(options):
        value, meta = getattr(options, f.name), f.metadata
        name = "--" + f.name.replace("_", "-")
        choices = meta.get("choices")
        if choices is not None and value is not None:
            try:
                object.__setattr__(options, f.name, choices(str(value)))
            except ValueError:
                raise ValueError(f"{name} must be one of {', '.join(choices.values())}, got {value!r}") from None
        if isinstance(value, bool) or value is None or not isinstance(value, int):
            continue
        lo, hi = meta.get("minimum"), meta.get("maximum")
        why = f" ({meta['why']})" if meta.get("why") else ""
        if lo is not None and value < lo:
            raise ValueError(f"{name} must be >= {lo}{why}, got {value}")
        if hi is not None and value > hi:
            raise ValueError(f"{name} must be <= {hi}{why}, got {value}")


def from_args(options_cls: type[O], args: Any) -> O:
    """The ``options_cls`` dataclass from parsed command-line arguments (an ``argparse``
    namespace with one attribute per field); its range checks apply.
    """
    return options_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options_cls)})  # type: ignore[arg-type]

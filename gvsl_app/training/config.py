"""Configurations of training runs: dataclasses that load from YAML and CLI overrides."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from gvsl_app.options import PoseRange
from models.gvsl import AFFINE_HEADS, DEFORMABLE_HEADS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

VARIANTS = ("gvsl", "restoration", "matching", "no-affine")
SIMILARITIES = ("multiscale-ncc", "ncc")
MATCH_INPUTS = ("clean", "transformed")


@dataclass
class PretrainConfig:
    """GVSL pre-training. ``data`` is a folder of volumes or ``synthetic:cardiac``.

    ``width`` is the base width (paper: 32; each level doubles it). Loss weights default
    to the paper's (all 1). ``affine_head`` / ``deformable_head`` choose the Z-Matching
    heads (defaults: keypoints / pyramid; ``paper`` for the paper's, see docs/design/matching.md);
    ``similarity`` is the matching loss: ``multiscale-ncc`` (local NCC 9^3 at full, 1/2 and
    1/4 resolution, the default) or ``ncc`` (the paper's, full resolution only); ``ncc_eps``
    the damping of its denominator, on window means (``models.losses.local_ncc``; the
    authors' and VoxelMorph's 1e-5 on window sums is 1e-5 / 729^2 here, docs/results/matching.md);
    ``match_input``: ``clean`` (default: match the clean scans, restore the
    appearance-transformed one in a second backbone pass) or ``transformed`` (the paper's:
    match the transformed moving scan, one pass). ``workers`` DataLoader processes prepare
    augmented pairs off the training loop. ``warmup`` ramps the learning rate over that many iterations;
    ``decay_start`` > 0 lowers it from that iteration to the last along a half cosine, to 1/50 of
    ``lr`` (the shipped weights' recipe: a constant rate, then a decay for the last half);
    ``affine_warmup`` matches with the affine head alone for that many iterations first, to
    test whether the deformable head takes the signal away from the affine head (at the
    study's small budget it did not help: docs/results/study_small/findings_small.md). ``snapshot_every`` > 0
    also keeps the model weights of every N-th iteration as ``checkpoints/iter_NNNNNN.pt``
    (for learning curves: ``benchmarks/matching_curves.py``). ``init`` starts the network from
    a GVSL checkpoint's weights (``scratch``: random); the optimiser starts afresh.
    ``relative_pose`` also moves the moving scan alone: ``False``, ``True``/``"small"``
    (+-10 degrees, 6 % shifts) or ``"large"`` (+-30 degrees, 20 % scale, 15 % shifts: the
    residual a pair of different people can keep after a moments initialisation).
    """

    data: str = "synthetic:cardiac"
    init: str = "scratch"
    run: str = "runs/pretrain"
    variant: str = "gvsl"
    affine_head: str = "keypoints"
    deformable_head: str = "pyramid"
    similarity: str = "multiscale-ncc"
    ncc_eps: float = 1e-5
    match_input: str = "clean"
    iters: int = 1000
    size: int = 64
    width: int = 8
    batch: int = 1
    lr: float = 1e-4
    warmup: int = 0
    decay_start: int = 0
    affine_warmup: int = 0
    device: str = "auto"
    seed: int = 0
    workers: int = 2
    n_synthetic: int = 16
    log_every: int = 1
    ckpt_every: int = 50
    val_every: int = 50
    snapshot_every: int = 0
    w_ncc: float = 1.0
    w_smooth: float = 1.0
    w_mse: float = 1.0
    w_affine: float = 0.0
    relative_pose: bool | str = False
    amp: bool = True
    compile: bool = False
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_values(
            self,
            positive=(
                *("iters", "size", "width", "batch", "log_every", "ckpt_every", "val_every", "n_synthetic"),
                *("lr", "ncc_eps"),
            ),
            non_negative=(
                "warmup",
                "decay_start",
                "affine_warmup",
                "workers",
                "snapshot_every",
                "seed",
                "w_ncc",
                "w_smooth",
                "w_mse",
                "w_affine",
            ),
            choices={
                "variant": VARIANTS,
                "affine_head": AFFINE_HEADS,
                "deformable_head": DEFORMABLE_HEADS,
                "similarity": SIMILARITIES,
                "match_input": MATCH_INPUTS,
            },
            bounds={
                **COMMON_BOUNDS,
                **{w: (0.0, MAX_WEIGHT) for w in ("w_ncc", "w_smooth", "w_mse", "w_affine")},
                "ncc_eps": (0.0, 1.0),
                "affine_warmup": (0, self.iters),
            },
        )
        if self.size < 16:
            raise ValueError(f"size must be >= 16 (four poolings), got {self.size}")
        if self.n_synthetic < 2:
            raise ValueError(f"n_synthetic must be >= 2 (a pair needs two subjects), got {self.n_synthetic}")
        if self.decay_start >= self.iters:
            raise ValueError(f"decay_start ({self.decay_start}) must be below iters ({self.iters}), or 0 for no decay")
        if self.relative_pose not in (False, True, *PoseRange.values()):
            raise ValueError(f"relative_pose must be false, true, small or large, got {self.relative_pose!r}")


@dataclass
class FinetuneConfig:
    """Downstream fine-tuning (``linear=False``) or linear evaluation (``linear=True``).

    ``init`` is ``scratch``, one of our checkpoints or the authors' released checkpoint.
    ``size`` is the training patch side (segmentation) or the resized volume side
    (classification). ``n_train`` limits the labelled training subjects (few-label regime).
    """

    data: str = ""
    run: str = "runs/finetune"
    init: str = "scratch"
    task: str = "seg"
    linear: bool = False
    iters: int = 500
    size: int = 48
    width: int = 8
    batch: int = 2
    lr: float = 1e-3
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    val_every: int = 50
    val_fraction: float = 0.2
    test_fraction: float = 0.3
    n_train: int = 0
    log_every: int = 1
    amp: bool = True
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_values(
            self,
            positive=("iters", "size", "width", "batch", "val_every", "log_every", "lr"),
            non_negative=("workers", "n_train", "seed"),
            choices={"task": ("seg", "cls")},
            bounds=COMMON_BOUNDS,
        )
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie between 0 and 1, got {self.val_fraction}")
        if not 0.0 <= self.test_fraction < 1.0 - self.val_fraction:
            raise ValueError(
                f"test_fraction must be >= 0 and leave training cases (val_fraction + test_fraction "
                f"< 1), got {self.test_fraction} with val_fraction {self.val_fraction}"
            )
        if self.size < 16:
            raise ValueError(f"size must be >= 16, got {self.size}")


C = TypeVar("C", bound="DataclassInstance")

_TYPES: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float), "bool": bool, "str": str}
_KIND = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}


MAX_SEED = 2**32 - 1
"""numpy's generators take seeds up to 2**32 - 1."""
MAX_INT = MAX_SEED
"""The largest whole number any option takes (a 99999999999 is a typo, not a request)."""
MAX_WORKERS = 256
MAX_BATCH = 1024
MAX_WEIGHT = 1e6
COMMON_BOUNDS: dict[str, tuple[float, float]] = {
    "batch": (1, MAX_BATCH),
    "workers": (0, MAX_WORKERS),
    "seed": (0, MAX_SEED),
    "lr": (0.0, 1.0),
}
"""Closed ranges of the training options (beyond > 0 / >= 0), checked by :func:`check_values`."""


def flag_of(name: str) -> str:
    """The command-line flag of option ``name`` (``ncc_eps`` -> ``--ncc-eps``)."""
    return "--" + name.replace("_", "-")


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Refuse ``value`` outside ``[low, high]`` or not finite, naming ``name`` (a flag such as
    ``--n``, or an option, whose flag is added) in the message.
    """
    label = name if name.startswith("-") else f"{name} ({flag_of(name)})"
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"option {label} must be a finite number, got {value}")
    if not low <= value <= high:
        raise ValueError(f"option {label} must lie between {low:g} and {high:g}, got {value}")


def check_values(
    config: Any,
    positive: tuple[str, ...] = (),
    non_negative: tuple[str, ...] = (),
    choices: dict[str, tuple[str, ...]] | None = None,
    bounds: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Check every option's type against its annotation, then that numbers are finite and
    whole numbers at most :data:`MAX_INT`, the ranges (``bounds``: closed ranges by option),
    the choices and that ``resume`` and ``overwrite`` are not both set; errors name the
    option and its command-line flag.

    YAML and Python callers can pass anything: ``amp: 'false'`` is a non-empty string (true
    in Python) and ``iters: 'ten'`` would fail much later with an unrelated message, and
    ``val_every: 0`` divides by zero after the first step. ``bool`` is not accepted for a
    number (``True`` is an ``int`` in Python), nor a number for a ``bool``.
    """
    for f in fields(config):
        value, kind = getattr(config, f.name), str(f.type)
        expected = _TYPES.get(kind)
        if expected is None:
            continue
        wrong = not isinstance(value, expected) or (kind != "bool" and isinstance(value, bool))
        if wrong:
            raise ValueError(f"option {f.name}: expected {_KIND[kind]}, got {value!r} ({type(value).__name__})")
        if kind == "float" and not math.isfinite(value):
            raise ValueError(f"option {f.name} must be a finite number, got {value} ({flag_of(f.name)})")
        if kind == "int" and abs(value) > MAX_INT:
            raise ValueError(f"option {f.name} must be at most {MAX_INT} in size, got {value} ({flag_of(f.name)})")
    for name in positive:
        if not getattr(config, name) > 0:
            raise ValueError(f"option {name} must be > 0, got {getattr(config, name)} ({flag_of(name)})")
    for name in non_negative:
        if getattr(config, name) < 0:
            raise ValueError(f"option {name} must be >= 0, got {getattr(config, name)} ({flag_of(name)})")
    for name, (low, high) in (bounds or {}).items():
        check_range(name, getattr(config, name), low, high)
    for name, allowed in (choices or {}).items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"unknown {name} {getattr(config, name)!r}; choose one of {', '.join(allowed)}")
    if config.resume and config.overwrite:
        raise ValueError(
            "resume and overwrite exclude each other: --resume continues the run in the folder, "
            "--overwrite starts a new one there"
        )


def load_config(cls: type[C], path: str | Path | None = None, **overrides: Any) -> C:
    """Build a config from an optional YAML file, then overrides (``None`` = not given).

    Unknown keys in the YAML file are an error that names them, so a typo never silently
    trains with a default.
    """
    values: dict[str, Any] = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of option: value")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values.update(data)
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.keys() & RUN_CONTROL - {"run"}:
        # A run's own config.yaml records how that run was started (``overwrite: true``):
        # the command line's --resume / --overwrite decide for this call, not the file's.
        values.pop("resume", None)
        values.pop("overwrite", None)
    values.update(given)
    config = cls(**values)
    # Which options the user set (file or command line): --resume needs it to tell an
    # option left out (the run's saved value applies) from one asked for (compared).
    setattr(config, GIVEN, frozenset(values))
    return config


GIVEN = "_given_options"
RUN_CONTROL = frozenset({"run", "resume", "overwrite"})
"""Options that say which folder and how to treat it, not what is trained."""
MAY_CHANGE_ON_RESUME = frozenset(
    {"iters", "device", "workers", "amp", "compile", "log_every", "ckpt_every", "val_every", "snapshot_every"}
)
"""Options a resumed run takes from the command line: how long and where it runs, how often it
logs, checkpoints and validates. Only ``iters`` touches the training itself, and only with a
decaying learning rate (``decay_start``): the decay ends at the last iteration, so extending a
run in its decay raises the rate from there on (the resume message gives both rates)."""
PATH_OPTIONS = ("data", "init")
"""Options that name files: a resume may spell them differently (another folder, a moved run)."""
_PATH_OPTIONS = PATH_OPTIONS


def given_options(config: Any) -> frozenset[str]:
    """The names of the options the user set: recorded by :func:`load_config` (the YAML's keys
    and the command-line options given); for a config built directly in Python, the options
    whose value differs from the dataclass default (the only sign of intent it carries).
    """
    recorded = getattr(config, GIVEN, None)
    if recorded is not None:
        return frozenset(recorded)
    return frozenset(f.name for f in fields(config) if getattr(config, f.name) != _default(f))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def _same(name: str, asked: Any, saved: Any) -> bool:
    """Equal values; paths (``data``, ``init``) also when two spellings name the same file, and
    when the saved one is relative to a folder the run was started from and not found from
    here (the path given now is then the only one that says where the data is).
    """
    if asked == saved:
        return True
    if name in _PATH_OPTIONS and isinstance(asked, str) and isinstance(saved, str):
        if _lost_relative(saved):
            return True
        with contextlib.suppress(OSError):
            return os.path.samefile(asked, saved)
    return False


def _lost_relative(path: Any) -> bool:
    """A relative path (not ``synthetic:...`` or ``scratch``) that does not exist from here."""
    return (
        isinstance(path, str)
        and ":" not in path
        and path != "scratch"
        and not os.path.isabs(path)
        and not os.path.exists(path)
    )


def resume_config(config: C, saved: dict[str, Any], source: str) -> tuple[C, dict[str, tuple[Any, Any]]]:
    """The configuration a resumed run continues with: the ``saved`` one (``source`` names it),
    with the options of :data:`MAY_CHANGE_ON_RESUME` that the user set in ``config``, and
    ``config``'s run folder. Returns it with ``{option: (saved, new)}`` of what changed.

    Any other option set to a value other than the saved one would silently train something
    else than the checkpoint was trained for (other data, size, width, learning rate...), so
    it is refused with a ``ValueError`` that lists the differences and how to proceed. Options
    the saved file lacks (a run folder of an older version) keep ``config``'s value.
    """
    names = [f.name for f in fields(config)]
    run = getattr(config, "run")  # noqa: B009 (every training config has one; C does not say so)
    values = {n: saved[n] if n in saved else getattr(config, n) for n in names}
    changed: dict[str, tuple[Any, Any]] = {}
    refused: dict[str, tuple[Any, Any]] = {}
    for name in sorted(given_options(config) - RUN_CONTROL, key=names.index):
        asked, before = getattr(config, name), values[name]
        unused = name == "n_synthetic" and not str(values.get("data")).startswith("synthetic:")
        if unused:
            continue  # n_synthetic only shapes synthetic data: harmless beside a data folder
        if _same(name, asked, before):
            if name in _PATH_OPTIONS and asked != before and _lost_relative(before):
                values[name] = asked  # the saved spelling does not work from here; this one does
                changed[name] = (before, asked)
            continue
        (changed if name in MAY_CHANGE_ON_RESUME else refused)[name] = (before, asked)
        values[name] = asked
    lost = [n for n in _PATH_OPTIONS if n in values and n not in given_options(config) and _lost_relative(values[n])]
    if lost:
        raise ValueError(
            f"--resume continues {run} as configured in {source}, whose "
            + ", ".join(f"{n} {values[n]!r}" for n in lost)
            + " is relative to the folder the run was started from and not found from here: run the "
            "command from that folder, or pass " + " and ".join(f"--{n} with its full path" for n in lost)
        )
    if refused:
        diff = ", ".join(f"{n} {a!r} -> {b!r}" for n, (a, b) in refused.items())
        raise ValueError(
            f"--resume continues {run} as configured in {source}; this command changes what it "
            f"trains: {diff} (saved -> asked). Leave these options out to resume as saved (only "
            f"{', '.join(sorted(MAY_CHANGE_ON_RESUME))} may change), or train with the new values in a "
            f"fresh run folder: another --run, or --overwrite instead of --resume to move this run to history/"
        )
    values.update(run=run, resume=True, overwrite=False)
    return type(config)(**values), changed


def as_dict(config: Any) -> dict:
    """A configuration dataclass as a plain dict (for checkpoints and reports)."""
    return dataclasses.asdict(config)

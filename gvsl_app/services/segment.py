"""Segmentation of a whole volume with a fine-tuned checkpoint (the demo one by default)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gvsl_app.data.preprocess import detect_modality, normalise, resample_to
from gvsl_app.io.geometry import geometry_differences
from gvsl_app.io.jsonio import dumps_strict
from gvsl_app.io.label_maps import check_labels_fit
from gvsl_app.io.volume import Volume
from gvsl_app.services.brain_mask import BrainMask, brain_mask, dark_grey_matter_to_csf
from gvsl_app.services.inference import segment_array
from gvsl_app.services.metrics import dice_per_label, label_volumes_ml, mean_dice
from gvsl_app.services.stages import StageClock
from gvsl_app.services.weights import DEMO_SEG, DEMO_SEGMENTERS
from models import resolve_device
from models.checkpoint import CheckpointError, load_state_into, read_checkpoint
from models.downstream import SegmentationNet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpacingReport:
    """What segmentation did about voxel spacing (mm, ITK x, y, z), the report's ``spacing``.

    Attributes:
        image: The input image's spacing.
        trained: The segmenter's training spacings (:class:`TrainingSpacing`; ``None``: unknown).
        resampled_to: The spacing the image was resampled to for inference (``None``: its own).
        resampled_shape: The shape ``(z, y, x)`` of that resampled grid (``None``: not resampled).
    """

    image: list[float]
    trained: TrainingSpacing | None
    resampled_to: list[float] | None
    resampled_shape: list[int] | None


ADULT_RANGE_ML: dict[str, tuple[float, float]] = {"Grey matter": (500.0, 800.0), "White matter": (400.0, 650.0)}
"""Healthy adult brain tissue volumes (mL) outside which the report flags a segmentation.

A plausibility band, not a norm: MRI volumetry of healthy adults aged about 20-80, both sexes,
puts grey matter at roughly 40-50 % and white matter at 30-40 % of a 1.2-1.7 L intracranial
volume (docs/guide/segmentation.md says more). A volume outside it means a wrong input (not
a T1 head, a child, a lesion) or a wrong segmentation (scalp called grey matter); the brain
phantoms, from the MNI template (larger than a real brain: 1091 mL of grey matter), lie above it.
"""


@dataclass(frozen=True)
class BrainMaskReport:
    """What the brain-mask step before the brain segmenter did (the report's ``brain_mask``).

    Attributes:
        applied: True when non-brain tissue (skull, scalp, neck) was removed before
            segmenting; False when the image was taken as already skull-stripped, or the step
            was turned off (``mode``).
        mode: ``"auto"`` (the default: a classical mask, :mod:`gvsl_app.services.brain_mask`)
            or ``"off"`` (the network alone on the whole image).
        head_ml: The head's volume (mL); ``None`` when off.
        brain_ml: The mask's volume (mL); ``None`` when off.
        csf_threshold: The image intensity below which grey matter was relabelled CSF
            (:func:`~gvsl_app.services.brain_mask.dark_grey_matter_to_csf`); ``None`` when off.
        grey_to_csf_ml: The volume so moved from grey matter to CSF (mL); ``None`` when off.
    """

    applied: bool
    mode: str
    head_ml: float | None = None
    brain_ml: float | None = None
    csf_threshold: float | None = None
    grey_to_csf_ml: float | None = None


def volume_flags(names: dict[str, str], volume_ml: dict[str, float]) -> dict[str, str]:
    """Per label (key as in ``volume_ml``), a sentence for a volume outside :data:`ADULT_RANGE_ML`."""
    out = {}
    for k, v in volume_ml.items():
        name = names.get(k, k)
        if name in ADULT_RANGE_ML:
            lo, hi = ADULT_RANGE_ML[name]
            if not lo <= v <= hi:
                out[k] = f"{name} {v:.0f} mL is outside the healthy adult range {lo:.0f}-{hi:.0f} mL"
    return out


def brain_notes(record: SegmentReport) -> list[str]:
    """Lines saying what the brain-mask and CSF steps did and which volumes lie outside the adult range."""
    lines = []
    mask = record.brain_mask
    if mask is not None and mask.applied:
        lines.append(
            f"brain mask: {mask.brain_ml:.0f} mL of a {mask.head_ml:.0f} mL head (skull, scalp and neck left out)"
        )
    if mask is not None and mask.grey_to_csf_ml:
        lines.append(
            f"CSF step: {mask.grey_to_csf_ml:.0f} mL of grey matter darker than the brain's CSF relabelled CSF"
        )
    lines += [f"warning: {flag}" for flag in record.volume_flags.values()]
    return lines


@dataclass
class SegmentReport:
    """The report of one segmentation, the schema of ``gvsl segment``'s ``*_report.json``.

    Per-label maps are keyed by the label value as a string (JSON object keys), over every
    foreground class of the model (``1 .. n_classes - 1``).

    Attributes:
        image: The input image's source (path or layer name).
        weights: The checkpoint used.
        segmenter: Which segmenter and why (``"PATH (given)"`` when the caller chose it).
        device: The device the inference ran on (``cpu`` after a CUDA out-of-memory fallback).
        window: The sliding window's edge in voxels.
        spacing: What was done about voxel spacing.
        n_classes: The model's classes, background included.
        label_names: Structure name per label.
        volume_ml: Volume per label in millilitres (0 when absent).
        dice: Dice per label against the reference (NaN: a label in neither map); ``None``
            without a reference, and then it, ``mean_dice`` and ``reference_volume_ml`` are
            left out of :meth:`as_dict`.
        mean_dice: The mean of the defined Dice values (NaN when none is).
        reference_volume_ml: The reference's volume per label in millilitres.
        reference_labels_not_in_model: Reference label values the model does not have
            (left out of :meth:`as_dict` when none).
        seconds: ``load_s``, ``inference_s``, ``score_s`` (Dice and distances) and ``total_s``.
        brain_mask: For the brain tissue segmenter, what the brain-mask step did
            (:class:`BrainMaskReport`); ``None`` (left out of :meth:`as_dict`) for others.
        volume_flags: Per label, a sentence when its volume lies outside the healthy adult
            range (:data:`ADULT_RANGE_ML`; left out of :meth:`as_dict` when none).
    """

    image: str
    weights: str
    segmenter: str
    device: str
    window: int
    spacing: SpacingReport
    n_classes: int
    label_names: dict[str, str]
    volume_ml: dict[str, float]
    dice: dict[str, float] | None = None
    mean_dice: float | None = None
    reference_volume_ml: dict[str, float] | None = None
    reference_labels_not_in_model: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    brain_mask: BrainMaskReport | None = None
    volume_flags: dict[str, str] = field(default_factory=dict)

    def score_against(
        self, pred: np.ndarray, reference: Volume, ids: list[int], spacing: tuple[float, float, float]
    ) -> None:
        """Fill the reference fields from a label map ``pred`` on the reference's grid.

        Dice per label of ``ids``, the reference's volumes at voxel ``spacing`` (mm) and the
        reference's labels the model lacks.
        """
        d = dice_per_label(pred, np.asarray(reference.array), ids)
        ref_vols = label_volumes_ml(reference.array, spacing)
        self.dice = {str(k): v for k, v in d.items()}
        self.mean_dice = mean_dice(d)  # a structure in neither map (NaN) is left out
        self.reference_volume_ml = {str(k): ref_vols.get(k, 0.0) for k in ids}
        self.reference_labels_not_in_model = sorted(set(ref_vols) - set(ids))

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values, in field order, without the unused optional fields."""
        out = asdict(self)
        if self.dice is None:
            for key in ("dice", "mean_dice", "reference_volume_ml"):
                del out[key]
        if not self.reference_labels_not_in_model:
            del out["reference_labels_not_in_model"]
        for key in ("brain_mask", "volume_flags"):
            if not out[key]:
                del out[key]
        return out

    def to_json(self) -> str:
        """:meth:`as_dict` as strict JSON (an undefined Dice written as ``null``)."""
        return dumps_strict(self.as_dict())


@dataclass
class SegmentResult:
    """A label map on the input's grid and its report.

    ``report`` is ``record.as_dict()``, built once: a plain dict the CLI adds its notes to and
    writes; read the typed fields from ``record``.
    """

    labels: Volume
    record: SegmentReport
    report: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.report = self.record.as_dict()


def load_segmenter(weights: str | os.PathLike | None, device: torch.device) -> tuple[SegmentationNet, dict]:
    """A segmentation network and its checkpoint metadata (label names, patch size).

    Refuses, with a message saying what is expected, a missing file, a GVSL pre-training
    or classification checkpoint, and a checkpoint without its model configuration.
    """
    path = Path(weights) if weights else DEMO_SEG
    if weights is None and not path.is_file():
        raise CheckpointError(
            f"demo segmentation weights missing at {path}: reinstall the package or pass "
            "--weights RUN/checkpoints/best.pt of `gvsl finetune --task seg`"
        )
    ck = read_checkpoint(path)
    kind = ck.get("kind")
    if kind != "segmentation":
        other_kinds: dict[object, str] = {
            "pretrain": "a GVSL pre-training checkpoint (for `gvsl match` / `gvsl embed` / --init)",
            "classification": "a classification checkpoint",
        }
        what = other_kinds.get(kind, f"not a segmentation checkpoint (kind={kind!r})")
        raise CheckpointError(
            f"{path}: {what}; segmentation needs a fine-tuned segmentation checkpoint: the "
            "best.pt of `gvsl finetune --task seg` or the demo segmentation weights"
        )
    mc = ck.get("model_config") or {}
    if "n_classes" not in mc or "widths" not in mc:
        raise CheckpointError(
            f"{path}: segmentation checkpoint without model_config (n_classes, widths); re-save it with `gvsl finetune`"
        )
    model = SegmentationNet(int(mc["n_classes"]), mc["widths"], norm=mc.get("norm", "default"))
    load_state_into(model, ck["model"], source=path)
    return model.to(device).eval(), ck


_CARDIAC = ("LV", "RV", "LA", "RA", "Myocardium", "Aorta", "Pulmonary artery")
KNOWN_TRAINING_SPACING: dict[tuple[str, tuple[str, ...]], dict[str, list]] = {
    ("runs/demo_seg_data", _CARDIAC): {
        "spacing": [1.1388, 1.1388, 1.6220],
        "spacing_range": [[0.9327, 0.9327, 1.3522], [1.1804, 1.1804, 1.7492]],
    },
    ("runs/brain_seg_data", ("Grey matter", "White matter", "CSF/other brain")): {
        "spacing": [1.6421, 2.0211, 1.6842],
        "spacing_range": [[1.6421, 2.0211, 1.6842], [1.6421, 2.0211, 1.6842]],
    },
}
"""Training voxel spacings (mm, ITK x, y, z: median and range) of the shipped segmenters, saved
before checkpoints recorded them: the training split of ``gvsl sample cardiac --n 10 --seed 5``
and ``gvsl sample brain --n 14 --seed 7`` at 96^3 (models/weights/README.md), keyed by the
training data folder and the label names (in label order) those checkpoints record."""

SPACING_SLACK = 0.10
"""An input spacing within 10 % of the training spacings on an axis keeps that axis (the fast
path: no resampling). Measured with the shipped cardiac segmenter: resampling a 96^3 phantom
by a few per cent moves its Dice by noise (+-0.04 either way), while a 40^3 scan at 2.8 mm
goes from 0.07 to 0.75; so only voxels clearly unlike the training ones are resampled."""


@dataclass(frozen=True)
class TrainingSpacing:
    """The voxel spacings (mm, ITK x, y, z) a segmenter was trained at: their median, their
    range (``low`` to ``high`` per axis; the median alone when the checkpoint records no
    range) and where this record comes from (``source``).
    """

    median: tuple[float, float, float]
    low: tuple[float, float, float]
    high: tuple[float, float, float]
    source: str

    def target(self, spacing: tuple[float, float, float]) -> tuple[float, float, float] | None:
        """The spacing to resample an image of ``spacing`` to, or ``None`` to keep its grid.

        Per axis: a spacing within :data:`SPACING_SLACK` of the training range is kept (the
        network was trained at voxels like it, and interpolation only costs), any other
        moves to the nearest training spacing (a coarse 40^3 scan is upsampled).
        """
        s = np.asarray(spacing, dtype=float)
        low, high = np.asarray(self.low), np.asarray(self.high)
        near = (s >= low / (1 + SPACING_SLACK)) & (s <= high * (1 + SPACING_SLACK))
        if near.all():
            return None
        out = np.where(near, s, np.clip(s, low, high))
        return (float(out[0]), float(out[1]), float(out[2]))


def _xyz(values) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def training_spacing(ck: dict) -> TrainingSpacing | None:
    """The training voxel spacing of a segmentation checkpoint: its ``preprocess`` record
    (``spacing`` and ``spacing_range``, written by ``gvsl finetune``), else that of a shipped
    segmenter (:data:`KNOWN_TRAINING_SPACING`), else ``None`` (unknown).
    """
    record, source = ck.get("preprocess") or {}, "checkpoint"
    if record.get("spacing") is None:
        names = ck.get("label_names") or {}
        key = (str((ck.get("config") or {}).get("data", "")), tuple(names[k] for k in sorted(names, key=int)))
        record, source = KNOWN_TRAINING_SPACING.get(key, {}), "shipped segmenter's training data"
    if record.get("spacing") is None:
        return None
    median = _xyz(record["spacing"])
    low, high = record.get("spacing_range") or (median, median)
    return TrainingSpacing(median, _xyz(low), _xyz(high), source)


def resampling_grid(image: Volume, spacing: tuple[float, float, float]) -> Volume:
    """An empty grid (a ``Volume`` of zeros) over ``image``'s field of view at ``spacing``.

    Same direction; the voxel count per axis keeps the extent (``n * s / s'``, rounded), and
    the first voxel is placed so that both grids share the field of view's corner, so a
    label map resampled back covers the image to its edges.
    """
    n_xyz = np.array(image.shape[::-1], dtype=float)
    old, new = np.array(image.spacing), np.array(spacing, dtype=float)
    size = np.maximum(1, np.round(n_xyz * old / new)).astype(int)
    shift = image.direction_matrix @ ((new - old) / 2.0)  # corner at origin - s/2 on both grids
    origin = np.array(image.origin) + shift
    zeros = np.zeros(tuple(int(v) for v in size[::-1]), dtype=np.uint8)
    return Volume(zeros, spacing=_xyz(new), origin=_xyz(origin), direction=image.direction)


def default_segmenter(image: Volume) -> tuple[Path, str]:
    """The shipped segmenter that fits ``image``'s modality, and a sentence saying which and why.

    CT (Hounsfield units, or a DICOM CT tag) gets the cardiac CT segmenter, MR the brain
    tissue one (grey matter, white matter, CSF); see :func:`~gvsl_app.data.preprocess.detect_modality`.
    """
    modality = detect_modality(image)
    path = DEMO_SEGMENTERS[modality]
    what = "cardiac CT structures" if modality == "ct" else "brain MR tissues (GM, WM, CSF)"
    return path, f"{image.source or 'the image'} looks like {modality.upper()}: the shipped {what} segmenter"


def segment(
    image: Volume,
    weights: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    reference: Volume | None = None,
    label_names: dict[int, str] | None = None,
    skull_strip: str = "auto",
) -> SegmentResult:
    """Label map of ``image`` (its own grid and geometry) by sliding-window inference.

    ``weights=None`` picks the shipped segmenter that fits the image's modality
    (:func:`default_segmenter`); the report's ``segmenter`` says which and why.

    With ``reference`` (a ground-truth label map on the same grid: same shape, spacing,
    origin and direction, else ``ValueError``) the report holds per-label Dice; it always
    holds per-label volumes in millilitres (every class of the model, 0 when absent).
    An image whose voxel spacing lies more than 10 % outside the checkpoint's training spacings
    (:func:`training_spacing`) is resampled to the nearest of them (linear) for the
    sliding-window inference, and the label map back onto the image's grid (nearest
    neighbour); the report's ``spacing`` says what was done. With no known training spacing
    the image is segmented on its own grid with a warning. On CUDA out-of-memory it falls
    back to the CPU with a warning.

    A brain tissue segmenter (labels named grey and white matter) gets a brain-mask step first
    (``skull_strip="auto"``, :func:`~gvsl_app.services.brain_mask.brain_mask`): on a head (skull,
    scalp, neck) the network sees the brain alone, as in its training, and nothing outside the
    mask is labelled; an image already skull-stripped is left whole. Its grey matter darker
    than the brain's CSF / grey matter boundary then becomes CSF
    (:func:`~gvsl_app.services.brain_mask.dark_grey_matter_to_csf`). ``skull_strip="off"``
    skips both: the network alone on the whole image. The report says what it did
    (``brain_mask``) and flags grey and white matter volumes outside the healthy adult range
    (``volume_flags``, :data:`ADULT_RANGE_ML`).
    """
    if skull_strip not in ("auto", "off"):
        raise ValueError(f"skull_strip must be 'auto' or 'off', got {skull_strip!r}")
    if reference is not None:
        _check_on_grid(reference, image)
        check_labels_fit(reference)  # Dice per structure: a one-hot of it
    dev = resolve_device(device)
    clock = StageClock()
    with clock.stage("load", 0.1):
        weights, chosen = _choose_weights(image, weights)
        model, ck = load_segmenter(weights, dev)
        roi = int((ck.get("preprocess") or {}).get("size", 48))
        names = label_names or {int(k): v for k, v in (ck.get("label_names") or {}).items()}
        trained = _training_spacing_or_warn(ck, weights, image)
        strip, mask_report = _brain_mask_step(image, names, skull_strip)
        seen = (
            image if strip is None else image.with_array(np.where(strip.mask, image.array, 0).astype(image.array.dtype))
        )
        inputs = _on_training_grid(seen, trained)
    with clock.stage("inference", 0.5):
        pred, dev = _segment_or_cpu(model, inputs.norm, roi, dev)
        if inputs.grid is not None:  # back onto the input's grid exactly; labels by nearest neighbour
            pred = resample_to(inputs.grid.with_array(pred), image, is_label=True, nearest_outside=True).array
        if strip is not None:
            pred = np.where(strip.mask, pred, 0).astype(pred.dtype)
        if mask_report is not None and mask_report.mode == "auto":
            pred, mask_report = _dark_grey_matter_to_csf(pred, image, names, mask_report)
    ids = list(range(1, model.n_classes))
    vols = label_volumes_ml(pred, image.spacing)  # only the voxel volume matters, not the axis order
    record = SegmentReport(
        image=image.source,
        weights=str(weights or DEMO_SEG),
        segmenter=chosen,
        device=str(dev),
        window=roi,
        spacing=SpacingReport(
            image=list(image.spacing),
            trained=trained,
            resampled_to=None if inputs.target is None else list(inputs.target),
            resampled_shape=None if inputs.grid is None else list(inputs.grid.shape),
        ),
        n_classes=model.n_classes,
        label_names={str(k): names.get(k, str(k)) for k in ids},
        volume_ml={str(k): vols.get(k, 0.0) for k in ids},
        brain_mask=mask_report,
    )
    record.volume_flags = volume_flags(record.label_names, record.volume_ml)  # `gvsl segment` prints them
    with clock.stage("score", 0.9):
        if reference is not None:
            record.score_against(pred, reference, ids, image.spacing)
    record.seconds = clock.rounded()
    return SegmentResult(image.with_array(pred, source=f"segmentation of {image.source}"), record)


BRAIN_TISSUES = frozenset({"Grey matter", "White matter"})
"""Label names that make a segmenter a brain tissue one (the brain-mask step applies)."""


def _brain_mask_step(
    image: Volume, names: dict[int, str], mode: str
) -> tuple[BrainMask | None, BrainMaskReport | None]:
    """The brain mask to apply (``None``: none) and the report's record (``None``: not a brain segmenter)."""
    if not BRAIN_TISSUES <= set(names.values()):
        return None, None
    if mode == "off":
        return None, BrainMaskReport(applied=False, mode="off")
    found = brain_mask(image)
    record = BrainMaskReport(found.applied, "auto", round(found.head_ml, 2), round(found.brain_ml, 2))
    if found.applied:
        log.info(
            "%s: brain mask %.0f mL of a %.0f mL head; skull, scalp and neck left out of the segmentation",
            image.source or "the image",
            found.brain_ml,
            found.head_ml,
        )
    return (found if found.applied else None), record


def _dark_grey_matter_to_csf(
    pred: np.ndarray, image: Volume, names: dict[int, str], record: BrainMaskReport
) -> tuple[np.ndarray, BrainMaskReport]:
    """Grey matter darker than the brain's CSF / grey matter boundary relabelled CSF, and the record saying so."""
    ids = {v: k for k, v in names.items()}
    grey, csf = ids.get("Grey matter"), ids.get("CSF/other brain")
    if grey is None or csf is None:
        return pred, record
    out, t = dark_grey_matter_to_csf(pred, np.asarray(image.array), grey, csf)
    moved = int(((pred == grey) & (out == csf)).sum()) * float(np.prod(image.spacing)) / 1000.0
    return out, replace(record, csf_threshold=round(t, 4), grey_to_csf_ml=round(moved, 2))


def _check_on_grid(reference: Volume, image: Volume) -> None:
    diffs = geometry_differences(reference, image)
    if diffs:
        raise ValueError(
            f"reference labels {reference.source or '(in memory)'} do not lie on the grid of image "
            f"{image.source or '(in memory)'}: " + "; ".join(diffs)
        )


def _choose_weights(image: Volume, weights: str | os.PathLike | None) -> tuple[str | os.PathLike | None, str]:
    """The checkpoint to load (``None``: the demo one) and the report's sentence on the choice."""
    if weights is not None:
        return weights, f"{weights} (given)"
    path, chosen = default_segmenter(image)
    if path.is_file():
        return path, chosen
    # e.g. an installation without the brain segmenter: the CT one, said plainly
    return None, chosen + f" is not installed ({path}); using {DEMO_SEG.name}"


def _training_spacing_or_warn(ck: dict, weights: str | os.PathLike | None, image: Volume) -> TrainingSpacing | None:
    """:func:`training_spacing` of the checkpoint; when unknown, a warning that the image keeps its grid."""
    trained = training_spacing(ck)
    if trained is not None:
        return trained
    log.warning(
        "%s records no training voxel spacing and is not a known shipped segmenter: segmenting "
        "%s on its own grid (%s mm); a spacing unlike the training data's lowers the quality",
        weights or DEMO_SEG,
        image.source or "the image",
        " x ".join(f"{v:.3g}" for v in image.spacing),
    )
    return None


@dataclass(frozen=True)
class _NetworkInput:
    """The normalised image the network sees, and the grid it lies on when resampled."""

    norm: np.ndarray
    target: tuple[float, float, float] | None
    grid: Volume | None


def _on_training_grid(image: Volume, trained: TrainingSpacing | None) -> _NetworkInput:
    """``image`` normalised, then resampled (linear) to the training spacing where its own is unlike it.

    Normalised on the input's own voxels (as without resampling), then resampled: the
    network sees anatomy at the voxel size it was trained on, as MONAI's Spacingd does.
    """
    norm = normalise(image)
    target = None if trained is None else trained.target(image.spacing)
    grid = None if target is None else resampling_grid(image, target)
    if grid is not None:
        norm = resample_to(image.with_array(norm), grid, nearest_outside=True).array
    return _NetworkInput(norm, target, grid)


def _segment_or_cpu(
    model: SegmentationNet, norm: np.ndarray, roi: int, dev: torch.device
) -> tuple[np.ndarray, torch.device]:
    """:func:`segment_array`, again on the CPU (with a warning) when CUDA runs out of memory."""
    try:
        return segment_array(model, norm, roi, dev), dev
    except torch.cuda.OutOfMemoryError:
        log.warning("CUDA out of memory during sliding-window inference; falling back to the CPU")
        torch.cuda.empty_cache()
        cpu = torch.device("cpu")
        return segment_array(model.cpu(), norm, roi, cpu), cpu

"""The report of one segmentation, the schema of ``gvsl segment``'s ``*_report.json``, and the
result that carries it with the label map.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gvsl_app.io.jsonio import dumps_strict
from gvsl_app.io.volume import Volume
from gvsl_app.services.metrics import dice_per_label, label_volumes_ml, mean_dice
from gvsl_app.services.segment_spacing import TrainingSpacing


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
        reoriented: For a scan whose voxel axes run along other world axes (a coronal or
            sagittal acquisition), what was done (left out of :meth:`as_dict` otherwise).
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
    reoriented: str | None = None

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
        for key in ("brain_mask", "volume_flags", "reoriented"):
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

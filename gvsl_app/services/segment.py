"""Segmentation of a whole volume with a fine-tuned checkpoint (the demo one by default)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gvsl_app.data.preprocess import detect_modality, normalise, resample_to
from gvsl_app.io.geometry import geometry_differences
from gvsl_app.io.label_maps import check_labels_fit
from gvsl_app.io.orientation import axis_aligned, volume_in_file_frame
from gvsl_app.io.volume import Volume
from gvsl_app.services.inference import segment_array
from gvsl_app.services.metrics import label_volumes_ml
from gvsl_app.services.segment_brain import brain_mask_step, relabel_dark_grey_matter, volume_flags
from gvsl_app.services.segment_report import SegmentReport, SegmentResult, SpacingReport
from gvsl_app.services.segment_spacing import TrainingSpacing, resampling_grid, training_spacing
from gvsl_app.services.stages import StageClock
from gvsl_app.services.weights import DEMO_SEG, DEMO_SEGMENTERS
from models import resolve_device
from models.checkpoint import CheckpointError, load_state_into, read_checkpoint
from models.downstream import SegmentationNet

log = logging.getLogger(__name__)


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

    A scan whose voxel axes run along other world axes (a coronal or sagittal acquisition) is
    segmented with its voxels in world axis order (:func:`~gvsl_app.io.orientation.axis_aligned`,
    exactly as the app's reader shows it, so ``gvsl segment`` and the app give the same labels),
    and its labels are put back on the file's grid (the report's ``reoriented`` says so).
    """
    if skull_strip not in ("auto", "off"):
        raise ValueError(f"skull_strip must be 'auto' or 'off', got {skull_strip!r}")
    if reference is not None:
        _check_on_grid(reference, image)
        check_labels_fit(reference)  # Dice per structure: a one-hot of it
    shown, turned = axis_aligned(image)
    if shown is not image:  # voxel axes permuted against the world's: segment it as the app shows it
        assert turned is not None  # axis_aligned records every reordering it makes
        return _segment_shown(image, shown, turned, weights, device, reference, label_names, skull_strip)
    dev = resolve_device(device)
    clock = StageClock()
    with clock.stage("load", 0.1):
        weights, chosen = _choose_weights(image, weights)
        model, ck = load_segmenter(weights, dev)
        roi = int((ck.get("preprocess") or {}).get("size", 48))
        names = label_names or {int(k): v for k, v in (ck.get("label_names") or {}).items()}
        trained = _training_spacing_or_warn(ck, weights, image)
        strip, mask_report = brain_mask_step(image, names, skull_strip)
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
            pred, mask_report = relabel_dark_grey_matter(pred, image, names, mask_report)
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


def _segment_shown(
    image: Volume,
    shown: Volume,
    turned: dict,
    weights: str | os.PathLike | None,
    device: str,
    reference: Volume | None,
    label_names: dict[int, str] | None,
    skull_strip: str,
) -> SegmentResult:
    """:func:`segment` of ``shown`` (``image`` in world axis order, ``turned`` the record of
    :func:`axis_aligned`), the labels put back on ``image``'s grid.
    """
    result = segment(
        shown,
        weights,
        device=device,
        reference=None if reference is None else axis_aligned(reference)[0],
        label_names=label_names,
        skull_strip=skull_strip,
    )
    result.record.reoriented = _reoriented_note(turned)
    labels = volume_in_file_frame(result.labels, turned)
    return SegmentResult(image.with_array(labels.array, source=result.labels.source), result.record)


def _reoriented_note(record: dict) -> str:
    """What was done to a scan whose voxel axes run along other world axes, for the report."""
    order = "".join("zyx"[int(a)] for a in record["axes"])
    flips = ["zyx"[int(a)] for a, f in zip(record["axes"], record["flips"]) if f]
    return (
        f"the scan's voxel axes run along other world axes (file axes in world z, y, x order: {order}"
        + (f", reversed: {', '.join(flips)}" if flips else "")
        + "): segmented in world axis order, as the app shows it, and the labels put back on the file's grid"
    )


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

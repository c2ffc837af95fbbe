"""Segmentation of a whole volume with a fine-tuned checkpoint (the demo one by default)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from gvsl_app.data.preprocess import detect_modality, normalise, resample_to
from gvsl_app.io.images import geometry_differences
from gvsl_app.io.volume import Volume
from gvsl_app.services.inference import segment_array
from gvsl_app.services.metrics import dice_per_label, label_volumes_ml, mean_dice
from gvsl_app.services.weights import DEMO_SEG, DEMO_SEGMENTERS
from models import resolve_device
from models.checkpoint import CheckpointError, load_state_into, read_checkpoint
from models.downstream import SegmentationNet

log = logging.getLogger(__name__)


@dataclass
class SegmentResult:
    labels: Volume
    report: dict = field(default_factory=dict)


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
    range) and where this record comes from (``source``)."""

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
    segmenter (:data:`KNOWN_TRAINING_SPACING`), else ``None`` (unknown)."""
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
    """
    if reference is not None:
        diffs = geometry_differences(reference, image)
        if diffs:
            raise ValueError(
                f"reference labels {reference.source or '(in memory)'} do not lie on the grid of image "
                f"{image.source or '(in memory)'}: " + "; ".join(diffs)
            )
    dev = resolve_device(device)
    t0 = time.perf_counter()
    chosen = f"{weights} (given)"
    if weights is None:
        path, chosen = default_segmenter(image)
        if path.is_file():
            weights = path
        else:  # e.g. an installation without the brain segmenter: the CT one, said plainly
            chosen += f" is not installed ({path}); using {DEMO_SEG.name}"
    model, ck = load_segmenter(weights, dev)
    roi = int((ck.get("preprocess") or {}).get("size", 48))
    names = label_names or {int(k): v for k, v in (ck.get("label_names") or {}).items()}
    trained = training_spacing(ck)
    if trained is None:
        log.warning(
            "%s records no training voxel spacing and is not a known shipped segmenter: segmenting "
            "%s on its own grid (%s mm); a spacing unlike the training data's lowers the quality",
            weights or DEMO_SEG,
            image.source or "the image",
            " x ".join(f"{v:.3g}" for v in image.spacing),
        )
    # Normalised on the input's own voxels (as without resampling), then resampled: the
    # network sees anatomy at the voxel size it was trained on, as MONAI's Spacingd does.
    norm = normalise(image)
    target = None if trained is None else trained.target(image.spacing)
    grid = None if target is None else resampling_grid(image, target)
    if grid is not None:
        norm = resample_to(image.with_array(norm), grid, nearest_outside=True).array
    t1 = time.perf_counter()
    try:
        pred = segment_array(model, norm, roi, dev)
    except torch.cuda.OutOfMemoryError:
        log.warning("CUDA out of memory during sliding-window inference; falling back to the CPU")
        torch.cuda.empty_cache()
        dev = torch.device("cpu")
        pred = segment_array(model.cpu(), norm, roi, dev)
    if grid is not None:  # back onto the input's grid exactly; labels by nearest neighbour
        pred = resample_to(grid.with_array(pred), image, is_label=True, nearest_outside=True).array
    t2 = time.perf_counter()
    labels = image.with_array(pred, source=f"segmentation of {image.source}")
    ids = list(range(1, model.n_classes))
    spacing = image.spacing  # only the voxel volume matters, so the axis order does not
    vols = label_volumes_ml(pred, spacing)
    report = {
        "image": image.source,
        "weights": str(weights or DEMO_SEG),
        "segmenter": chosen,
        "device": str(dev),
        "window": roi,
        "spacing": {
            "image": list(image.spacing),
            "trained": None if trained is None else asdict(trained),
            "resampled_to": None if target is None else list(target),
            "resampled_shape": None if grid is None else list(grid.shape),
        },
        "n_classes": model.n_classes,
        "label_names": {str(k): names.get(k, str(k)) for k in ids},
        "volume_ml": {str(k): vols.get(k, 0.0) for k in ids},
    }
    if reference is not None:
        d = dice_per_label(pred, np.asarray(reference.array), ids)
        ref_vols = label_volumes_ml(reference.array, spacing)
        report["dice"] = {str(k): v for k, v in d.items()}
        report["mean_dice"] = mean_dice(d)  # a structure in neither map (NaN) is left out
        report["reference_volume_ml"] = {str(k): ref_vols.get(k, 0.0) for k in ids}
        extra = sorted(set(ref_vols) - set(ids))
        if extra:
            report["reference_labels_not_in_model"] = extra
    report["seconds"] = {"load_s": t1 - t0, "inference_s": t2 - t1, "total_s": time.perf_counter() - t0}
    return SegmentResult(labels, report)

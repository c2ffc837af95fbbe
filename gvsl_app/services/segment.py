"""Segmentation of a whole volume with a fine-tuned checkpoint (the demo one by default)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gvsl_app.data.preprocess import detect_modality, normalise
from gvsl_app.io.images import geometry_differences
from gvsl_app.io.volume import Volume
from gvsl_app.services.inference import segment_array
from gvsl_app.services.metrics import dice_per_label, label_volumes_ml
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
    model = SegmentationNet(int(mc["n_classes"]), mc["widths"])
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
) -> SegmentResult:
    """Label map of ``image`` (its own grid and geometry) by sliding-window inference.

    ``weights=None`` picks the shipped segmenter that fits the image's modality
    (:func:`default_segmenter`); the report's ``segmenter`` says which and why.

    With ``reference`` (a ground-truth label map on the same grid: same shape, spacing,
    origin and direction, else ``ValueError``) the report holds per-label Dice; it always
    holds per-label volumes in millilitres (every class of the model, 0 when absent).
    On CUDA out-of-memory it falls back to the CPU with a warning.
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
    norm = normalise(image)
    t1 = time.perf_counter()
    try:
        pred = segment_array(model, norm, roi, dev)
    except torch.cuda.OutOfMemoryError:
        log.warning("CUDA out of memory during sliding-window inference; falling back to the CPU")
        torch.cuda.empty_cache()
        dev = torch.device("cpu")
        pred = segment_array(model.cpu(), norm, roi, dev)
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
        "n_classes": model.n_classes,
        "label_names": {str(k): names.get(k, str(k)) for k in ids},
        "volume_ml": {str(k): vols.get(k, 0.0) for k in ids},
    }
    if reference is not None:
        d = dice_per_label(pred, np.asarray(reference.array), ids)
        ref_vols = label_volumes_ml(reference.array, spacing)
        report["dice"] = {str(k): v for k, v in d.items()}
        report["mean_dice"] = float(np.mean(list(d.values())))
        report["reference_volume_ml"] = {str(k): ref_vols.get(k, 0.0) for k in ids}
        extra = sorted(set(ref_vols) - set(ids))
        if extra:
            report["reference_labels_not_in_model"] = extra
    report["seconds"] = {"load_s": t1 - t0, "inference_s": t2 - t1, "total_s": time.perf_counter() - t0}
    return SegmentResult(labels, report)

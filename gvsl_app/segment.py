"""Segmentation of a whole volume with a fine-tuned checkpoint (the demo one by default)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models import resolve_device
from models.checkpoint import CheckpointError, load_state_into, read_checkpoint
from models.downstream import SegmentationNet

from .inference import segment_array
from .metrics import dice_per_label, label_volumes_ml
from .preprocess import normalise
from .volume import Volume
from .weights import DEMO_SEG


@dataclass
class SegmentResult:
    labels: Volume
    report: dict = field(default_factory=dict)


def load_segmenter(weights: str | os.PathLike | None, device: torch.device) -> tuple[SegmentationNet, dict]:
    """A segmentation network and its checkpoint metadata (label names, patch size)."""
    path = Path(weights) if weights else DEMO_SEG
    ck = read_checkpoint(path)
    if ck.get("kind") != "segmentation":
        raise CheckpointError(f"{path}: not a segmentation checkpoint (kind={ck.get('kind')!r}); use the "
                              "best.pt of `gvsl finetune --task seg` or the demo segmentation weights")
    mc = ck["model_config"]
    model = SegmentationNet(mc["n_classes"], mc["widths"])
    load_state_into(model, ck["model"])
    return model.to(device).eval(), ck


def segment(image: Volume, weights: str | os.PathLike | None = None, *, device: str = "auto",
            reference: Volume | None = None, label_names: dict[int, str] | None = None) -> SegmentResult:
    """Label map of ``image`` (its own grid and geometry) by sliding-window inference.

    With ``reference`` (a ground-truth label map on the same grid) the report holds
    per-label Dice; it always holds per-label volumes in millilitres.
    """
    dev = resolve_device(device)
    t0 = time.perf_counter()
    model, ck = load_segmenter(weights, dev)
    roi = int(ck.get("preprocess", {}).get("size", 48))
    names = label_names or {int(k): v for k, v in (ck.get("label_names") or {}).items()}
    pred = segment_array(model, normalise(image), roi, dev)
    labels = image.with_array(pred, source=f"segmentation of {image.source}")
    spacing_zyx = image.spacing  # volumes need only the voxel volume, order does not matter
    vols = label_volumes_ml(pred, spacing_zyx)
    report = {"image": image.source, "weights": str(weights or DEMO_SEG), "device": str(dev),
              "label_names": {str(k): v for k, v in names.items()},
              "volume_ml": {str(k): v for k, v in vols.items()}, "seconds": time.perf_counter() - t0}
    if reference is not None:
        if reference.shape != image.shape:
            raise ValueError(f"reference labels {reference.source} have shape {reference.shape}, "
                             f"the image {image.source} has {image.shape}")
        ids = list(range(1, model.n_classes))
        d = dice_per_label(pred, np.asarray(reference.array), ids)
        report["dice"] = {str(k): v for k, v in d.items()}
        report["mean_dice"] = float(np.mean(list(d.values())))
        report["reference_volume_ml"] = {str(k): v for k, v in label_volumes_ml(reference.array, spacing_zyx).items()}
    return SegmentResult(labels, report)

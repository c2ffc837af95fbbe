"""The brain tissue segmenter's own steps: the brain mask before it, grey matter darker than CSF
relabelled after it, and the report's notes and healthy adult volume flags.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from gvsl_app.io.volume import Volume
from gvsl_app.services.brain_mask import BrainMask, brain_mask, dark_grey_matter_to_csf
from gvsl_app.services.segment_report import BrainMaskReport, SegmentReport

log = logging.getLogger(__name__)


ADULT_RANGE_ML: dict[str, tuple[float, float]] = {"Grey matter": (500.0, 800.0), "White matter": (400.0, 650.0)}
"""Healthy adult brain tissue volumes (mL) outside which the report flags a segmentation.

A plausibility band, not a norm: MRI volumetry of healthy adults aged about 20-80, both sexes,
puts grey matter at roughly 40-50 % and white matter at 30-40 % of a 1.2-1.7 L intracranial
volume (docs/guide/segmentation.md says more). A volume outside it means a wrong input (not
a T1 head, a child, a lesion) or a wrong segmentation (scalp called grey matter); the brain
phantoms, from the MNI template (larger than a real brain: 1091 mL of grey matter), lie above it.
"""


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


BRAIN_TISSUES = frozenset({"Grey matter", "White matter"})
"""Label names that make a segmenter a brain tissue one (the brain-mask step applies)."""


def brain_mask_step(image: Volume, names: dict[int, str], mode: str) -> tuple[BrainMask | None, BrainMaskReport | None]:
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


def relabel_dark_grey_matter(
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

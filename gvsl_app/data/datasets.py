"""Datasets: GVSL pre-training pairs, labelled crops, classification volumes (one import point).

The datasets live in :mod:`gvsl_app.data.pair_dataset` (pre-training pairs) and
:mod:`gvsl_app.data.labelled` (segmentation and classification); data folders and their
split in :mod:`gvsl_app.io.folders`; per-item randomness, sharding and the DataLoader recipe
in :mod:`gvsl_app.data.loading`. This module re-exports all of them, so callers can import
everything a training loop needs from one place.
"""

from __future__ import annotations

# Re-exports only. The names after the __all__ ones were importable from here before the
# datasets were split into their own modules, and stay so for existing callers.
from gvsl_app.data.augment import (  # noqa: F401
    AppearanceTransform,
    GVSLPairAugment,
    RandomAffine,
    SpatialAugment,
    Transform,
)
from gvsl_app.data.labelled import ClassificationDataset, LabelledDataset, load_labelled_volumes
from gvsl_app.data.loading import (  # noqa: F401
    StepSampler,
    batch_generator,
    close_loader,
    item_generator,
    item_seed,
    split_key,
    step_loader,
    worker_init,
)
from gvsl_app.data.pair_dataset import (  # noqa: F401
    RELATIVE_POSE,
    SYNTHETIC_KINDS,
    SYNTHETIC_PREFIX,
    PairDataset,
    validation_pair,
)
from gvsl_app.io.folders import (  # noqa: F401
    VOLUME_SUFFIXES,
    DatasetError,
    images_folder,
    label_files,
    list_cases,
    list_volume_files,
    require_volumes,
    split_names,
)
from gvsl_app.io.label_csv import binary_classes, read_label_csv  # noqa: F401
from gvsl_app.io.volume import Volume  # noqa: F401

__all__ = [
    "DatasetError",
    "VOLUME_SUFFIXES",
    "images_folder",
    "list_volume_files",
    "list_cases",
    "split_names",
    "item_seed",
    "item_generator",
    "PairDataset",
    "validation_pair",
    "LabelledDataset",
    "load_labelled_volumes",
    "ClassificationDataset",
    "StepSampler",
    "step_loader",
    "close_loader",
    "worker_init",
    "batch_generator",
]

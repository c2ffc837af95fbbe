"""Loading GVSL networks from checkpoints, including the shipped demo weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch

import models
from models import GVSL, PAPER_WIDTHS, widths_from_base
from models.checkpoint import CheckpointError, load_state_into, model_state, read_checkpoint

WEIGHTS_DIR = Path(models.__file__).resolve().parent / "weights"
DEMO_GVSL = WEIGHTS_DIR / "gvsl_demo.pt"
DEMO_SEG = WEIGHTS_DIR / "seg_demo.pt"
DEMO_SEG_BRAIN = WEIGHTS_DIR / "seg_brain_demo.pt"
DEMO_SEGMENTERS = {"ct": DEMO_SEG, "mr": DEMO_SEG_BRAIN}
"""The shipped segmenter for each modality: cardiac CT structures, brain MR tissues."""


def _widths_of(ck: dict, sd: dict, fmt: str, path: Path) -> tuple[int, ...]:
    cfg = ck.get("model_config") or {}
    if "widths" in cfg:
        return tuple(cfg["widths"])
    if fmt == "official GVSL":
        return PAPER_WIDTHS
    w = sd.get("unet.inc.double_conv.0.weight")
    if w is None:
        raise CheckpointError(
            f"{path}: not a GVSL checkpoint (no unet.inc.double_conv.0.weight, so the network "
            "widths cannot be told); pass a GVSL pre-training checkpoint such as RUN/checkpoints/"
            "best.pt of `gvsl pretrain`"
        )
    return widths_from_base(int(w.shape[0]))


def trained_modalities(ck: dict) -> frozenset[str] | None:
    """The modalities (``"ct"``, ``"mr"``) a checkpoint was pre-trained on, if it says.

    Read from the run's ``data`` option for the synthetic sources; ``None`` for a data folder
    (we cannot tell), so only a known mismatch is ever warned about.
    """
    data = str((ck.get("config") or {}).get("data") or "")
    if not data.startswith("synthetic:"):
        return None
    kinds = data[len("synthetic:") :].partition(":")[0].split("+")
    found = {"cardiac": "ct", "cardiac-hard": "ct", "brain": "mr"}
    return frozenset(found[k] for k in kinds if k in found) or None


def load_gvsl(weights: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> tuple[GVSL, str]:
    """A GVSL network in eval mode from a checkpoint (``None`` = the shipped demo weights).

    Accepts our run checkpoints (``last.pt``/``best.pt``), bare state dicts and the authors'
    released checkpoint; the widths are read from the checkpoint. Returns the model and a
    one-line description. A downstream (segmentation) checkpoint is refused with a hint.
    """
    path = Path(weights) if weights else DEMO_GVSL
    if not path.is_file():
        if weights is None:
            raise CheckpointError(f"demo weights missing at {path}: reinstall the package or pass --weights")
        raise CheckpointError(f"{path}: no such checkpoint file")
    ck = read_checkpoint(path)
    if ck.get("kind") in ("segmentation", "classification"):
        raise CheckpointError(
            f"{path}: this is a {ck['kind']} checkpoint; matching needs a GVSL (pre-training) "
            "checkpoint such as RUN/checkpoints/best.pt of `gvsl pretrain`"
        )
    sd, fmt = model_state(ck)
    widths = _widths_of(ck, sd, fmt, path)
    # the authors' release was trained with its own GroupNorm grouping (models.blocks.use_norm)
    norm = "authors" if fmt == "official GVSL" else (ck.get("model_config") or {}).get("norm", "default")
    model = GVSL.from_config({**(ck.get("model_config") or {}), "widths": widths, "norm": norm})
    load_state_into(model, sd, strict=True, source_format=fmt, source=path)
    model.to(device).eval()
    # The cube it was trained on is the best default working size for matching with it.
    model.working_size = int((ck.get("config") or {}).get("size") or 0) or None
    model.trained_modalities = trained_modalities(ck)
    name = "demo weights" if weights is None else str(path)
    return model, f"{name} ({fmt}, widths {list(widths)})"

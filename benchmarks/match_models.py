"""What the matching benchmarks share: the network to test (demo weights, a checkpoint or an
untrained identity) and the mean Dice of the seven heart structures.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

LABELS = list(range(1, 8))


def load_model(weights: str | None, device: str):
    from gvsl_app.services.weights import DEMO_GVSL, load_gvsl
    from models import DEMO_WIDTHS, GVSL, PAPER_HEADS, resolve_device

    if weights == "random":
        # The paper's heads start at the identity map (to ~1e-5); the keypoint head does not.
        torch.manual_seed(0)
        return (
            GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS).to(resolve_device(device)).eval(),
            "random init, widths 8, paper heads: the identity map (NOT trained)",
        )
    if weights is None and not DEMO_GVSL.is_file():
        sys.exit(f"demo weights not found at {DEMO_GVSL}; pass --weights CKPT (or --weights random for a smoke run)")
    return load_gvsl(weights, resolve_device(device))


def mean_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    from gvsl_app.services.metrics import dice_per_label
    from gvsl_app.services.metrics import mean_dice as defined_mean

    return defined_mean(dice_per_label(pred, ref, LABELS))  # a structure in neither map: left out

"""Whole-volume inference of downstream models (MONAI sliding window)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.device import autocast


@torch.no_grad()
def segment_array(
    model: nn.Module, image: np.ndarray, roi: int, device: torch.device, overlap: float = 0.25, sw_batch: int = 2
) -> np.ndarray:
    """Label map ``(z, y, x)`` of a normalised image with overlapping ``roi^3`` windows.

    Uses MONAI's ``sliding_window_inference`` with Gaussian blending; images smaller than
    the window are padded by MONAI and cropped back.
    """
    from monai.inferers import sliding_window_inference

    was = model.training
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    with autocast(device):
        logits = sliding_window_inference(x, (roi, roi, roi), sw_batch, model, overlap=overlap, mode="gaussian")
    assert isinstance(logits, torch.Tensor)  # a tensor, not a tuple or dict: the model returns one tensor
    model.train(was)
    return logits.float().argmax(1)[0].cpu().numpy().astype(np.uint8)

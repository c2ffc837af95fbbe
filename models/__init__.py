"""Pure-PyTorch GVSL: backbone, Z-Matching and restoration heads, spatial transformer, losses."""

from .checkpoint import CheckpointError, LoadReport, atomic_torch_save, load_state_into, model_state, read_checkpoint
from .device import available_devices, resolve_device
from .gvsl import GVSL, PAPER_HEADS, GVSLOutput
from .instance_optimisation import refine_coordinates
from .losses import local_ncc, multiscale_ncc, restoration_mse, smoothness
from .refine_schedule import REFINE_PRESETS, RefineSchedule, refine_preset
from .spatial import AffineBounds, affine_from_parameters, identity_affine, sampling_coordinates, warp
from .unet import DEMO_WIDTHS, PAPER_WIDTHS, UNet3D, widths_from_base

__all__ = [
    "GVSL",
    "GVSLOutput",
    "PAPER_HEADS",
    "UNet3D",
    "PAPER_WIDTHS",
    "DEMO_WIDTHS",
    "widths_from_base",
    "AffineBounds",
    "affine_from_parameters",
    "identity_affine",
    "sampling_coordinates",
    "warp",
    "local_ncc",
    "multiscale_ncc",
    "smoothness",
    "restoration_mse",
    "REFINE_PRESETS",
    "RefineSchedule",
    "refine_coordinates",
    "refine_preset",
    "CheckpointError",
    "LoadReport",
    "atomic_torch_save",
    "read_checkpoint",
    "model_state",
    "load_state_into",
    "resolve_device",
    "available_devices",
]

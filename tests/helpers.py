"""Small helpers and constants the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import numpy as np

SMALL = (48, 48, 48)
WIDTHS = (8, 16, 32, 64, 128, 64, 32, 16, 8)


def rotated(volume, degrees: float = 30.0):
    """The same voxels with a non-identity direction (rotation about z) and odd origin."""
    a = np.deg2rad(degrees)
    d = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    return volume.with_array(volume.array, direction=tuple(d.flatten()), origin=(12.5, -40.0, 7.25))

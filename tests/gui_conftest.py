"""Fixtures for the napari plugin tests (imported by tests/test_plugin_*.py).

Everything is tiny on purpose (48^3 volumes, width-8 networks, 32^3 working cubes): the
tests check the real flows (threads, layers, geometry, processes), not the model quality.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import torch  # noqa: E402

import models  # noqa: E402
import models.downstream  # noqa: E402

SMALL = (48, 48, 48)
WIDTHS = (8, 16, 32, 64, 128, 64, 32, 16, 8)


@pytest.fixture(autouse=True)
def _few_threads():
    """Two shared CPU cores: keep torch to one thread so the GUI thread is never starved."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def gvsl_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    m = models.GVSL(widths=WIDTHS)
    path = tmp_path_factory.mktemp("ckpt") / "gvsl_tiny.pt"
    torch.save({"format": "gvsl-studio", "kind": "pretrain", "model_config": m.config(), "model": m.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def seg_ckpt(tmp_path_factory):
    from gvsl_app.synthetic import CARDIAC_LABELS

    torch.manual_seed(0)
    s = models.downstream.SegmentationNet(8, WIDTHS)
    path = tmp_path_factory.mktemp("ckpt") / "seg_tiny.pt"
    torch.save({"format": "gvsl-studio", "kind": "segmentation", "model_config": s.config(), "model": s.state_dict(),
                "preprocess": {"size": 32}, "label_names": {str(k): v for k, v in CARDIAC_LABELS.items()}}, path)
    return path


@pytest.fixture
def small_samples(monkeypatch):
    """Sample-data contributions at 48^3."""
    import napari_plugin._samples as samples

    monkeypatch.setattr(samples, "SAMPLE_SHAPE", SMALL)
    return samples


@pytest.fixture
def cardiac_viewer(make_napari_viewer, small_samples):
    """A viewer holding the cardiac sample pair (fixed/moving images and labels) at 48^3."""
    viewer = make_napari_viewer()
    for data, kw, kind in small_samples.pair_layer_data("cardiac", SMALL):
        getattr(viewer, f"add_{kind}")(data, **kw)
    return viewer


@pytest.fixture
def notifications():
    """Messages of napari notifications shown during the test."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def record(notification):
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def rotated(volume, degrees: float = 30.0):
    """The same voxels with a non-identity direction (rotation about z) and odd origin."""
    a = np.deg2rad(degrees)
    d = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    return volume.with_array(volume.array, direction=tuple(d.flatten()), origin=(12.5, -40.0, 7.25))

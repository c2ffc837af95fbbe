"""Shared fixtures. The GUI ones import napari lazily, so the engine tests run without it.

Everything is tiny on purpose (48^3 volumes, width-8 networks, 32^3 working cubes): the
tests check the real flows (threads, layers, geometry, processes), not the model quality.
GUI test modules mark themselves ``pytest.mark.gui`` and skip without napari/pytest-qt.
"""

from __future__ import annotations

import pytest
import torch

import models
import models.downstream

from helpers import SMALL, WIDTHS


@pytest.fixture(autouse=True)
def _few_threads_for_gui(request):
    """Two shared CPU cores: a GUI test keeps torch to one thread so the GUI thread is never starved."""
    if request.node.get_closest_marker("gui") is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def gvsl_ckpt(tmp_path_factory):
    """A randomly initialised width-8 GVSL checkpoint (seed 0) in the studio's format."""
    torch.manual_seed(0)
    m = models.GVSL(widths=WIDTHS)
    path = tmp_path_factory.mktemp("ckpt") / "gvsl_tiny.pt"
    torch.save({"format": "gvsl-studio", "kind": "pretrain", "model_config": m.config(), "model": m.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def seg_ckpt(tmp_path_factory):
    """A randomly initialised width-8 cardiac segmenter checkpoint (working size 32)."""
    from gvsl_app.data.synthetic import CARDIAC_LABELS

    torch.manual_seed(0)
    s = models.downstream.SegmentationNet(8, WIDTHS)
    path = tmp_path_factory.mktemp("ckpt") / "seg_tiny.pt"
    torch.save(
        {
            "format": "gvsl-studio",
            "kind": "segmentation",
            "model_config": s.config(),
            "model": s.state_dict(),
            "preprocess": {"size": 32},
            "label_names": {str(k): v for k, v in CARDIAC_LABELS.items()},
        },
        path,
    )
    return path


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory):
    """Six labelled synthetic cardiac subjects at 32^3 (seed 3) in a data folder."""
    from gvsl_app.data.synthetic import cardiac_dataset

    return cardiac_dataset(tmp_path_factory.mktemp("seg"), 6, seed=3, shape=(32, 32, 32))


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    """Eight synthetic cardiac subjects with normal/abnormal labels at 32^3 (seed 4) in a data folder."""
    from gvsl_app.data.synthetic import cardiac_dataset

    return cardiac_dataset(tmp_path_factory.mktemp("cls"), 8, seed=4, shape=(32, 32, 32), classification=True)


@pytest.fixture
def small_samples(monkeypatch):
    """The plugin's sample-data contributions at 48^3."""
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

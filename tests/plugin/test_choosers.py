"""The layer choosers of the widgets: defaults by name, two different scans, the user's choice
kept through layer changes and renames.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
from helpers import matching_widget as _widget  # noqa: E402

pytestmark = pytest.mark.gui


def test_layer_choosers_follow_layers_added_later(make_napari_viewer, small_samples, gvsl_ckpt):
    """Widgets docked before the data is loaded (the app) still pick fixed/moving by name."""
    viewer = make_napari_viewer()
    w = _widget(viewer, gvsl_ckpt)
    for data, kw, kind in small_samples.pair_layer_data("cardiac", (24, 24, 24)):
        getattr(viewer, f"add_{kind}")(data, **kw)
    assert (w.fixed.currentText(), w.moving.currentText()) == ("cardiac fixed", "cardiac moving")
    assert w.moving_labels.currentText() == "cardiac moving labels"
    w.moving.set_layer("cardiac fixed")  # a user's choice is kept when layers change
    viewer.add_image(np.zeros((4, 4, 4)), name="another moving")
    assert w.moving.currentText() == "cardiac fixed"


def _scan(value: float) -> np.ndarray:
    return np.full((8, 8, 8), value, np.float32)


def test_moving_defaults_to_another_image_than_fixed(make_napari_viewer, gvsl_ckpt, notifications):
    """Without "fixed"/"moving" in the names, the two choosers still start on two different scans."""
    viewer = make_napari_viewer()
    a, b = viewer.add_image(_scan(0), name="ct_2019"), viewer.add_image(_scan(1), name="ct_2021")
    w = _widget(viewer, gvsl_ckpt)
    assert (w.fixed.layer(), w.moving.layer()) == (a, b)
    # docked first (the app), scans added later, one of them named "moving"
    later = make_napari_viewer()
    w2 = _widget(later, gvsl_ckpt)
    c = later.add_image(_scan(0), name="scan moving")
    d = later.add_image(_scan(1), name="scan 2")
    assert (w2.fixed.layer(), w2.moving.layer()) == (d, c)
    # picking the moving chooser's scan as fixed moves the (not yet chosen) moving to the other one
    w.fixed.set_layer("ct_2021")
    assert w.moving.layer() is a
    # a user who chooses the same scan twice is told so; nothing is matched
    w.moving.set_layer("ct_2021")
    assert w.run() is None and w._worker is None
    assert "same layer" in w.controls.status.text()
    assert any("same layer" in msg for msg in notifications)


def test_renaming_a_layer_keeps_it_chosen(make_napari_viewer, gvsl_ckpt):
    viewer = make_napari_viewer()
    a, b = viewer.add_image(_scan(0), name="scan A"), viewer.add_image(_scan(1), name="scan B")
    w = _widget(viewer, gvsl_ckpt)
    w.fixed.set_layer("scan B")
    w.moving.set_layer("scan A")
    b.name = "scan B (baseline)"
    assert w.fixed.layer() is b and w.fixed.currentText() == "scan B (baseline)"
    assert w.moving.layer() is a
    # a default (not picked) follows its layer through a rename too
    other = make_napari_viewer()
    f, m = other.add_image(_scan(0), name="p fixed"), other.add_image(_scan(1), name="p moving")
    w2 = _widget(other, gvsl_ckpt)
    f.name, m.name = "patient 1", "patient 2"
    assert (w2.fixed.layer(), w2.moving.layer()) == (f, m)

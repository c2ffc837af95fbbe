"""The desktop app (``gvsl app``): widgets docked, files and samples loaded, bad files notified."""
from __future__ import annotations

import numpy as np
import pytest

from gui_conftest import notifications, small_samples  # noqa: F401

from gvsl_app.io import write_volume
from gvsl_app.volume import Volume

pytestmark = pytest.mark.gui


def test_app_docks_widgets_loads_files_and_reports_bad_ones(make_napari_viewer, small_samples, tmp_path,
                                                            notifications, monkeypatch):
    import napari

    from gvsl_app import app

    good = write_volume(Volume(np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8), spacing=(0.5, 0.6, 2.0)),
                        tmp_path / "scan.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x00" * 10)
    monkeypatch.setattr(napari, "Viewer", make_napari_viewer)  # run_app's viewer, closed by the fixture
    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    assert app.run_app([str(good), str(bad)], sample="cardiac") == 0
    viewer = napari.current_viewer()
    docked = set(viewer.window.dock_widgets)
    # docked through the installed npe2 plugin, as a napari user gets them
    assert {f"{n} (gvsl-studio)" for n in app.WIDGETS} <= docked
    names = [layer.name for layer in viewer.layers]
    assert names == ["cardiac fixed", "cardiac moving", "cardiac fixed labels", "cardiac moving labels", "scan"]
    np.testing.assert_allclose(viewer.layers["scan"].scale, (2.0, 0.6, 0.5))
    assert any("bad.nii.gz" in m and "cannot open" in m for m in notifications)


def test_cli_app_command_is_wired():
    from gvsl_app.cli import build_parser

    args = build_parser().parse_args(["app", "a.nii.gz", "--sample", "brain"])
    assert args.files == ["a.nii.gz"] and args.sample == "brain"

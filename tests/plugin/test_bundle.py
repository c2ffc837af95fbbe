"""The frozen desktop app (``app.spec``): its command line is ``gvsl``'s own, and napari's own
code is recognised as napari's under PyInstaller's relative module file names. The bundle
itself is built and started by ``make bundle-check`` (scripts/check_bundle.sh), too slow for CI.
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings

import pytest

from gvsl_app.cli import build_parser
from gvsl_app.data.samples import write_samples
from napari_plugin.app import bundle_args, bundle_main, command_names

from helpers import ROOT


def _parser_commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_the_bundle_knows_every_command_of_the_gvsl_parser():
    commands = _parser_commands()
    assert {"evaluate-labels", "match", "sample", "app"} <= commands
    assert command_names() == commands
    for name in commands:
        assert bundle_args([name, "x"]) == [name, "x"]
    for option in (["-v", "match", "a", "b"], ["--verbose", "evaluate-labels", "a"], ["--help"]):
        assert bundle_args(option) == option
    assert bundle_args([]) == ["app", "--sample", "cardiac"]
    assert bundle_args(["scan.nii.gz", "seg.nii.gz"]) == ["app", "scan.nii.gz", "seg.nii.gz"]


def test_the_spec_entry_runs_bundle_main_and_keeps_no_command_list_of_its_own():
    spec = (ROOT / "app.spec").read_text()
    assert "bundle_main(sys.argv[1:])" in spec
    assert "COMMANDS = {" not in spec
    excludes = spec[spec.index("excludes=[") :]
    assert '"PyQt6"' not in excludes[: excludes.index("]")]  # the app's own Qt binding


def test_evaluate_labels_and_verbose_run_through_the_bundle_command_line(tmp_path, capsys):
    data = write_samples("cardiac", tmp_path / "data", n=2, seed=3, shape=(24, 24, 24))
    labels = data / "labels"
    out = tmp_path / "dice.csv"
    code = bundle_main(
        ["--verbose", "evaluate-labels", str(labels / "case_000.nii.gz"), str(labels / "case_001.nii.gz")]
        + ["--out", str(out), "--resample", "--no-distances", "--quiet"]
    )
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert rows and all(r for r in rows)


def test_dash_m_runs_a_module_as_python_does(tmp_path, monkeypatch):
    """The training widget starts ``sys.executable -m gvsl_app.jobs.child``: in a bundle, the app."""
    module = tmp_path / "probe_module_for_bundle.py"
    module.write_text("import sys\nopen(sys.argv[1], 'w').write(' '.join(sys.argv[2:]))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["gvsl-studio"])
    marker = tmp_path / "ran.txt"
    assert bundle_main(["-m", "probe_module_for_bundle", str(marker), "a", "b"]) == 0
    assert marker.read_text() == "a b"


def test_in_a_bundle_napari_reads_its_own_privates_through_a_plugin_proxy_without_a_warning(monkeypatch):
    """PyInstaller names a bundled module's code ``napari/...`` (relative): napari's check for
    its own frames (file name under ``napari.utils.misc.ROOT_DIR``) failed, and the bundle
    showed "Private attribute access" toasts that ``gvsl app`` does not.
    """
    pytest.importorskip("napari")
    from napari.utils import misc
    from napari.utils._proxies import PublicOnlyProxy
    from napari.utils.colormaps import DirectLabelColormap

    from napari_plugin.app import frozen_napari_frames

    proxied = PublicOnlyProxy(DirectLabelColormap(color_dict={None: "transparent", 1: "red"}))

    def read_private(file_name: str):
        """A private read as code in ``file_name`` makes it (the bundle's relative names)."""
        code = compile("proxy._num_unique_colors", file_name, "eval")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            eval(code, {"proxy": proxied})
        return [str(w.message) for w in seen if "Private attribute access" in str(w.message)]

    napari_file = "napari/layers/labels/labels.py".replace("/", __import__("os").sep)
    assert read_private(napari_file)  # the bundle before the fix
    monkeypatch.setattr(misc, "ROOT_DIR", misc.ROOT_DIR)  # restored after the test
    assert not frozen_napari_frames()  # not frozen: nothing changes
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert frozen_napari_frames()
    assert read_private(napari_file) == []
    # a plugin's code is still told apart from napari's
    assert read_private("napari_plugin/_matching.py".replace("/", __import__("os").sep))

"""``gvsl sample`` writes the structure names beside the label maps (an ITK-SNAP label
description file), and evaluate-labels, the reader and the Label explorer say LV, not label 1.
"""

from __future__ import annotations

import pytest

from gvsl_app import cli
from gvsl_app.data.samples import LABEL_TABLE
from gvsl_app.data.synthetic import CARDIAC_COLORS, CARDIAC_LABELS
from gvsl_app.io.label_tables import find_label_table, read_label_table


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "cardiac"
    assert cli.main(["sample", "cardiac", "--out", str(out), "--n", "2", "--shape", "24", "--seed", "5"]) == 0
    return out


@pytest.mark.parametrize("kind", ["cardiac", "brain"])
def test_gvsl_sample_writes_an_itksnap_label_table_beside_the_labels(kind, tmp_path, sample_folder):
    if kind == "brain":
        pytest.importorskip("nilearn")
        out = tmp_path / "brain"
        assert cli.main(["sample", "brain", "--out", str(out), "--n", "1", "--shape", "24"]) == 0
        from gvsl_app.data.brain import BRAIN_COLORS as colors
        from gvsl_app.data.brain import BRAIN_LABELS as names
    else:
        out, names, colors = sample_folder, CARDIAC_LABELS, CARDIAC_COLORS
    table_file = out / LABEL_TABLE
    assert find_label_table(out / "labels" / "case_000.nii.gz") == table_file
    table = read_label_table(table_file)
    assert table.format == "itksnap"
    assert dict(table.names) == names and dict(table.colors) == colors


def test_evaluate_labels_names_the_structures_of_a_sample(sample_folder, tmp_path, capsys):
    labels = sample_folder / "labels"
    out = tmp_path / "eval.csv"
    code = cli.main(["evaluate-labels", str(labels), str(labels), "--out", str(out), "--no-distances", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"structure names from {labels / 'labels.txt'}" in printed
    assert "LV" in printed and "label 1" not in printed.lower()
    table = out.read_text()
    assert "LV" in table and "RV" in table


def test_the_reader_names_the_structures_of_a_sample(sample_folder):
    pytest.importorskip("napari")
    from napari_plugin._reader import layer_data_for

    data, kwargs, kind = layer_data_for(sample_folder / "labels" / "case_000.nii.gz")
    assert kind == "labels"
    names = dict(zip(kwargs["features"]["index"], kwargs["features"]["name"]))
    assert names[1] == "LV" and names[2] == CARDIAC_LABELS[2]


@pytest.mark.gui
def test_the_label_explorer_names_the_structures_of_a_sample_opened_from_disk(sample_folder, make_napari_viewer, qtbot):
    pytest.importorskip("pytestqt")
    from napari_plugin._explorer import LabelExplorerWidget

    viewer = make_napari_viewer()
    [layer] = viewer.open(str(sample_folder / "labels" / "case_000.nii.gz"), plugin="gvsl-studio")
    w = LabelExplorerWidget(viewer)
    viewer.window.add_dock_widget(w, name="Label explorer")
    w.labels.set_layer(layer.name)
    w.reference.set_layer("(none)")
    w.run()
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=60_000)
    assert w.state.status == "done", w.state.message
    rows = {w.table.item(r, 0).text() for r in range(w.table.rowCount())}
    assert {"LV", "RV"} <= rows and not any(r.lower().startswith("label ") for r in rows)

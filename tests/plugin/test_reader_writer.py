"""napari plugin: manifest, reader/writer in physical space, sample data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
from gvsl_app.io.images import read_volume, write_volume
from gvsl_app.io.volume import Volume

from helpers import SMALL, rotated  # noqa: E402

pytestmark = pytest.mark.gui
ROOT = Path(__file__).resolve().parents[2]


def _world_of_index(layer, index) -> np.ndarray:
    return np.asarray(layer.data_to_world(np.asarray(index, dtype=float)))


def _physical_of_index(volume: Volume, index_zyx) -> np.ndarray:
    """Reference: ITK's own index -> physical point, reordered to (z, y, x)."""
    img = sitk.Image([int(s) for s in volume.shape[::-1]], sitk.sitkUInt8)
    img.SetSpacing(volume.spacing)
    img.SetOrigin(volume.origin)
    img.SetDirection(volume.direction)
    return np.asarray(img.TransformContinuousIndexToPhysicalPoint([float(i) for i in index_zyx[::-1]]))[::-1]


@pytest.fixture
def oblique_ct(tmp_path) -> tuple[Path, Volume]:
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1500, size=(12, 16, 20)).astype(np.int16)
    vol = rotated(Volume(arr, spacing=(0.8, 1.25, 2.5)), 25.0)
    path = write_volume(vol, tmp_path / "ct_oblique.nii.gz")
    return path, read_volume(path)


def test_manifest_validates_and_imports():
    for target in ("gvsl-studio", str(ROOT / "napari_plugin" / "napari.yaml")):
        res = subprocess.run(
            [sys.executable, "-m", "npe2", "validate", "--imports", target],
            capture_output=True,
            encoding="utf-8",  # npe2 prints check marks; a C/POSIX locale would decode them as ASCII
            timeout=300,
        )
        assert res.returncode == 0, res.stdout + res.stderr
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("gvsl-studio")
    assert {w.display_name for w in mf.contributions.widgets} == {
        "Z-Matching",
        "Training",
        "Segmentation",
        "Label explorer",
        "Feature clusters",
    }
    assert {s.key for s in mf.contributions.sample_data} == {"cardiac", "brain"}
    # claims volume files, not every file (napari would ask users to pick a reader for a .tif)
    assert "gvsl-studio" in {r.plugin_name for r in pm.iter_compatible_readers(["scan.nii.gz"])}
    assert "gvsl-studio" not in {r.plugin_name for r in pm.iter_compatible_readers(["photo.tif"])}


def test_reader_keeps_physical_geometry(make_napari_viewer, oblique_ct):
    from napari_plugin._reader import napari_get_reader

    path, ref = oblique_ct
    assert napari_get_reader(str(path)) is not None
    assert napari_get_reader(str(path.with_suffix(".txt"))) is None
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="gvsl-studio")
    assert type(layer).__name__.lower() == "image"
    np.testing.assert_allclose(layer.scale, ref.spacing[::-1], rtol=1e-6)
    np.testing.assert_allclose(layer.translate, ref.origin[::-1], rtol=1e-6)
    np.testing.assert_array_equal(layer.data, ref.array)
    for index in ((0, 0, 0), (11, 15, 19), (3.5, 7, 2)):
        np.testing.assert_allclose(_world_of_index(layer, index), _physical_of_index(ref, index), atol=1e-4)


def test_reader_opens_label_maps_as_labels(make_napari_viewer, tmp_path):
    lab = np.zeros((10, 12, 14), np.uint8)
    lab[2:6, 3:8, 4:9] = 3
    write_volume(Volume(lab, spacing=(1, 1, 2)), tmp_path / "heart_seg.nii.gz", is_label=True)
    write_volume(Volume(lab.astype(np.int16) * 2), tmp_path / "mask.mha", is_label=True)
    ct = np.random.default_rng(1).integers(-900, 900, size=(10, 12, 14)).astype(np.int16)
    write_volume(Volume(ct), tmp_path / "ct.nrrd")
    viewer = make_napari_viewer()
    kinds = {}
    for name in ("heart_seg.nii.gz", "mask.mha", "ct.nrrd"):
        (layer,) = viewer.open(str(tmp_path / name), plugin="gvsl-studio")
        kinds[layer.name] = type(layer).__name__.lower()
    assert kinds == {"heart_seg": "labels", "mask": "labels", "ct": "image"}
    np.testing.assert_allclose(viewer.layers["heart_seg"].scale, (2, 1, 1))


def _write_dicom_series(volume: Volume, folder: Path) -> None:
    folder.mkdir()
    img = sitk.Cast(sitk.GetImageFromArray(volume.array), sitk.sitkInt16)
    img.SetSpacing(volume.spacing)
    img.SetOrigin(volume.origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(img.GetDepth()):
        s = img[:, :, z]
        pos = img.TransformIndexToPhysicalPoint((0, 0, z))
        for tag, value in (
            ("0008|0060", "CT"),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
            ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.2"),
            ("0020|0013", str(z + 1)),
            ("0020|0032", "\\".join(f"{p:.4f}" for p in pos)),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0028|0030", f"{volume.spacing[1]}\\{volume.spacing[0]}"),
            ("0018|0050", str(volume.spacing[2])),
        ):
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(s)


def test_reader_reads_dicom_series_folders(make_napari_viewer, tmp_path):
    from napari_plugin._reader import napari_get_reader

    arr = np.random.default_rng(2).integers(-500, 500, size=(6, 10, 12)).astype(np.int16)
    vol = Volume(arr, spacing=(0.7, 0.7, 3.0), origin=(-10.0, 5.0, 20.0))
    _write_dicom_series(vol, tmp_path / "series")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    assert napari_get_reader(str(tmp_path / "notes")) is None
    assert napari_get_reader(str(tmp_path / "series")) is not None
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "series"), plugin="gvsl-studio")
    assert layer.data.shape == (6, 10, 12)
    np.testing.assert_allclose(layer.scale, (3.0, 0.7, 0.7), rtol=1e-4)
    np.testing.assert_allclose(layer.translate, (20.0, 5.0, -10.0), atol=1e-3)


def test_reader_error_carries_engine_message(make_napari_viewer, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a volume")
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="broken.nii.gz"):
        viewer.open(str(bad), plugin="gvsl-studio")
    assert len(viewer.layers) == 0


def test_writer_round_trip_keeps_geometry(make_napari_viewer, oblique_ct, tmp_path):
    path, ref = oblique_ct
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="gvsl-studio")
    out = tmp_path / "saved" / "again.nii.gz"
    layer.save(str(out), plugin="gvsl-studio")
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, ref.array)
    np.testing.assert_allclose(back.spacing, ref.spacing, rtol=1e-5)
    np.testing.assert_allclose(back.origin, ref.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, ref.direction, atol=1e-5)
    # What the layer shows is what is written: a user change of the voxel size is kept.
    layer.scale = (5.0, 1.0, 1.0)
    layer.save(str(tmp_path / "rescaled.nii"), plugin="gvsl-studio")
    assert read_volume(tmp_path / "rescaled.nii").spacing[2] == pytest.approx(5.0, rel=1e-5)


def test_labels_writer_round_trip(make_napari_viewer, tmp_path):
    lab = np.zeros((8, 9, 10), np.uint8)
    lab[1:5, 2:6, 3:8] = 2
    vol = rotated(Volume(lab, spacing=(1.5, 1.5, 4.0)), -40)
    viewer = make_napari_viewer()
    from napari_plugin._layers import labels_layer_data

    data, kw, _ = labels_layer_data(vol, "labels", {2: "RV"})
    layer = viewer.add_labels(data, **kw)
    layer.save(str(tmp_path / "lab"), plugin="gvsl-studio")  # no extension: .nii.gz is added
    back = read_volume(tmp_path / "lab.nii.gz")
    assert back.array.dtype.kind in "iu"
    np.testing.assert_array_equal(back.array, lab)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-5)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)


@pytest.mark.parametrize("kind", ["cardiac", "brain"])
def test_sample_data_loads(make_napari_viewer, small_samples, kind):
    from gvsl_app.data.samples import sample_pair

    viewer = make_napari_viewer()
    layers = viewer.open_sample("gvsl-studio", kind)
    names = [lay.name for lay in layers]
    assert names == [f"{kind} fixed", f"{kind} moving", f"{kind} fixed labels", f"{kind} moving labels"]
    ref = sample_pair(kind, SMALL)
    fixed = viewer.layers[f"{kind} fixed"]
    np.testing.assert_allclose(fixed.scale, ref["fixed_image"].spacing[::-1])
    for index in ((0, 0, 0), (47, 10, 30)):
        np.testing.assert_allclose(
            _world_of_index(fixed, index), _physical_of_index(ref["fixed_image"], index), atol=1e-4
        )
    labels = viewer.layers[f"{kind} moving labels"]
    assert set(labels.features["name"]) >= set(ref["label_names"].values())
    value = next(iter(ref["label_names"]))
    expected = np.array(ref["label_colors"][value]) / 255.0
    np.testing.assert_allclose(labels.colormap.map(np.array([value]))[0][:3], expected, atol=1e-3)


def test_a_label_table_next_to_a_label_map_names_and_colours_its_layer(tmp_path, notifications):
    from gvsl_app.io.label_tables import LabelTable, write_label_table
    from napari_plugin._reader import layer_data_for

    arr = np.zeros((6, 7, 8), np.uint8)
    arr[1:3, 1:4, 1:5], arr[4:6, 2:5, 3:7], arr[0, 0, 0] = 1, 2, 9  # 9: a value the table does not name
    path = write_volume(Volume(arr, spacing=(1.0, 1.0, 2.0)), tmp_path / "heart_seg.nii.gz", is_label=True)
    table = LabelTable({1: "Left ventricle", 2: "Right ventricle"}, colors={1: (255, 0, 0), 2: (0, 0, 255)})
    write_label_table(table, tmp_path / "heart_seg.txt")  # ITK-SNAP's format, the same stem
    data, kw, kind = layer_data_for(path)
    assert kind == "labels"
    names = dict(zip(kw["features"]["index"], kw["features"]["name"]))
    assert names[1] == "Left ventricle" and names[2] == "Right ventricle" and names[9] == "Label 9"
    colors = kw["colormap"].color_dict
    np.testing.assert_allclose(colors[1][:3], [1.0, 0.0, 0.0]) and np.testing.assert_allclose(
        colors[2][:3], [0, 0, 1.0]
    )
    # an unreadable table is skipped with a warning, the map still opens
    (tmp_path / "heart_seg.txt").write_text("this is not a table\n")
    data, kw, kind = layer_data_for(path)
    assert kind == "labels" and any("not a label table" in n for n in notifications)

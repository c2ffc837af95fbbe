"""A scan whose voxel axes run along other world axes (coronal, sagittal) is segmented in world
axis order, as the app's reader shows it, and its labels come back on the file's own grid:
`gvsl segment` and the app give the same labels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from gvsl_app.io.images import volume_to_sitk
from gvsl_app.io.volume import Volume
from gvsl_app.services.segment import segment

pytest.importorskip("nilearn")


def sitk_to_volume(img: sitk.Image, source: str) -> Volume:
    return Volume(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection(), source=source)


@pytest.fixture(scope="module")
def axial_and_coronal():
    from gvsl_app.data.brain import make_brain_subject

    image, labels = make_brain_subject(3, (40, 48, 40))
    coronal = sitk.DICOMOrient(volume_to_sitk(image), "LSP")  # voxel axes: x, then superior, then posterior
    assert coronal.GetDirection() != volume_to_sitk(image).GetDirection()
    return image, labels, sitk_to_volume(coronal, source="coronal.nii.gz")


def test_gvsl_segment_gives_a_coronal_file_the_app_s_labels_as_good_as_the_axial_scan_s(axial_and_coronal, tmp_path):
    from gvsl_app.cli import main
    from gvsl_app.io.images import read_volume, write_volume
    from gvsl_app.io.orientation import axis_aligned, volume_in_file_frame

    image, labels, coronal = axial_and_coronal
    write_volume(coronal, tmp_path / "coronal.nii.gz")
    ref = sitk_to_volume(sitk.DICOMOrient(volume_to_sitk(labels), "LSP"), source="coronal labels")
    write_volume(ref, tmp_path / "coronal_labels.nii.gz", is_label=True)
    out = tmp_path / "seg.nii.gz"
    argv = ["segment", str(tmp_path / "coronal.nii.gz"), "--out", str(out), "--device", "cpu", "--skull-strip", "off"]
    assert main([*argv, "--reference", str(tmp_path / "coronal_labels.nii.gz")]) == 0
    cli = read_volume(out)
    report = json.loads((tmp_path / "seg_report.json").read_text())
    # the app: the reader shows the file axis-aligned, the widget segments what is shown, and
    # the writer saves the labels on the file's grid
    on_file = read_volume(tmp_path / "coronal.nii.gz")
    shown, record = axis_aligned(on_file)
    assert record is not None and shown.shape != on_file.shape
    app = volume_in_file_frame(segment(shown, device="cpu", skull_strip="off").labels, record)
    assert cli.shape == on_file.shape and cli.direction == pytest.approx(on_file.direction)
    np.testing.assert_array_equal(cli.array, app.array)
    assert "world axis order" in report["reoriented"]
    # and as good as the same scan stored axially (0.753 against 0.763 when written)
    axial = segment(image, device="cpu", skull_strip="off", reference=labels)
    assert axial.record.mean_dice > 0.5 and "reoriented" not in axial.report  # a real segmentation
    assert report["mean_dice"] > axial.record.mean_dice - 0.05

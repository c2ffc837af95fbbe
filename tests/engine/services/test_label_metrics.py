"""Per-structure comparison of label maps (volumes, Dice, HD95, ASSD in mm) and whole cohorts."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from gvsl_app.io.images import write_volume
from gvsl_app.io.volume import Volume
from gvsl_app.services.label_cohort import evaluate_cohort, pair_cases, structure_summary, write_table
from gvsl_app.services.label_metrics import compare_label_maps, summarise_structures

SPACING = (0.8, 1.2, 3.0)  # x, y, z in mm: anisotropic on purpose


def box_map(shape=(16, 24, 28), boxes=(), spacing=SPACING) -> Volume:
    """A label map with ``(label, (z0, z1, y0, y1, x0, x1))`` boxes."""
    arr = np.zeros(shape, np.uint8)
    for label, (z0, z1, y0, y1, x0, x1) in boxes:
        arr[z0:z1, y0:y1, x0:x1] = label
    return Volume(arr, spacing=spacing, source="in memory")


def test_a_shifted_box_has_the_dice_and_distances_of_its_shift_in_millimetres():
    ref = box_map(boxes=[(1, (4, 12, 6, 16, 6, 16))])
    for axis, (shift, mm) in enumerate([(2, SPACING[2]), (3, SPACING[1]), (2, SPACING[0])]):
        box = [4, 12, 6, 16, 6, 16]
        box[2 * axis] += shift
        box[2 * axis + 1] += shift
        pred = box_map(boxes=[(1, tuple(box))])
        (row,) = compare_label_maps(pred, ref, names={1: "LV"})
        side = box[2 * axis + 1] - box[2 * axis]
        assert row.name == "LV"
        assert row.dice == pytest.approx((side - shift) / side)  # overlap shrinks by the shift along that axis
        # a third of the surface points sit on the two shifted end faces: the 95th percentile is the shift, in mm
        assert row.hd95_mm == pytest.approx(shift * mm, rel=1e-6)
        assert 0 < row.assd_mm < row.hd95_mm
        voxel_ml = np.prod(SPACING) / 1000
        assert row.volume_ml == pytest.approx(8 * 10 * 10 * voxel_ml) and row.ref_volume_ml == row.volume_ml


def test_identical_maps_score_one_and_zero_distance_and_volumes_count_voxels():
    m = box_map(boxes=[(1, (2, 6, 2, 8, 2, 9)), (3, (8, 14, 10, 20, 12, 25))])
    rows = compare_label_maps(m, m)
    assert [r.label for r in rows] == [1, 3] and [r.name for r in rows] == ["label 1", "label 3"]
    assert all(r.dice == 1.0 and r.hd95_mm == 0.0 and r.assd_mm == 0.0 for r in rows)
    assert rows[1].volume_ml == pytest.approx(6 * 10 * 13 * np.prod(SPACING) / 1000)


def test_undefined_metrics_are_said_and_left_out_of_the_summary():
    ref = box_map(boxes=[(1, (2, 6, 2, 8, 2, 9)), (2, (8, 12, 8, 12, 8, 12))])
    pred = box_map(boxes=[(1, (2, 6, 2, 8, 2, 9))])  # label 2 missed
    rows = compare_label_maps(pred, ref, labels=[1, 2, 5])
    by = {r.label: r for r in rows}
    assert by[2].dice == 0.0 and by[2].hd95_mm is None and "absent from the label map" in by[2].note
    assert by[5].dice is None and by[5].hd95_mm is None and "absent from both" in by[5].note
    s = summarise_structures(rows)
    assert s["dice"]["n"] == 2 and s["dice"]["mean"] == pytest.approx(0.5)  # 1.0 and 0.0, not the undefined one
    assert s["hd95_mm"]["n"] == 1 and s["hd95_mm"]["mean"] == 0.0


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((8, 8, 8), -1, np.int16), "negative labels"),
        (np.full((8, 8, 8), 0.5, np.float32), "fractional values"),
        (np.full((8, 8, 8), np.nan, np.float32), "NaN"),
        (np.zeros((8, 8), np.uint8), "3D"),
    ],
)
def test_bad_label_maps_are_refused_with_the_reason(array, message):
    with pytest.raises(ValueError, match=message):
        compare_label_maps(Volume(array, source="bad.nii.gz"), None)


def test_maps_on_different_shapes_are_refused_naming_both():
    with pytest.raises(ValueError, match="same grid|one grid"):
        compare_label_maps(box_map(shape=(8, 8, 8)), box_map(shape=(8, 8, 9)))


def _cohort(tmp_path, n=3, grid_spacing=SPACING):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for k in range(n):
        ref = box_map(boxes=[(1, (4, 12, 6, 16, 6, 16)), (2, (1, 3, 1, 4, 1, 5))])
        pred = box_map(boxes=[(1, (4, 12, 6, 16, 6 + k, 16 + k))], spacing=grid_spacing)
        write_volume(ref, ref_dir / f"case{k}.nii.gz", is_label=True)
        write_volume(pred, pred_dir / f"case{k}.mha", is_label=True)  # other ending: paired by name
    return pred_dir, ref_dir


def test_cohort_pairs_by_name_and_writes_one_row_per_case_and_structure(tmp_path):
    pred_dir, ref_dir = _cohort(tmp_path)
    pairs = pair_cases(pred_dir, ref_dir)
    assert [p[0] for p in pairs] == ["case0", "case1", "case2"]
    results = evaluate_cohort(pairs, {1: "LV", 2: "RV"})
    table = write_table(results, tmp_path / "out" / "metrics.csv")
    rows = list(csv.DictReader(open(table)))
    assert len(rows) == 6 and {r["name"] for r in rows} == {"LV", "RV"}
    lv = [float(r["dice"]) for r in rows if r["name"] == "LV"]
    assert lv == pytest.approx([1.0, 0.9, 0.8])  # shifted by 0, 1, 2 voxels of a 10-voxel side
    rv = [r for r in rows if r["name"] == "RV"]
    assert all(r["dice"] == "0.0" and r["hd95_mm"] == "" and "absent from the label map" in r["note"] for r in rv)
    summary = structure_summary(results)
    assert summary["LV"]["dice"]["mean"] == pytest.approx(0.9) and summary["LV"]["dice"]["n"] == 3


def test_cohort_refuses_unpaired_cases_listing_them(tmp_path):
    pred_dir, ref_dir = _cohort(tmp_path)
    (ref_dir / "case1.nii.gz").unlink()
    with pytest.raises(ValueError, match="no reference in .* for case1"):
        pair_cases(pred_dir, ref_dir)


def test_a_label_map_on_another_grid_is_refused_or_resampled_on_request(tmp_path):
    pred_dir, ref_dir = _cohort(tmp_path, n=1, grid_spacing=(0.8, 1.2, 2.9))
    pairs = pair_cases(pred_dir, ref_dir)
    with pytest.raises(ValueError, match="case0.mha"):
        evaluate_cohort(pairs)
    (res,) = evaluate_cohort(pairs, resample=True)
    assert any("resampled onto the reference grid" in n for n in res.notes)
    assert res.rows[0].dice > 0.8


def test_cli_evaluate_labels_writes_the_table_and_prints_the_summary(tmp_path):
    pred_dir, ref_dir = _cohort(tmp_path)
    out = tmp_path / "metrics.csv"
    cmd = [sys.executable, "-m", "gvsl_app.cli", "evaluate-labels", str(pred_dir), str(ref_dir), "--out", str(out)]
    r = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(list(csv.DictReader(open(out)))) == 6
    lv_line = next(line for line in r.stdout.splitlines() if line.startswith("label 1"))
    assert " 0.900+-0.082" in lv_line  # mean and std of 1.0, 0.9, 0.8
    again = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True)
    assert again.returncode == 2 and "exists" in again.stderr and "--overwrite" in again.stderr


def test_cli_segment_on_a_data_folder_writes_every_map_and_one_table(tmp_path, seg_ckpt):
    from gvsl_app.data.synthetic import cardiac_dataset
    from gvsl_app.io.images import read_labels, read_volume

    data = cardiac_dataset(tmp_path / "data", 2, seed=9, shape=(32, 32, 32))
    out = tmp_path / "segs"
    cmd = [sys.executable, "-m", "gvsl_app.cli", "segment", str(data), "--out", str(out), "--weights", str(seg_ckpt)]
    r = subprocess.run([*cmd, "--device", "cpu", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    cases = sorted({row["case"] for row in rows})
    assert len(cases) == 2 and len(rows) == 2 * 7  # the seven heart structures of each case
    case = cases[0]
    seg = read_labels(out / f"{case}.nii.gz")
    image = read_volume(data / "images" / f"{case}.nii.gz")
    assert seg.shape == image.shape and seg.spacing == pytest.approx(image.spacing)  # on the image's grid
    ref = read_labels(data / "labels" / f"{case}.nii.gz").array
    lv = next(row for row in rows if row["case"] == case and row["label"] == "1")
    a, b = seg.array == 1, ref == 1
    if a.any() or b.any():  # recount the Dice the table holds
        assert float(lv["dice"]) == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert lv["name"] == "LV"
    again = subprocess.run([*cmd, "--device", "cpu", "--quiet"], capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # never mixes with an earlier run's outputs


def test_cli_evaluate_labels_names_structures_from_an_itksnap_table(tmp_path):
    from gvsl_app.io.label_tables import LabelTable, write_label_table

    pred_dir, ref_dir = _cohort(tmp_path, n=1)
    table = write_label_table(LabelTable({1: "Left ventricle", 2: "Right ventricle"}), tmp_path / "names.txt")
    out = tmp_path / "m.csv"
    cmd = [sys.executable, "-m", "gvsl_app.cli", "evaluate-labels", str(pred_dir), str(ref_dir), "--out", str(out)]
    r = subprocess.run([*cmd, "--names", str(table), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [row["name"] for row in csv.DictReader(open(out))] == ["Left ventricle", "Right ventricle"]
    bad = tmp_path / "bad.txt"
    bad.write_text('1 255 0 0 1 1 1 "LV\n')  # no closing quote
    r = subprocess.run([*cmd, "--names", str(bad), "--overwrite", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2 and "bad.txt" in r.stderr and "line 1" in r.stderr

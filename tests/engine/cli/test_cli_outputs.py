"""What the ``gvsl`` commands refuse, keep and write: outputs never over their inputs or mixed
with an earlier call's, staged replacement with ``--overwrite``, undefined Dice, DICOM series.

In-process (``gvsl_app.cli.main``) on 32^3 volumes and width-8 networks: these check what the
commands refuse, keep and write, which needs no fresh interpreter per call.
"""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gvsl_app.io.images import read_labels, read_volume
from models.downstream import SegmentationNet


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 32^3 cardiac data folder of two cases."""
    from gvsl_app.data.synthetic import cardiac_dataset

    return cardiac_dataset(tmp_path_factory.mktemp("small") / "D", 2, seed=5, shape=(32, 32, 32))


@pytest.fixture(scope="module")
def seg_class3(tmp_path_factory):
    """A width-8 segmenter that labels every voxel 3 (zero head weights, one-hot bias)."""
    from helpers import WIDTHS

    net = SegmentationNet(8, WIDTHS)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.head.bias[3] = 10.0
    path = tmp_path_factory.mktemp("w") / "seg3.pt"
    ck = {"format": "gvsl-studio", "kind": "segmentation", "model_config": net.config(), "model": net.state_dict()}
    torch.save({**ck, "preprocess": {"size": 32}, "label_names": {3: "LA"}}, path)
    return path


def run_cli(capsys, *args):
    """``gvsl ARGS`` in this process: (exit status, stdout, stderr)."""
    from gvsl_app.cli import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_segment_never_writes_over_its_own_inputs(small, seg_ckpt, tmp_path, capsys):
    before = snapshot(small)
    seg = ("--weights", seg_ckpt, "--device", "cpu", "--quiet", "--overwrite")
    rc, _, err = run_cli(capsys, "segment", small, "--out", small / "labels", *seg)
    assert rc == 2 and f"{small / 'labels'} is the reference labels folder" in err
    rc, _, err = run_cli(capsys, "segment", small, "--out", small / "images", *seg)
    assert rc == 2 and f"{small / 'images'} is the images folder" in err
    image, lab = small / "images" / "case_000.nii.gz", small / "labels" / "case_000.nii.gz"
    rc, _, err = run_cli(capsys, "segment", image, "--out", image, *seg)
    assert rc == 2 and f"--out {image} is the input image" in err
    rc, _, err = run_cli(capsys, "segment", image, "--reference", lab, "--out", lab, *seg)
    assert rc == 2 and f"--out {lab} is the reference labels" in err
    rc, _, err = run_cli(capsys, "segment", image, "--out", tmp_path / "s.nii.gz", "--report", image, *seg)
    assert rc == 2 and f"--report {image} is the input image" in err
    assert snapshot(small) == before  # nothing deleted, nothing written
    assert not (tmp_path / "s.nii.gz").exists()


def test_match_never_replaces_an_input_that_lies_among_its_outputs(small, gvsl_ckpt, tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    moving = out / "warped.nii.gz"  # e.g. the result of an earlier match, matched again
    moving.write_bytes((small / "images" / "case_001.nii.gz").read_bytes())
    common = ("--weights", gvsl_ckpt, "--size", 32, "--device", "cpu", "--no-refine", "--overwrite")
    rc, _, err = run_cli(capsys, "match", small / "images" / "case_000.nii.gz", moving, "--out", out, *common)
    assert rc == 2 and f"would replace the moving image {moving}" in err
    assert moving.read_bytes() == (small / "images" / "case_001.nii.gz").read_bytes()


def test_match_of_a_flat_scan_writes_the_identity_and_says_why(small, gvsl_ckpt, tmp_path, capsys):
    from gvsl_app.io.images import write_volume

    image = read_volume(small / "images" / "case_001.nii.gz")
    flat = tmp_path / "air.nii.gz"
    write_volume(image.with_array(np.full(image.shape, -1000, np.int16)), flat)
    common = ("--weights", gvsl_ckpt, "--size", 32, "--device", "cpu")  # refining, by default
    rc, _, err = run_cli(capsys, "match", small / "images" / "case_000.nii.gz", flat, "--out", tmp_path / "m", *common)
    assert rc == 0 and "one value everywhere" in err and "air.nii.gz" in err
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["refined"] is None and report["folding_percent"] == 0.0


def test_overwrite_replaces_earlier_outputs_only_once_the_new_ones_are_written(
    small, gvsl_ckpt, seg_ckpt, tmp_path, capsys
):
    fixed, moving = small / "images" / "case_000.nii.gz", small / "images" / "case_001.nii.gz"
    out = tmp_path / "m"
    common = ("--weights", gvsl_ckpt, "--size", 32, "--device", "cpu", "--no-refine")
    assert run_cli(capsys, "match", fixed, moving, "--out", out, *common)[0] == 0
    earlier = snapshot(out)
    rc, _, err = run_cli(capsys, "match", fixed, tmp_path / "no_such.nii.gz", "--out", out, "--overwrite", *common)
    assert rc == 2 and "no_such.nii.gz" in err
    assert snapshot(out) == earlier  # the inputs are read before anything is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # and no staging folder is left

    # a folder run that fails on its second volume keeps every output of the earlier run
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.nii.gz").write_bytes(fixed.read_bytes())
    segs = tmp_path / "segs"
    seg = ("--weights", seg_ckpt, "--device", "cpu", "--quiet")
    assert run_cli(capsys, "segment", data, "--out", segs, *seg)[0] == 0
    earlier = snapshot(segs)
    (data / "images" / "b.nii.gz").write_text("not an image")
    rc, _, err = run_cli(capsys, "segment", data, "--out", segs, "--overwrite", *seg)
    assert rc == 2 and "b.nii.gz" in err
    assert snapshot(segs) == earlier
    (data / "images" / "b.nii.gz").write_bytes(moving.read_bytes())
    assert run_cli(capsys, "segment", data, "--out", segs, "--overwrite", *seg)[0] == 0
    assert {"a.nii.gz", "b.nii.gz", "metrics.csv", "report.json"} == set(snapshot(segs))


def _unwritable(tmp_path) -> Path:
    """A folder this process cannot create files in (root ignores permission bits: /sys then)."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    if not Path("/sys").is_dir() or os.access("/sys", os.W_OK) and _can_create("/sys"):
        pytest.skip("no folder this root process cannot write")
    return Path("/sys")


def _can_create(folder) -> bool:
    try:
        (Path(folder) / ".gvsl-test").touch()
    except OSError:
        return False
    (Path(folder) / ".gvsl-test").unlink()
    return True


def test_an_unwritable_out_is_refused_before_any_work(small, gvsl_ckpt, tmp_path, capsys, monkeypatch):
    import gvsl_app.services.matching as matching

    def no_work(*a, **k):
        raise AssertionError("matched although --out cannot be written")

    monkeypatch.setattr(matching, "match", no_work)
    out = _unwritable(tmp_path) / "gvsl-out"
    fixed, moving = small / "images" / "case_000.nii.gz", small / "images" / "case_001.nii.gz"
    rc, _, err = run_cli(capsys, "match", fixed, moving, "--out", out, "--weights", gvsl_ckpt, "--device", "cpu")
    assert rc == 2 and f"cannot write {out}" in err and "not writable" in err
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()]  # one line, no ITK output


def test_a_structure_absent_from_both_maps_has_no_dice(small, seg_class3, tmp_path, capsys):
    image = read_volume(small / "images" / "case_000.nii.gz")
    ref = np.zeros(image.shape, np.uint8)
    ref[8:16, 8:16, 8:16] = 3  # the segmenter labels everything 3: labels 1, 2, 4..7 are in neither map
    from gvsl_app.io.images import write_volume

    ref_path = write_volume(image.with_array(ref), tmp_path / "ref.nii.gz", is_label=True)
    out = tmp_path / "seg.nii.gz"
    args = ("--weights", seg_class3, "--device", "cpu", "--reference", ref_path, "--out", out)
    rc, stdout, _ = run_cli(capsys, "segment", small / "images" / "case_000.nii.gz", *args)
    assert rc == 0
    report = json.loads((tmp_path / "seg_report.json").read_text())
    expected = 2 * 512 / (32**3 + 512)
    assert report["dice"]["3"] == pytest.approx(expected)
    assert all(report["dice"][str(k)] is None for k in (1, 2, 4, 5, 6, 7))  # undefined, not 1.0
    assert report["mean_dice"] == pytest.approx(expected)  # the mean of the defined values only
    assert any("absent from both" in n and "label 1" in n for n in report["notes"])
    assert f"{'1':>18} {0.0:9.2f} {'n/a':>7}" in stdout.splitlines(), stdout

    from gvsl_app.services.metrics import dice_per_label, mean_dice, mean_dice_over_cases

    d = dice_per_label(np.zeros((4, 4, 4), int), np.zeros((4, 4, 4), int), [1])
    assert np.isnan(d[1]) and np.isnan(mean_dice(d))
    missed = dice_per_label(np.zeros((4, 4, 4), int), np.ones((4, 4, 4), int), [1])
    assert missed == {1: 0.0}  # a structure missed entirely still scores 0
    assert mean_dice_over_cases([{1: 0.5, 2: float("nan")}, {1: 1.0, 2: 0.25}], [1, 2]) == {1: 0.75, 2: 0.25}


def test_evaluate_labels_lists_every_case_even_one_with_nothing_to_compare(tmp_path, capsys):
    from gvsl_app.io.images import write_volume
    from gvsl_app.io.volume import Volume

    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    full = np.zeros((12, 12, 12), np.uint8)
    full[2:6, 2:6, 2:6] = 1
    for where in (pred_dir, ref_dir):
        write_volume(Volume(full), where / "a.nii.gz", is_label=True)
        write_volume(Volume(np.zeros_like(full)), where / "empty.nii.gz", is_label=True)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"1": "LV", "2": "RV"}))
    out = tmp_path / "m.csv"
    rc, stdout, _ = run_cli(capsys, "evaluate-labels", pred_dir, ref_dir, "--out", out, "--names", names, "--quiet")
    assert rc == 0
    import csv

    rows = list(csv.DictReader(open(out)))
    by = {(r["case"], r["name"]): r for r in rows}
    assert set(by) == {("a", "LV"), ("empty", "(no structure)")}  # a name table's other entries: no rows
    assert by[("a", "LV")]["dice"] == "1.0"

    # without names, a case with nothing in either map still has its row, saying so
    rc, stdout, _ = run_cli(capsys, "evaluate-labels", pred_dir, ref_dir, "--out", out, "--overwrite", "--quiet")
    rows = list(csv.DictReader(open(out)))
    assert rc == 0 and [r["case"] for r in rows] == ["a", "empty"]
    assert "nothing to compare" in rows[1]["note"] and rows[1]["dice"] == ""
    assert "note: empty: no structure" in stdout


def test_sample_refuses_a_folder_holding_a_data_set_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "S"
    assert run_cli(capsys, "sample", "cardiac", "--out", out, "--n", 2, "--shape", 16)[0] == 0
    earlier = snapshot(out)
    rc, _, err = run_cli(capsys, "sample", "cardiac", "--out", out, "--n", 1, "--shape", 20)
    assert rc == 2 and f"{out} is not empty" in err and "--overwrite" in err
    assert snapshot(out) == earlier
    (out / "notes.txt").write_text("mine")
    assert run_cli(capsys, "sample", "cardiac", "--out", out, "--n", 1, "--shape", 20, "--overwrite")[0] == 0
    assert sorted(snapshot(out)) == [
        "images/case_000.nii.gz",
        "labels/case_000.nii.gz",
        "labels/labels.txt",
        "notes.txt",
    ]
    assert read_volume(out / "images" / "case_000.nii.gz").shape == (20, 20, 20)


def test_segment_report_is_named_after_the_label_files_own_suffixes(small, seg_ckpt, tmp_path, capsys):
    image = small / "images" / "case_000.nii.gz"
    seg = ("--weights", seg_ckpt, "--device", "cpu")
    out = tmp_path / "dir with.nii space" / "seg.mha"
    assert run_cli(capsys, "segment", image, "--out", out, *seg)[0] == 0
    assert json.loads((out.parent / "seg_report.json").read_text())["image"] == str(image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir with.nii space"]

    from gvsl_app.volume_commands import default_report_path

    assert default_report_path(Path("dir with.nii space/seg.nii.gz")) == Path("dir with.nii space/seg_report.json")
    assert default_report_path(Path("seg.mha")) == Path("seg_report.json")


def test_segment_report_may_go_to_a_new_folder_and_a_bad_one_is_refused_first(small, seg_ckpt, tmp_path, capsys):
    image = small / "images" / "case_000.nii.gz"
    seg = ("--weights", seg_ckpt, "--device", "cpu")
    report = tmp_path / "new" / "deeper" / "rep.json"
    assert run_cli(capsys, "segment", image, "--out", tmp_path / "s2.nii.gz", "--report", report, *seg)[0] == 0
    assert "volume_ml" in json.loads(report.read_text())
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, _, err = run_cli(capsys, "segment", image, "--out", tmp_path / "s3.nii.gz", "--report", blocker / "r", *seg)
    assert rc == 2 and f"{blocker} is a file" in err
    assert not (tmp_path / "s3.nii.gz").exists()  # refused before the label map was written


@pytest.mark.parametrize(
    "voxels, needed",
    [({1: 1}, "at least 2 labelled voxels"), ({1: 1, 2: 1}, "more voxels than labels")],
)
def test_embed_refuses_too_few_labelled_voxels_saying_how_many(small, gvsl_ckpt, tmp_path, capsys, voxels, needed):
    from gvsl_app.io.images import write_volume

    image = read_volume(small / "images" / "case_000.nii.gz")
    lab = np.zeros(image.shape, np.uint8)
    for value, count in voxels.items():
        lab[value, :count, 0] = value
    path = write_volume(image.with_array(lab), tmp_path / "sparse.nii.gz", is_label=True)
    args = ("--weights", gvsl_ckpt, "--size", 32, "--device", "cpu", "--out", tmp_path / "e")
    rc, _, err = run_cli(capsys, "embed", small / "images" / "case_000.nii.gz", path, *args)
    assert rc == 2 and "sparse.nii.gz" in err and needed in err
    assert ", ".join(f"label {v}: {c} voxel" for v, c in voxels.items()) in err
    assert not (tmp_path / "e").exists()


def test_a_dicom_folder_of_two_series_is_read_by_the_uid_given(small, seg_ckpt, gvsl_ckpt, tmp_path, capsys, caplog):
    from helpers import write_dicom_series

    caplog.set_level(logging.WARNING, logger="gvsl_app.io.dicom")
    folder = tmp_path / "study"
    big = read_volume(small / "images" / "case_000.nii.gz").array.astype(np.int16)
    write_dicom_series(folder, big, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), "1.2.3.4.2", prefix="b")
    write_dicom_series(folder, big[:20], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), "1.2.3.4.1", prefix="a")
    seg = ("--weights", seg_ckpt, "--device", "cpu")
    rc, _, _ = run_cli(capsys, "segment", folder, "--out", tmp_path / "s.nii.gz", *seg)
    assert rc == 0  # a DICOM folder is one volume, not a folder of volumes
    warned = caplog.text
    assert "Choose another with --series UID" in warned and "1.2.3.4.1 (20 slices" in warned and "(32 slices" in warned
    caplog.clear()
    assert json.loads((tmp_path / "s_report.json").read_text())["dicom_series"] == {"image": "1.2.3.4.2"}
    rc, _, _ = run_cli(capsys, "segment", folder, "--series", "1.2.3.4.1", "--out", tmp_path / "t.nii.gz", *seg)
    assert rc == 0 and "DICOM series" not in caplog.text
    assert read_labels(tmp_path / "t.nii.gz").shape == (20, 32, 32)
    assert json.loads((tmp_path / "t_report.json").read_text())["dicom_series"] == {"image": "1.2.3.4.1"}

    common = ("--weights", gvsl_ckpt, "--size", 32, "--device", "cpu", "--no-refine")
    rc, _, _ = run_cli(
        capsys, "match", folder, folder, "--moving-series", "1.2.3.4.1", "--out", tmp_path / "m", *common
    )
    assert rc == 0 and "--fixed-series UID" in caplog.text and "--moving-series" not in caplog.text
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["dicom_series"] == {"fixed": "1.2.3.4.2", "moving": "1.2.3.4.1"}
    rc, _, err = run_cli(capsys, "segment", folder, "--series", "9.9", "--out", tmp_path / "u.nii.gz", *seg)
    assert rc == 2 and "no DICOM series with UID '9.9'" in err and "1.2.3.4.1 (20 slices" in err

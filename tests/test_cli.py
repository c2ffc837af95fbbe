"""The ``gvsl`` command line end to end, in subprocesses, on real files.

Every command starts a fresh Python that imports torch (several seconds on the 2-core
machines), so the data folder is written once per module and each command runs once.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import models
from gvsl_app.io.images import read_labels, read_volume
from models.downstream import SegmentationNet

GVSL_CLI = [sys.executable, "-m", "gvsl_app.cli"]
ROOT = Path(__file__).resolve().parents[1]


def gvsl(*args, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [*GVSL_CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def ok(proc):
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def dice(a, b):
    """Dice of two boolean masks, counted by hand (NaN, undefined, when both are empty, as the reports)."""
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int((a & b).sum()) / total


def silhouette(x, labels):
    """Mean silhouette (Euclidean), written out from its definition; 0 for a lone point."""
    d = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
    scores = []
    for i, label in enumerate(labels):
        same = labels == label
        if same.sum() == 1:
            scores.append(0.0)
            continue
        a = d[i, same].sum() / (same.sum() - 1)
        b = min(d[i, labels == other].mean() for other in np.unique(labels) if other != label)
        scores.append((b - a) / max(a, b))
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "D"
    proc = ok(gvsl("sample", "cardiac", "--out", d, "--n", 3, "--seed", 1))
    assert "3 cardiac" in proc.stdout
    return d


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    w = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    m = models.GVSL(widths=models.DEMO_WIDTHS, **models.PAPER_HEADS)
    with torch.no_grad():  # a visibly non-identity map, so the outputs are not trivially the input
        m.affine_head.translation.bias.copy_(torch.tensor([0.3, -0.2, 0.25]))
    torch.save(
        {"format": "gvsl-studio", "kind": "pretrain", "model_config": m.config(), "model": m.state_dict()},
        w / "gvsl.pt",
    )
    s = SegmentationNet(8, models.DEMO_WIDTHS)
    # one 96^3 window covers a whole sample volume (many 32^3 windows take ~20 s on 2 busy cores)
    torch.save(
        {
            "format": "gvsl-studio",
            "kind": "segmentation",
            "model_config": s.config(),
            "model": s.state_dict(),
            "preprocess": {"size": 96},
            "label_names": {1: "LV"},
        },
        w / "seg.pt",
    )
    return w


def test_sample_writes_readable_images_and_labels(data):
    images = sorted((data / "images").glob("*.nii.gz"))
    labels = sorted((data / "labels").glob("*.nii.gz"))
    assert [p.name for p in images] == [p.name for p in labels] and len(images) == 3
    for im, lb in zip(images, labels):
        image = read_volume(im)
        lab = read_labels(lb, image)  # also checks that the labels lie on the image grid
        assert image.array.ndim == 3 and image.array.std() > 0
        assert set(np.unique(lab.array)) == set(range(8))


def test_match_writes_all_outputs_and_a_report(data, weights, tmp_path):
    out = tmp_path / "match"
    fixed, moving = data / "images" / "case_000.nii.gz", data / "images" / "case_001.nii.gz"
    proc = ok(
        gvsl(
            "match",
            fixed,
            moving,
            "--out",
            out,
            "--weights",
            weights / "gvsl.pt",
            "--moving-labels",
            data / "labels" / "case_001.nii.gz",
            "--fixed-labels",
            data / "labels" / "case_000.nii.gz",
            "--size",
            32,
            "--device",
            "cpu",
            "--no-refine",
            "--no-fallback",
        )
    )
    for name in (
        "warped.nii.gz",
        "warped_labels.nii.gz",
        "displacement.nii.gz",
        "affine.tfm",
        "jacobian.nii.gz",
        "report.json",
    ):
        assert (out / name).is_file(), name
    f = sitk.ReadImage(str(fixed))
    for name in ("warped.nii.gz", "warped_labels.nii.gz", "jacobian.nii.gz", "displacement.nii.gz"):
        img = sitk.ReadImage(str(out / name))
        assert img.GetSize() == f.GetSize(), name
        np.testing.assert_allclose(img.GetSpacing(), f.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(img.GetOrigin(), f.GetOrigin(), atol=1e-3)
    assert sitk.ReadImage(str(out / "displacement.nii.gz")).GetNumberOfComponentsPerPixel() == 3
    sitk.ReadTransform(str(out / "affine.tfm"))
    r = json.loads((out / "report.json").read_text())
    assert r["working_size"] == 32 and r["device"] == "cpu"
    assert set(r["dice_before"]) == set(r["dice_after"]) == {str(k) for k in range(1, 8)}
    # the report's numbers are those of the files written, recounted here
    fixed_lab = sitk.ReadImage(str(data / "labels" / "case_000.nii.gz"))
    ref = sitk.GetArrayFromImage(fixed_lab)
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped_labels.nii.gz")))
    moving_lab = sitk.ReadImage(str(data / "labels" / "case_001.nii.gz"))
    unwarped = sitk.GetArrayFromImage(  # the moving labels overlaid on the fixed grid, no transform
        sitk.Resample(moving_lab, fixed_lab, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )
    for k in range(1, 8):
        assert r["dice_after"][str(k)] == pytest.approx(dice(warped == k, ref == k), abs=1e-6), k
        assert r["dice_before"][str(k)] == pytest.approx(dice(unwarped == k, ref == k), abs=1e-6), k
    assert r["mean_dice_after"] == pytest.approx(np.mean([dice(warped == k, ref == k) for k in range(1, 8)]))
    assert r["mean_dice_after"] != pytest.approx(r["mean_dice_before"])  # the labels did move
    assert f"mean Dice {r['mean_dice_before']:.4f} -> {r['mean_dice_after']:.4f}" in proc.stdout
    jac = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "jacobian.nii.gz")))
    assert r["folding_percent"] == pytest.approx(100.0 * (jac <= 0).mean(), abs=1e-9)
    assert r["jacobian_min"] == pytest.approx(float(jac.min()), rel=1e-6)
    assert r["max_displacement_mm"] > 1.0
    assert set(np.unique(warped)) <= set(range(8))
    assert r["refined"] is None


def test_match_refine_records_the_refinement(data, weights, tmp_path):
    out = tmp_path / "refined"
    fixed, moving = data / "images" / "case_000.nii.gz", data / "images" / "case_001.nii.gz"
    proc = ok(
        gvsl("match", fixed, moving, "--out", out, "--weights", weights / "gvsl.pt", "--size", 32, "--device", "cpu")
    )  # refining is the default
    assert "refinement" in proc.stdout
    r = json.loads((out / "report.json").read_text())
    levels = r["refined"]["levels"]
    assert r["refined"]["stopped"] is False
    # levels end early on convergence: the steps done are what the levels record
    assert 0 < r["refined"]["steps_done"] == sum(lv["steps"] for lv in levels) <= r["refined"]["steps"]
    assert all(0 < lv["steps"] <= lv["planned"] and lv["seconds"] > 0 for lv in levels)
    assert [lv["stage"] for lv in levels][:1] == ["affine"] and levels[-1]["stage"] == "deformable"
    assert r["similarity_grid"] == levels[-1]["shape"]  # the NCCs are measured on the finest level's grid
    assert r["ncc_after"] > r["ncc_network"]
    assert r["refined"]["preset"] == "standard" and r["refined"]["bending"] == 0.0


def test_match_refine_preset_brain_is_recorded_and_a_wrong_one_is_refused(data, weights, tmp_path):
    from models import REFINE_PRESETS

    fixed, moving = data / "images" / "case_000.nii.gz", data / "images" / "case_001.nii.gz"
    args = ("match", fixed, moving, "--weights", weights / "gvsl.pt", "--size", 32, "--device", "cpu")
    ok(gvsl(*args, "--out", tmp_path / "brain", "--refine-preset", "brain"))
    r = json.loads((tmp_path / "brain" / "report.json").read_text())["refined"]
    brain = REFINE_PRESETS["brain"]
    assert r["preset"] == "brain" and r["bending"] == brain.bending and r["lr_side"] == brain.lr_side
    bad = gvsl(*args, "--out", tmp_path / "bad", "--refine-preset", "lung")
    assert bad.returncode != 0 and "invalid choice: 'lung'" in bad.stderr and "standard" in bad.stderr
    # the CLI lists the presets without importing torch: the list must be the engine's
    assert "choose from 'standard', 'brain'" in bad.stderr and list(REFINE_PRESETS) == ["standard", "brain"]


def test_segment_writes_a_label_map_on_the_image_grid_and_a_report(data, weights, tmp_path):
    image = data / "images" / "case_002.nii.gz"
    out = tmp_path / "seg" / "case_002_seg.nii.gz"
    proc = ok(
        gvsl(
            "segment",
            image,
            "--weights",
            weights / "seg.pt",
            "--out",
            out,
            "--reference",
            data / "labels" / "case_002.nii.gz",
            "--device",
            "cpu",
        )
    )
    seg, img = read_labels(out), read_volume(image)
    assert seg.shape == img.shape
    np.testing.assert_allclose(seg.spacing, img.spacing, rtol=1e-5)
    np.testing.assert_allclose(seg.origin, img.origin, atol=1e-3)
    report = json.loads((tmp_path / "seg" / "case_002_seg_report.json").read_text())
    assert set(report["volume_ml"]) == set(report["dice"]) == {str(k) for k in range(1, 8)}
    voxel_ml = float(np.prod(img.spacing)) / 1000
    for k, v in report["volume_ml"].items():
        assert v == pytest.approx(float((seg.array == int(k)).sum()) * voxel_ml, rel=1e-5)
    ref = read_labels(data / "labels" / "case_002.nii.gz").array
    hand = {k: dice(seg.array == k, ref == k) for k in range(1, 8)}
    for k in range(1, 8):
        assert report["dice"][str(k)] == pytest.approx(hand[k], abs=1e-6), k
    assert report["mean_dice"] == pytest.approx(np.mean(list(hand.values())))
    # the table printed names the checkpoint's label and shows the same numbers
    lv = f"{'LV':>18} {report['volume_ml']['1']:9.2f} {report['dice']['1']:7.4f}"
    assert lv in proc.stdout.splitlines(), proc.stdout
    assert f"{'mean Dice':>18} {'':>9} {report['mean_dice']:7.4f}" in proc.stdout.splitlines(), proc.stdout


def test_embed_writes_the_csv_and_a_report(data, weights, tmp_path):
    out = tmp_path / "emb"
    proc = ok(
        gvsl(
            "embed",
            data / "images" / "case_000.nii.gz",
            data / "labels" / "case_000.nii.gz",
            "--out",
            out,
            "--weights",
            weights / "gvsl.pt",
            "--per-label",
            12,
            "--size",
            32,
            "--device",
            "cpu",
        )
    )
    lines = (out / "embedding.csv").read_text().splitlines()
    assert lines[0] == "x,y,label,z_index,y_index,x_index"
    assert len(lines) == 1 + 7 * 12
    rows = np.array([line.split(",") for line in lines[1:]], dtype=float)
    r = json.loads((out / "report.json").read_text())
    assert r["n_points"] == 84
    # the 2D score is that of the points written (coordinates rounded to 5 decimals in the CSV)
    assert r["silhouette_2d"] == pytest.approx(silhouette(rows[:, :2], rows[:, 2].astype(int)), abs=1e-3)
    assert f"silhouette: features {r['silhouette_features']:.4f}, 2D {r['silhouette_2d']:.4f}" in proc.stdout


def _assert_one_line_error(proc, name):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert name in lines[0] and "error" in lines[0]


def test_missing_file_is_a_one_line_error_naming_it(data, weights, tmp_path):
    missing = tmp_path / "no_such_scan.nii.gz"
    proc = gvsl(
        "match",
        data / "images" / "case_000.nii.gz",
        missing,
        "--out",
        tmp_path / "o",
        "--weights",
        weights / "gvsl.pt",
        "--device",
        "cpu",
    )
    _assert_one_line_error(proc, "no_such_scan.nii.gz")
    assert not (tmp_path / "o").exists()


def test_text_file_as_image_is_a_one_line_error_naming_it(weights, tmp_path):
    text = tmp_path / "notes.nii.gz"
    text.write_text("this is not an image\n")
    proc = gvsl("segment", text, "--weights", weights / "seg.pt", "--out", tmp_path / "s.nii.gz", "--device", "cpu")
    _assert_one_line_error(proc, "notes.nii.gz")
    assert not (tmp_path / "s.nii.gz").exists()


def test_outputs_of_an_earlier_call_are_never_mixed_with_new_ones(data, weights, tmp_path):
    fixed, moving = data / "images" / "case_000.nii.gz", data / "images" / "case_001.nii.gz"
    out = tmp_path / "m"
    common = ("--weights", weights / "gvsl.pt", "--size", 32, "--device", "cpu", "--no-refine")
    ok(gvsl("match", fixed, moving, "--out", out, "--moving-labels", data / "labels" / "case_001.nii.gz", *common))
    assert (out / "warped_labels.nii.gz").is_file()
    before = (out / "report.json").read_text()
    proc = gvsl("match", moving, fixed, "--out", out, *common)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{out} is not empty" in proc.stderr and "--overwrite" in proc.stderr
    assert (out / "report.json").read_text() == before  # refused before any work
    (out / "notes.txt").write_text("mine")
    proc = ok(gvsl("match", moving, fixed, "--out", out, "--overwrite", *common))
    assert not (out / "warped_labels.nii.gz").exists()  # the earlier pair's labels are gone ...
    assert (out / "notes.txt").read_text() == "mine"  # ... and nothing that is not ours
    assert json.loads((out / "report.json").read_text())["fixed"].endswith("case_001.nii.gz")
    assert "warped_labels" not in proc.stdout

    seg = tmp_path / "seg.nii.gz"
    seg.write_text("an earlier segmentation")
    proc = gvsl("segment", fixed, "--weights", weights / "seg.pt", "--out", seg, "--device", "cpu")
    assert proc.returncode == 2 and f"{seg} already exists" in proc.stderr
    assert seg.read_text() == "an earlier segmentation"


def test_an_output_path_under_a_file_is_a_clear_error(data, weights, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    fixed, moving = data / "images" / "case_000.nii.gz", data / "images" / "case_001.nii.gz"
    proc = gvsl(
        "match",
        fixed,
        moving,
        "--out",
        blocker / "sub",
        "--weights",
        weights / "gvsl.pt",
        "--size",
        32,
        "--device",
        "cpu",
        "--no-refine",
    )
    assert proc.returncode == 2 and "Errno" not in proc.stderr
    assert f"{blocker} is a file, not a folder" in proc.stderr


# ---------------------------------------------------------------------------- outputs and inputs
# In-process (``gvsl_app.cli.main``) on 32^3 volumes and width-8 networks: these check what the
# commands refuse, keep and write, which needs no fresh interpreter per call.


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


def test_evaluate_labels_lists_every_case_and_every_named_structure(tmp_path, capsys):
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
    assert set(by) == {("a", "LV"), ("a", "RV"), ("empty", "LV"), ("empty", "RV")}
    assert by[("a", "LV")]["dice"] == "1.0"
    assert by[("a", "RV")]["dice"] == "" and "absent from both" in by[("a", "RV")]["note"]

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
    assert sorted(snapshot(out)) == ["images/case_000.nii.gz", "labels/case_000.nii.gz", "notes.txt"]
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
    from test_io_dicom_errors import write_dicom_series

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

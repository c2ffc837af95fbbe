"""The ``gvsl`` command line end to end, in subprocesses, on real files.

Every command starts a fresh Python that imports torch (several seconds on the 2-core
machines), so the data folder is written once per module and each command runs once.
"""

import json
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
from gvsl_app.options import RefinePreset
from models.downstream import SegmentationNet

GVSL_CLI = [sys.executable, "-m", "gvsl_app.cli"]
ROOT = Path(__file__).resolve().parents[3]


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
    assert "choose from 'auto', 'standard', 'brain'" in bad.stderr
    assert ["auto", *REFINE_PRESETS] == list(RefinePreset.values())


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

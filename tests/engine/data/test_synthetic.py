"""Synthetic cardiac phantoms, MNI-template brain subjects, bundled sample pairs."""

from __future__ import annotations

import csv
from functools import cache

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from gvsl_app.data.synthetic import CARDIAC_COLORS, CARDIAC_LABELS, cardiac_dataset, make_cardiac_subject, subject_seed

SHAPE = (48, 48, 48)
CUBE = np.ones((3, 3, 3), dtype=bool)


@cache
def subject(seed, shape=SHAPE, abnormal=False):
    return make_cardiac_subject(seed, shape, abnormal=abnormal)


def physical_centroid(vol, mask):
    idx = np.argwhere(mask).mean(axis=0)
    return (vol.index_to_physical_matrix() @ np.r_[idx, 1.0])[:3]  # (x, y, z) mm


# --------------------------------------------------------------------------- cardiac


def test_label_constants():
    assert CARDIAC_LABELS == {1: "LV", 2: "RV", 3: "LA", 4: "RA", 5: "Myocardium", 6: "Aorta", 7: "Pulmonary artery"}
    assert set(CARDIAC_COLORS) == set(CARDIAC_LABELS)
    rgb = np.array([CARDIAC_COLORS[k] for k in sorted(CARDIAC_COLORS)])
    assert rgb.shape == (7, 3) and rgb.dtype.kind == "i" and rgb.min() >= 0 and rgb.max() <= 255
    # every structure is told apart from the others and from the (black) background
    pairwise = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)[np.triu_indices(7, 1)]
    assert pairwise.min() > 40 and np.linalg.norm(rgb, axis=1).min() > 150
    # a dataset's subjects, and different datasets, never share a subject seed ...
    seeds = [subject_seed(s, i) for s in range(20) for i in range(1000)]
    assert len(set(seeds)) == len(seeds)
    # ... and the seeds are pinned: changing them would change every generated dataset
    assert [subject_seed(0, 0), subject_seed(0, 7), subject_seed(5, 7)] == [0, 7, 500022]


def test_cardiac_deterministic_and_seed_dependent():
    a_img, a_lab = make_cardiac_subject(4, SHAPE)
    b_img, b_lab = make_cardiac_subject(4, SHAPE)
    np.testing.assert_array_equal(a_img.array, b_img.array)
    np.testing.assert_array_equal(a_lab.array, b_lab.array)
    assert a_img.spacing == b_img.spacing and a_img.origin == b_img.origin
    c_img, c_lab = subject(5)
    assert not np.array_equal(a_img.array, c_img.array)
    assert not np.array_equal(a_lab.array, c_lab.array)
    assert a_img.array.dtype == np.int16 and a_lab.array.dtype == np.uint8
    assert a_img.shape == a_lab.shape == SHAPE
    assert a_img.spacing == a_lab.spacing and a_img.origin == a_lab.origin


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_all_structures_present_with_plausible_volumes(seed):
    img, lab = subject(seed)
    l = lab.array
    assert set(np.unique(l)) == set(range(8))
    voxel_ml = float(np.prod(img.spacing)) / 1000.0
    vol = {k: (l == k).sum() * voxel_ml for k in CARDIAC_LABELS}
    for k, v in vol.items():
        assert 3.0 < v < 100.0, (CARDIAC_LABELS[k], v)
    assert vol[5] > 0.8 * vol[1]  # a myocardial shell around the LV cavity
    assert vol[1] > vol[3] and vol[1] > vol[4]  # ventricles bigger than atria
    heart = (l > 0).mean()
    assert 0.05 < heart < 0.5, heart  # heart fills part of the field, not all of it


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_topology(seed):
    img, lab = subject(seed)
    l = lab.array
    lv = l == 1
    ring = ndi.binary_dilation(lv, iterations=2) & ~lv
    assert np.isin(l[ring], [1, 5]).mean() > 0.6  # myocardium wraps the LV (open only at the base)
    assert (l[ring] == 5).mean() > 0.5
    c = {k: physical_centroid(img, l == k) for k in CARDIAC_LABELS}
    for atrium in (3, 4):
        for ventricle in (1, 2):
            assert c[atrium][2] > c[ventricle][2] + 5.0  # atria cranial (+z) to the ventricles
    assert c[2][0] < c[1][0]  # RV on the patient's right (-x in LPS) of the LV
    assert c[3][1] > c[4][1] - 5.0 and c[3][1] > c[1][1]  # LA posterior
    assert (ndi.binary_dilation(l == 6) & lv).sum() > 10  # aorta leaves the LV
    assert (ndi.binary_dilation(l == 7) & (l == 2)).sum() > 3  # pulmonary artery leaves the RV
    # aorta reaches higher than the atria (arch) and the LV stays below
    zs = np.argwhere(l == 6)[:, 0]
    assert (img.index_to_physical_matrix() @ np.r_[zs.max(), 0, 0, 1])[2] > c[3][2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_intensities(seed):
    img, lab = subject(seed)
    a, l = img.array.astype(float), lab.array
    blood = a[ndi.binary_erosion(np.isin(l, [1, 3, 6]))].mean()
    myo = a[ndi.binary_erosion(l == 5)].mean()
    assert 200 < blood < 500, blood
    assert 30 < myo < 160, myo
    assert blood > myo + 120
    assert a.min() >= -1024
    assert (a < -600).mean() > 0.05  # lungs and air
    assert a[l == 0].mean() < blood - 200
    core = ndi.binary_erosion(l == 1, iterations=2)
    assert core.sum() > 20 and 3 < np.std(a[core]) < 60  # noise present, blood pool homogeneous


def test_spacing_anisotropic_varies_and_fov_constant():
    spacings = [subject(s)[0].spacing for s in range(4)]
    for sx, sy, sz in spacings:
        assert sx == pytest.approx(sy) and sz > sx * 1.02  # thicker slices than in-plane
    assert len({round(s[0], 4) for s in spacings}) == 4 and len({round(s[2], 4) for s in spacings}) == 4
    small, _ = subject(1, (24, 24, 24))
    big, _ = subject(1)
    fov_small = np.array(small.spacing) * np.array(small.shape[::-1])
    fov_big = np.array(big.spacing) * np.array(big.shape[::-1])
    np.testing.assert_allclose(fov_small, fov_big, rtol=1e-6)  # shape does not change the field of view
    img, _ = make_cardiac_subject(1, (24, 24, 24), spacing=(2.0, 2.0, 3.0))
    assert img.spacing == (2.0, 2.0, 3.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_abnormal_differs_in_myocardium_only(seed):
    n_img, n_lab = subject(seed)
    a_img, a_lab = subject(seed, abnormal=True)
    assert a_img.meta["abnormal"] and not n_img.meta["abnormal"]
    assert a_img.meta["kind"] in ("lesion", "thickening") and a_img.meta["voxels"] > 20
    changed_lab = a_lab.array != n_lab.array
    assert np.all(a_lab.array[changed_lab] == 5)  # labels change only by growing the myocardium
    diff = a_img.array.astype(int) - n_img.array.astype(int)
    assert np.count_nonzero(diff) > 20
    # blur reaches at most 5 voxels (truncate 4 x sigma <= 1.2); outside, the twins are identical
    near = ndi.binary_dilation(a_lab.array == 5, structure=CUBE, iterations=5)
    assert np.count_nonzero(diff[~near]) == 0
    myo = ndi.binary_erosion(a_lab.array == 5)
    if a_img.meta["kind"] == "lesion":
        assert not changed_lab.any()
        assert diff[myo].min() <= -15 and diff[myo].mean() < 0
    else:
        assert changed_lab.sum() > 10
    assert np.array_equal(n_lab.array == 1, a_lab.array == 1)


def test_both_abnormality_kinds_occur():
    kinds = {subject(s, abnormal=True)[0].meta["kind"] for s in range(4)}
    assert kinds == {"lesion", "thickening"}


def test_cardiac_dataset_files(tmp_path):
    shape = (24, 24, 24)
    out = cardiac_dataset(tmp_path / "ds", 4, seed=3, shape=shape, classification=True)
    assert out == tmp_path / "ds"
    with open(out / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [f"case_{i:03d}" for i in range(4)]
    classes = [int(r["label"]) for r in rows]
    assert sorted(classes) == [0, 0, 1, 1]
    for i, r in enumerate(rows):
        im = sitk.ReadImage(str(out / "images" / f"{r['name']}.nii.gz"))
        lb = sitk.ReadImage(str(out / "labels" / f"{r['name']}.nii.gz"))
        assert im.GetSize() == lb.GetSize() == shape[::-1]
        np.testing.assert_allclose(im.GetSpacing(), lb.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(im.GetOrigin(), lb.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(im.GetDirection(), lb.GetDirection(), atol=1e-6)
        assert lb.GetPixelID() == sitk.sitkUInt8 and im.GetPixelID() == sitk.sitkInt16
        ref_img, ref_lab = make_cardiac_subject(subject_seed(3, i), shape, abnormal=bool(classes[i]))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(im), ref_img.array)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(lb), ref_lab.array)
        np.testing.assert_allclose(im.GetSpacing(), ref_img.spacing, rtol=1e-5)
    plain = cardiac_dataset(tmp_path / "plain", 1, seed=3, shape=shape)
    assert not (plain / "labels.csv").exists() and (plain / "labels" / "case_000.nii.gz").exists()


# --------------------------------------------------------------------------- brain


@pytest.fixture(scope="module")
def brain_mod():
    from gvsl_app.data import brain

    if brain.mni_template_files() is None:
        pytest.importorskip("nilearn")
    return brain


def test_brain_subject(brain_mod):
    assert brain_mod.BRAIN_LABELS == {1: "Grey matter", 2: "White matter", 3: "CSF/other brain"}
    img, lab = brain_mod.make_brain_subject(7, SHAPE)
    img2, lab2 = brain_mod.make_brain_subject(7, SHAPE)
    other, other_lab = brain_mod.make_brain_subject(8, SHAPE)
    np.testing.assert_array_equal(img.array, img2.array)
    np.testing.assert_array_equal(lab.array, lab2.array)
    assert not np.array_equal(img.array, other.array) and not np.array_equal(lab.array, other_lab.array)
    a, l = img.array, lab.array
    assert a.shape == l.shape == SHAPE and a.dtype == np.float32 and l.dtype == np.uint8
    assert set(np.unique(l)) == {0, 1, 2, 3}
    frac = {k: (l == k).mean() for k in range(4)}
    assert 0.2 < frac[0] < 0.9 and frac[1] > 0.05 and frac[2] > 0.05 and frac[3] > 0.005
    assert a.min() >= 0.0 and np.isfinite(a).all()
    gm, wm, csf, bg = (float(np.median(a[l == k])) for k in (1, 2, 3, 0))
    assert wm > gm > csf > bg  # T1-weighted contrast
    assert img.spacing == lab.spacing and img.origin == lab.origin and img.direction == lab.direction
    # the volume sits in MNI space: the brain's physical centroid is near the MNI origin
    assert np.all(np.abs(physical_centroid(lab, l > 0)) < 40.0)


def test_brain_dataset(brain_mod, tmp_path):
    out = brain_mod.brain_dataset(tmp_path / "b", 2, seed=1, shape=(24, 24, 24))
    for i in range(2):
        im = sitk.ReadImage(str(out / "images" / f"case_{i:03d}.nii.gz"))
        lb = sitk.ReadImage(str(out / "labels" / f"case_{i:03d}.nii.gz"))
        assert im.GetSize() == lb.GetSize() == (24, 24, 24)
        np.testing.assert_allclose(im.GetOrigin(), lb.GetOrigin(), atol=1e-4)
        assert set(np.unique(sitk.GetArrayFromImage(lb))) <= {0, 1, 2, 3}
    ref, _ = brain_mod.make_brain_subject(subject_seed(1, 1), (24, 24, 24))
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "images" / "case_001.nii.gz")))
    np.testing.assert_allclose(got, ref.array, rtol=1e-6)


# --------------------------------------------------------------------------- samples


def test_sample_pair_and_write_samples(tmp_path):
    from gvsl_app.data.samples import SAMPLE_PAIR_SEEDS, sample_pair, write_samples

    p = sample_pair("cardiac", (24, 24, 24))
    q = sample_pair("cardiac", (24, 24, 24))
    for key in ("fixed_image", "fixed_labels", "moving_image", "moving_labels"):
        assert p[key].shape == (24, 24, 24)
        np.testing.assert_array_equal(p[key].array, q[key].array)
    p["fixed_image"].array[:] = 0  # callers get copies
    assert sample_pair("cardiac", (24, 24, 24))["fixed_image"].array.any()
    assert not np.array_equal(q["fixed_image"].array, q["moving_image"].array)
    assert p["label_names"] == CARDIAC_LABELS and p["seeds"] == SAMPLE_PAIR_SEEDS["cardiac"]
    ref, _ = make_cardiac_subject(SAMPLE_PAIR_SEEDS["cardiac"][0], (24, 24, 24))
    np.testing.assert_array_equal(q["fixed_image"].array, ref.array)

    out = write_samples("cardiac", tmp_path / "c", n=2, seed=0, classification=True, shape=(16, 16, 16))
    assert (out / "labels.csv").exists() and len(list((out / "images").glob("*.nii.gz"))) == 2
    with pytest.raises(ValueError):
        write_samples("brain", tmp_path / "b", n=1, seed=0, classification=True)
    with pytest.raises(ValueError):
        sample_pair("liver")

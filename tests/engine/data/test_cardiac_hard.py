"""The hard cardiac phantom (#33 item 1, ``synthetic:cardiac-hard``): deterministic per seed, its
labels and structures as documented (docs/guide/data.md), and the ``cardiac`` set untouched.
Small grids (32^3-48^3) keep it fast.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from gvsl_app.data.cardiac_anatomy import MYOCARDIUM
from gvsl_app.data.cardiac_hard import HARD_RANGES, OUTSIDE_FOV_HU, make_cardiac_hard_subject
from gvsl_app.data.synthetic import CARDIAC_LABELS, make_cardiac_subject

SHAPE = (48, 48, 48)
SEEDS = range(6)


@pytest.fixture(scope="module")
def subjects():
    return {s: make_cardiac_hard_subject(s, SHAPE) for s in SEEDS}


def test_a_subject_is_a_deterministic_function_of_its_seed(subjects):
    image, labels = make_cardiac_hard_subject(3, SHAPE)
    np.testing.assert_array_equal(image.array, subjects[3][0].array)
    np.testing.assert_array_equal(labels.array, subjects[3][1].array)
    assert image.meta == subjects[3][0].meta and image.spacing == subjects[3][0].spacing
    assert not np.array_equal(subjects[3][0].array, subjects[4][0].array)
    plain, _ = make_cardiac_subject(3, SHAPE)  # its own streams: not the cardiac subject of the seed
    assert plain.array.shape == image.array.shape and not np.array_equal(plain.array, image.array)


def test_the_cardiac_generator_is_unchanged():
    """Recorded studies stay reproducible: the cardiac subjects hash as before the hard set existed."""
    got = []
    for seed, shape, abnormal, contrast in [(0, 32, False, "ct"), (3, 40, True, "ct"), (5, 32, False, "mr")]:
        image, labels = make_cardiac_subject(seed, (shape,) * 3, abnormal=abnormal, contrast=contrast)
        got.append(hashlib.sha1(image.array.tobytes() + labels.array.tobytes()).hexdigest())
    assert got == [
        "5290a7a0be3e9ee27bac845bbd585c4ec5070ad4",
        "0d0dd538b14d7fe7f4cccfa4c79e9ca6e4825788",
        "00ada05bc8283f3314d31b118fd543199d4562c3",
    ]


def test_labels_are_the_seven_mmwhs_structures_on_the_images_grid(subjects):
    for image, labels in subjects.values():
        assert image.array.dtype == np.int16 and labels.array.dtype == np.uint8
        assert (image.shape, image.spacing, image.origin) == (labels.shape, labels.spacing, labels.origin)
        assert set(np.unique(labels.array)) == {0, *CARDIAC_LABELS}  # every structure is in the field of view
        assert labels.meta["label_names"] == CARDIAC_LABELS


def test_drawn_parameters_lie_in_the_documented_ranges(subjects):
    for image, _ in subjects.values():
        m = image.meta
        inside = lambda key, v: HARD_RANGES[key][0] - 1e-6 <= v <= HARD_RANGES[key][1] + 1e-6  # noqa: E731
        assert inside("rotation_deg", m["rotation_deg"]) and inside("heart_scale", m["heart_scale"])
        assert all(inside("stretch", s) for s in m["stretch"])
        assert inside("myocardium_mm", m["myocardium_mm"] / m["heart_scale"])
        assert inside("noise_hu", m["noise_sigma_hu"]) and inside("blur_voxels", m["blur_sigma_voxels"])
        assert inside("blood_hu", m["hu"]["blood_left"]) and inside("blood_hu", m["hu"]["blood_right"])
        assert len(m["fov_cuts"]) <= 2
    metas = [s[0].meta for s in subjects.values()]
    assert max(m["rotation_deg"] for m in metas) > 15  # beyond the cardiac set's pose range
    # intensity overlap: the right blood pool is the brighter in some subjects, the left in others
    assert {m["hu"]["blood_right"] > m["hu"]["blood_left"] for m in metas} == {True, False}


def test_partial_field_of_view_is_air_and_unlabelled(subjects):
    cut_seen = False
    for image, labels in subjects.values():
        for cut in image.meta["fov_cuts"]:
            cut_seen = True
            axis, n = "zyx".index(cut["axis"]), cut["voxels"]
            index = [slice(None)] * 3
            index[axis] = slice(0, n) if cut["end"] == "low" else slice(SHAPE[axis] - n, None)
            assert (image.array[tuple(index)] == OUTSIDE_FOV_HU).all()
            assert (labels.array[tuple(index)] == 0).all()
    assert cut_seen


def test_thin_myocardium_and_unlabelled_lookalike_vessels(subjects):
    ratio_hard, ratio_plain = [], []
    for seed, (image, labels) in subjects.items():
        lab = labels.array
        ratio_hard.append((lab == MYOCARDIUM).sum() / (lab == 1).sum())
        plain = make_cardiac_subject(seed, SHAPE)[1].array
        ratio_plain.append((plain == MYOCARDIUM).sum() / (plain == 1).sum())
        found = image.meta["lookalike_voxels"]
        assert found["vena_cava"] > 0 and found["pulmonary_vein"] > 0
    # a 3-5 mm wall around the LV against 6.5-9 mm: about half the myocardium per LV volume
    assert np.mean(ratio_hard) < 0.7 * np.mean(ratio_plain)


def test_the_hard_set_is_a_synthetic_source_and_a_sample_kind(tmp_path):
    from gvsl_app.cli import main
    from gvsl_app.data.pair_dataset import PairDataset
    from gvsl_app.io.images import read_labels, read_volume

    pairs = PairDataset("synthetic:cardiac-hard:2", 16, seed=1, augment=False)
    assert pairs.volumes.shape == (2, 1, 16, 16, 16) and pairs.names == ["cardiac-hard_000", "cardiac-hard_001"]
    out = tmp_path / "hard"
    assert main(["sample", "cardiac-hard", "--out", str(out), "--n", "2", "--shape", "24", "--seed", "1"]) == 0
    assert (out / "labels" / "labels.txt").is_file()
    image = read_volume(out / "images" / "case_001.nii.gz")
    expected, _ = make_cardiac_hard_subject(1 * 100003 + 1, (24, 24, 24))
    np.testing.assert_array_equal(image.array, expected.array)
    assert set(np.unique(read_labels(out / "labels" / "case_001.nii.gz", image).array)) <= {0, *CARDIAC_LABELS}

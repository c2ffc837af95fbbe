"""The brain segmenter on whole heads (issue #31 item 7): the brain-mask step, the adult range.

The real head is ITK's ``KmeansTest_T1UCharRaw.nii.gz`` (a T1 scan with skull, scalp, face and
neck, 128 x 128 x 62 voxels of 2 x 2 x 3 mm, coronal) with its reference brain mask
``KmeansTest_T1RawSkullStrip.nii.gz``, from Debian's ``insighttoolkit5-examples`` (installed by
``scripts/install_system_deps.sh``); those tests skip where it is missing. The phantom heads are
``make_brain_subject(..., head=True)``: the MNI brain inside CSF, skull, scalp and a neck.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gvsl_app.services.brain_mask import brain_mask, dark_grey_matter_to_csf
from gvsl_app.services.segment_brain import ADULT_RANGE_ML, volume_flags

pytest.importorskip("nilearn")

ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
REAL_HEAD = ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz"
REAL_BRAIN = ITK_DATA / "KmeansTest_T1RawSkullStrip.nii.gz"
needs_real_head = pytest.mark.skipif(
    not REAL_HEAD.is_file(), reason="Debian's insighttoolkit5-examples is not installed (a real T1 head)"
)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_a_skull_stripped_brain_is_left_whole():
    from gvsl_app.data.brain import make_brain_subject

    image, _ = make_brain_subject(3, (64, 64, 64))
    found = brain_mask(image)
    assert not found.applied and found.mask.all()


def test_the_mask_finds_the_brain_of_a_phantom_head():
    from gvsl_app.data.brain import make_brain_subject

    image, labels = make_brain_subject(1, (96, 96, 96), head=True)
    assert image.meta["head"] is True
    brain = labels.array > 0
    found = brain_mask(image)
    assert found.applied
    assert found.head_ml > 1.4 * found.brain_ml  # skull, scalp and neck removed
    assert _dice(found.mask, brain) > 0.94


def test_volumes_outside_the_adult_range_are_flagged():
    names = {"1": "Grey matter", "2": "White matter", "3": "CSF/other brain"}
    assert volume_flags(names, {"1": 650.0, "2": 500.0, "3": 9999.0}) == {}  # CSF/other has no range
    flags = volume_flags(names, {"1": 2431.0, "2": 300.0, "3": 50.0})
    assert flags["1"] == "Grey matter 2431 mL is outside the healthy adult range 500-800 mL"
    assert set(flags) == {"1", "2"}
    assert ADULT_RANGE_ML["White matter"] == (400.0, 650.0)


def test_dark_grey_matter_becomes_csf():
    rng = np.random.default_rng(0)
    image = np.zeros((20, 20, 20), dtype=np.float32)
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    image[2:18, 2:18, 2:6] = rng.normal(40, 4, (16, 16, 4))  # CSF-dark, called grey matter
    image[2:18, 2:18, 6:12] = rng.normal(75, 4, (16, 16, 6))  # grey matter
    image[2:18, 2:18, 12:18] = rng.normal(100, 4, (16, 16, 6))  # white matter
    labels[2:18, 2:18, 2:12] = 1
    labels[2:18, 2:18, 12:18] = 2
    out, t = dark_grey_matter_to_csf(labels, image, grey=1, csf=3)
    assert 45 < t < 70
    assert (out[2:18, 2:18, 2:6] == 3).mean() > 0.99 and (out[2:18, 2:18, 6:12] == 1).mean() > 0.99
    assert (out[2:18, 2:18, 12:18] == 2).all() and (out[labels == 0] == 0).all()


def test_segmenting_a_phantom_head_keeps_the_scalp_out_of_grey_matter():
    from gvsl_app.data.brain import make_brain_subject
    from gvsl_app.services.segment import segment

    image, labels = make_brain_subject(1, (96, 96, 96), head=True)
    res = segment(image, reference=labels, device="cpu")
    rec = res.record
    assert rec.brain_mask is not None and rec.brain_mask.applied
    ref = rec.reference_volume_ml
    assert ref is not None and rec.dice is not None
    for k in ("1", "2"):  # grey and white matter within 15 % of the phantom's own
        assert abs(rec.volume_ml[k] - ref[k]) < 0.15 * ref[k], (k, rec.volume_ml[k], ref[k])
        assert rec.dice[k] > 0.8, rec.dice
    assert not (res.labels.array[labels.array == 0] == 1).mean() > 0.02  # next to no grey matter outside the brain


@needs_real_head
def test_the_mask_matches_the_real_heads_reference_brain_mask():
    from gvsl_app.io.images import read_volume

    image = read_volume(REAL_HEAD)
    reference = read_volume(REAL_BRAIN).array > 0
    found = brain_mask(image)
    assert found.applied
    assert _dice(found.mask, reference) > 0.93


@needs_real_head
def test_gvsl_segment_on_a_real_head_gives_adult_grey_and_white_matter(tmp_path):
    from gvsl_app.cli import main

    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(REAL_HEAD), "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "seg_report.json").read_text())
    assert report["brain_mask"]["applied"] is True
    assert report["brain_mask"]["grey_to_csf_ml"] > 0
    gm, wm = report["volume_ml"]["1"], report["volume_ml"]["2"]
    lo, hi = ADULT_RANGE_ML["Grey matter"]
    assert lo <= gm <= hi, gm  # 5,887 mL from the network alone (--skull-strip off)
    lo, hi = ADULT_RANGE_ML["White matter"]
    assert lo <= wm <= hi, wm
    assert "volume_flags" not in report


def test_gvsl_segment_on_a_folder_reports_the_brain_steps_per_case(tmp_path, capsys):
    from gvsl_app.cli import main
    from gvsl_app.data.brain import make_brain_subject
    from gvsl_app.io.images import write_volume

    image, _ = make_brain_subject(1, (96, 96, 96), head=True)
    write_volume(image, tmp_path / "in" / "head.nii.gz")
    assert main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    case = report["brain"]["head"]
    assert case["brain_mask"]["applied"] is True
    assert case["volume_flags"]["1"].startswith("Grey matter")  # an MNI-sized brain: above the adult range
    assert "warning: head: Grey matter" in capsys.readouterr().out

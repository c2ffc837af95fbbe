"""The Z-Matching report as the widget shows it, and the messages its errors become."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui


def test_out_of_memory_message_gives_a_hint():
    from napari_plugin._common import describe_error

    msg = describe_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert "out of memory" in msg and "smaller working size" in msg
    assert describe_error(ValueError("fixed.nii.gz: no such file")) == "fixed.nii.gz: no such file"


def test_report_shows_fallbacks_and_modality_warnings_above_the_numbers():
    from napari_plugin._matching import report_html

    rep = {
        "ncc_before": 0.2,
        "ncc_after": 0.2,
        "folding_percent": 0.0,
        "jacobian_min": 1.0,
        "max_displacement_mm": 0.0,
        "seconds": {"total_s": 1.0, "network_s": 0.5},
        "device": "cpu",
        "warnings": ["the moving scan m.nii.gz looks like MR, but these weights were pre-trained on CT only"],
        "fallback": ["the network's map lowered the local NCC (0.2000 -> 0.1000); used the identity instead"],
    }
    text = report_html(rep)
    assert text.index("looks like MR") < text.index("used the identity") < text.index("NCC</b>")
    assert report_html({**rep, "warnings": [], "fallback": []}).count("⚠") == 0


def test_a_structure_in_neither_map_has_no_dice_in_the_report(pair_with_a_missing_structure):
    from napari_plugin._matching import report_html

    rep = pair_with_a_missing_structure
    assert rep["dice_after"]["3"] != rep["dice_after"]["3"]  # NaN: 0/0, not a perfect 1.0
    defined = [v for v in rep["dice_after"].values() if v == v]
    assert rep["mean_dice_after"] == pytest.approx(sum(defined) / len(defined))
    base = {"ncc_before": 0.2, "ncc_after": 0.5, "folding_percent": 0.0, "jacobian_min": 1.0}
    text = report_html({**base, "max_displacement_mm": 1.0, **rep}, {1: "outer", 2: "core", 3: "lesion"})
    assert "Dice lesion</b>&nbsp;</td><td>0.000 → n/a" in text
    assert f"{rep['mean_dice_before']:.4f} → {rep['mean_dice_after']:.4f}" in text


@pytest.fixture()
def pair_with_a_missing_structure():
    """The label part of a matching report where a small structure (label 3) of the moving
    labels is on neither the fixed labels nor the warped ones (warped away)."""
    from gvsl_app.io.volume import Volume
    from gvsl_app.services.matching import _label_overlap

    g = np.meshgrid(*[np.arange(24)] * 3, indexing="ij")
    r2 = sum((gi - 12.0) ** 2 for gi in g)
    lab = (r2 < 64).astype(np.uint8) + (r2 < 16).astype(np.uint8)
    fixed = Volume(np.zeros((24, 24, 24), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), source="f")
    moving = lab.copy()
    moving[2:4, 2:4, 2:4] = 3
    return _label_overlap(fixed.with_array(moving), fixed.with_array(lab), fixed.with_array(lab), fixed)


def test_report_lists_each_refinement_level_with_its_steps_and_seconds():
    from napari_plugin._matching import report_html

    levels = [
        {"stage": "affine", "shape": [20, 24, 20], "steps": 36, "planned": 150, "seconds": 0.14},
        {"stage": "deformable", "shape": [80, 96, 78], "steps": 30, "planned": 30, "seconds": 6.81},
    ]
    rep = {
        "ncc_before": 0.2,
        "ncc_after": 0.5,
        "folding_percent": 0.0,
        "jacobian_min": 1.0,
        "max_displacement_mm": 3.0,
        "seconds": {"total_s": 9.0, "network_s": 0.5, "refine_s": 7.2},
        "refined": {"levels": levels},
    }
    text = report_html(rep)
    assert "refine affine 20×24×20" in text and "36/150 steps, 0.14 s" in text
    assert text.index("refine affine") < text.index("refine deformable 80×96×78") and "30/30 steps, 6.81 s" in text
    assert "refine " not in report_html({**rep, "refined": None})

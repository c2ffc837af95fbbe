"""The Z-Matching report as the widget shows it, and the messages its errors become."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from helpers import match_report  # noqa: E402

pytestmark = pytest.mark.gui


def test_out_of_memory_message_gives_a_hint():
    from napari_plugin._common import describe_error

    msg = describe_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert "out of memory" in msg and "smaller working size" in msg
    assert describe_error(ValueError("fixed.nii.gz: no such file")) == "fixed.nii.gz: no such file"


def test_report_shows_fallbacks_and_modality_warnings_above_the_numbers():
    from napari_plugin._matching import report_html

    rep = match_report(
        warnings=["the moving scan m.nii.gz looks like MR, but these weights were pre-trained on CT only"],
        fallback=["the network's map lowered the local NCC (0.2000 -> 0.1000); used the identity instead"],
    )
    text = report_html(rep)
    assert text.index("looks like MR") < text.index("used the identity") < text.index("NCC</b>")
    assert report_html(match_report()).count("⚠") == 0
    assert "initial alignment</b>&nbsp;</td><td>mass (3°, 5 mm)" in text


def test_the_verdict_leads_the_report_with_its_reasons():
    from gvsl_app.services.match_result import Quality
    from napari_plugin._matching import report_html

    failed = Quality("failed", ["the scans share little once matched"], 0.9, 0.01, 0.02, 0.01)
    text = report_html(match_report(quality=failed))
    assert text.index("match failed") < text.index("NCC</b>") and "the scans share little" in text
    assert "match ok" in report_html(match_report())


def test_a_structure_in_neither_map_has_no_dice_in_thematch_report(pair_with_a_missing_structure):
    from napari_plugin._matching import report_html

    rep = pair_with_a_missing_structure
    assert rep.dice_after["3"] != rep.dice_after["3"]  # NaN: 0/0, not a perfect 1.0
    defined = [v for v in rep.dice_after.values() if v == v]
    assert rep.mean_dice_after == pytest.approx(sum(defined) / len(defined))
    text = report_html(rep, {1: "outer", 2: "core", 3: "lesion"})
    assert "Dice lesion</b>&nbsp;</td><td>0.000 → n/a" in text
    assert f"{rep.mean_dice_before:.4f} → {rep.mean_dice_after:.4f}" in text


@pytest.fixture()
def pair_with_a_missing_structure():
    """A matching report whose labels have a small structure (label 3) of the moving labels
    on neither the fixed labels nor the warped ones (warped away).
    """
    from gvsl_app.io.volume import Volume
    from gvsl_app.services.matching import _add_label_overlap

    g = np.meshgrid(*[np.arange(24)] * 3, indexing="ij")
    r2 = sum((gi - 12.0) ** 2 for gi in g)
    lab = (r2 < 64).astype(np.uint8) + (r2 < 16).astype(np.uint8)
    fixed = Volume(np.zeros((24, 24, 24), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), source="f")
    moving = lab.copy()
    moving[2:4, 2:4, 2:4] = 3
    rep = match_report(ncc_after=0.5, max_displacement_mm=1.0)
    _add_label_overlap(rep, fixed.with_array(moving), fixed.with_array(lab), fixed.with_array(lab), fixed)
    return rep


def test_report_lists_each_refinement_level_with_its_steps_and_seconds():
    from gvsl_app.services.match_result import RefineSummary
    from napari_plugin._matching import report_html

    levels = [
        {"stage": "affine", "shape": [20, 24, 20], "steps": 36, "planned": 150, "seconds": 0.14},
        {"stage": "deformable", "shape": [80, 96, 78], "steps": 30, "planned": 30, "seconds": 6.81},
    ]
    refined = RefineSummary(
        "standard", "chosen from the scans: the fixed scan is not MR", 180, 66, False, 1, levels, {}
    )
    rep = match_report(seconds={"total_s": 9.0, "network_s": 0.5, "refine_s": 7.2}, refined=refined)
    text = report_html(rep)
    assert "refine affine 20×24×20" in text and "36/150 steps, 0.14 s" in text
    assert text.index("refine affine") < text.index("refine deformable 80×96×78") and "30/30 steps, 6.81 s" in text
    assert "standard (chosen from the scans: the fixed scan is not MR)" in text
    assert "refine " not in report_html(match_report(refined=None))


def test_the_report_says_when_only_the_moving_scans_data_was_compared():
    from napari_plugin._matching import report_html

    assert "has data" not in report_html(match_report())
    text = report_html(match_report(overlap_masked=True, moving_data_share=0.42))
    assert "where the moving scan has data (42 % of the fixed grid)" in text

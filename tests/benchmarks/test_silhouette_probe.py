"""The silhouette probe's summary (benchmarks/silhouette_probe.py --summary): per-seed differences
to scratch at one feature level, read from the probe's JSON rows, with their paired statistics.
"""

import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def probe():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))  # the script imports the study package beside it
        import silhouette_probe

        yield silhouette_probe


def _rows(seed: int, knn: dict[str, float], level: str = "up4") -> list[dict]:
    return [
        {"seed": seed, "method": m, "level": level, "subjects": 3, "silhouette_raw": v - 1.0, "knn5": v}
        for m, v in knn.items()
    ]


def test_summary_lists_each_seed_minus_scratch_and_the_paired_statistics(probe):
    rows = _rows(0, {"scratch": 0.70, "gvsl": 0.75, "matching": 0.80})
    rows += _rows(1, {"scratch": 0.72, "gvsl": 0.70, "matching": 0.79})
    rows += _rows(2, {"scratch": 0.68, "gvsl": 0.74})  # matching not probed on seed 2
    rows += _rows(2, {"scratch": 0.10, "gvsl": 0.99}, level="down4")  # another level: ignored
    lines = probe.summary(rows, "knn5", "up4")
    assert lines[0] == "| seed | gvsl − scratch | matching − scratch |"
    assert lines[2:5] == ["| 0 | +0.050 | +0.100 |", "| 1 | -0.020 | +0.070 |", "| 2 | +0.060 | - |"]
    assert lines[5] == "| mean ± std | +0.030 ± 0.044 | +0.085 ± 0.021 |"
    assert lines[6] == "| above scratch | 2/3 | 2/2 |"
    p = [float(x) for x in lines[7].strip("|").split("|")[1:]]
    from scipy import stats

    assert p[0] == pytest.approx(stats.ttest_rel([0.75, 0.70, 0.74], [0.70, 0.72, 0.68]).pvalue, rel=1e-2)
    assert not math.isnan(p[1])


def test_summary_cli_reads_several_probe_files_and_runs_nothing(probe, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_rows(0, {"scratch": 0.7, "gvsl": 0.8})))
    b.write_text(json.dumps(_rows(1, {"scratch": 0.7, "gvsl": 0.6})))
    assert probe.main(["--summary", str(a), str(b), "--study", str(tmp_path / "no-study")]) == 0
    out = capsys.readouterr().out
    assert "5-NN accuracy at up4" in out and "silhouette (raw features) at up4" in out
    assert "| 0 | +0.100 |" in out and "| 1 | -0.100 |" in out and "| above scratch | 1/2 |" in out

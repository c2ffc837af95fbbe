"""The label-efficiency script (benchmarks/label_efficiency.py) at its smoke scale: the plumbing,
results.json's format, the nested training sets and resumption cell by cell. The numbers mean
nothing (16^3, width 4, a few iterations).
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
METHODS = ["scratch", "restoration", "matching", "gvsl", "paper-heads"]


@pytest.fixture(scope="module")
def le():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))  # the study package beside it, as the script sees it
        if "label_efficiency" not in sys.modules:
            spec = importlib.util.spec_from_file_location("label_efficiency", BENCHMARKS / "label_efficiency.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules["label_efficiency"] = mod  # dataclasses look their module up there
            spec.loader.exec_module(mod)
        yield sys.modules["label_efficiency"]


@pytest.fixture(scope="module")
def smoke(le, tmp_path_factory):
    work = tmp_path_factory.mktemp("label_efficiency")
    argv = ["--smoke", "--work", str(work), "--seeds", "0", "--label-counts", "1", "--quiet", "--threads", "1"]
    return le, argv, work, le.main(argv)


def test_results_json_is_tasks_methods_counts_seeds(smoke):
    le, _, work, results = smoke
    assert json.loads((work / "out" / "results.json").read_text()) == results
    assert "GVSL minus" in (work / "out" / "summary.md").read_text()
    assert list(results) == ["tasks", "clusters", "verdict"] and list(results["tasks"]) == ["heart_seg", "brain_seg"]
    assert (work / "out" / "curves.png").stat().st_size > 10_000
    for level in ("decoder-4", "hypercolumn"):  # every method's features embedded before fine-tuning
        for method in METHODS:
            scores = results["clusters"][level][method]
            assert -1.0 <= scores["silhouette"][0] <= 1.0 and 0.0 <= scores["knn5"][0] <= 1.0
    assert any("GVSL - scratch >= 0.05 on every seed" in line for line in results["verdict"])
    for methods in results["tasks"].values():
        assert list(methods) == METHODS
        for per_n in methods.values():
            assert list(per_n) == ["1"] and len(per_n["1"]) == 1
            assert isinstance(per_n["1"][0], float) and 0.0 <= per_n["1"][0] <= 1.0


def test_every_method_starts_from_its_own_pretraining_run_once_per_seed(smoke):
    le, _, work, _ = smoke
    for variant in METHODS[1:]:
        report = json.loads((work / "seed0" / "pretrain" / variant / "report.json").read_text())
        assert report["status"] == "done"
    cells = {m: json.loads(le.cell_path(work, "heart_seg", m, 1, 0).read_text()) for m in METHODS}
    assert cells["scratch"]["init"] == "scratch"
    assert cells["gvsl"]["init"].endswith(str(Path("seed0", "pretrain", "gvsl", "checkpoints", "last.pt")))
    # one labelled subject, the same one for every method; early stopping bounded by the plan's iterations
    assert len({tuple(c["train"]) for c in cells.values()}) == 1 and len(cells["gvsl"]["train"]) == 1
    assert all(c["iterations"] <= le.make_plan(True).max_iters for c in cells.values())


def test_a_second_invocation_runs_only_the_missing_cells(smoke):
    le, argv, work, results = smoke
    gone = le.cell_path(work, "brain_seg", "matching", 1, 0)
    kept = le.cell_path(work, "heart_seg", "gvsl", 1, 0)
    before = kept.stat().st_mtime_ns
    gone.unlink()
    (work / "seed0" / "brain_seg" / "matching" / "n1" / "report.json").unlink()  # as if killed mid-run
    again = le.main(argv)
    assert gone.is_file() and kept.stat().st_mtime_ns == before
    assert again["tasks"]["heart_seg"] == results["tasks"]["heart_seg"]


def test_report_only_trains_nothing_and_reports_the_missing_seed_as_null(smoke):
    le, argv, work, results = smoke
    cells = sorted(p.stat().st_mtime_ns for p in (work / "cells").rglob("*.json"))
    again = le.main([*argv[:-2], "--seeds", "0", "7", "--report-only"])  # seed 7 never ran
    assert sorted(p.stat().st_mtime_ns for p in (work / "cells").rglob("*.json")) == cells
    assert not (work / "seed7").exists()
    heart = again["tasks"]["heart_seg"]["gvsl"]["1"]
    assert heart[0] == results["tasks"]["heart_seg"]["gvsl"]["1"][0] and heart[1] is None
    assert again["clusters"]["hypercolumn"]["gvsl"]["silhouette"][1] is None


def test_a_work_folder_of_another_plan_is_refused(smoke):
    le, argv, work, _ = smoke
    with pytest.raises(SystemExit, match="another plan"):
        le.check_plan(le.make_plan(False, pre_iters=800, max_iters=300, patience=4), work)


def test_smoke_numbers_are_refused_in_docs(le, tmp_path):
    with pytest.raises(SystemExit, match="not written into docs"):
        le.main(["--smoke", "--work", str(tmp_path), "--out", str(ROOT / "docs" / "label_efficiency"), "--quiet"])

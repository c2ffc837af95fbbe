"""Smoke test of the paper-table study (benchmarks/paper_table.py): the plumbing, with a micro budget.

The ``tiny`` budget pre-trains every variant for a few iterations on 16^3 phantoms and runs
all 30 downstream runs for two iterations each; the numbers mean nothing, the structure of
results.json / RESULTS.md and the figures are what is checked.
"""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("heart_seg", "heart_cls", "brain_seg")
MODES = ("linear", "finetune")
METHODS = ("scratch", "restoration", "matching", "no-affine", "gvsl", "paper-heads")
BENCHMARKS = ROOT / "benchmarks"


def _load():
    if "paper_table" in sys.modules:
        return sys.modules["paper_table"]
    spec = importlib.util.spec_from_file_location("paper_table", BENCHMARKS / "paper_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["paper_table"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pt():
    # paper_table.py imports the study package beside it as a script does, from its own folder
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))
        yield _load()


@pytest.fixture(scope="module")
def study(pt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper_table")
    work, out = tmp / "work", tmp / "out"
    argv = ["--budget", "tiny", "--work", str(work), "--out", str(out), "--quiet"]
    results = pt.main(argv)
    return pt, argv, work, out, results


def test_results_json_structure(study):
    pt, _, _, out, results = study
    on_disk = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert on_disk == results
    for task in TASKS:
        assert set(results[task]) == set(MODES)
        for mode in MODES:
            assert set(results[task][mode]) == set(METHODS)
            for method, v in results[task][mode].items():
                assert v is None or (isinstance(v, float) and 0.0 <= v <= 1.0), (task, mode, method, v)
            if task != "heart_cls":  # Dice is always defined; an AUC may be NaN (null) on a one-class test split
                assert all(v is not None for v in results[task][mode].values())
    assert set(results["silhouette"]) == set(METHODS)
    assert all(v is None or -1.0 <= v <= 1.0 for v in results["silhouette"].values())
    meta = results["meta"]
    assert meta["budget"] == "tiny" and meta["smoke"] is True and meta["seeds"] == [0]
    assert meta["wall_s"]["total"] > 0 and "data" in meta["wall_s"]
    assert "paper_table.py --budget tiny" in meta["command"]
    assert {r["variant"] for r in meta["pretrain_diagnostics"]} == set(METHODS) - {"scratch"}
    paired = meta["paired_gvsl_minus"]["heart_seg"]["linear"]
    assert set(paired) == set(METHODS) - {"gvsl"} and all(p["n"] == 1 for p in paired.values())


def test_results_md_and_figures(study):
    from study.plan import METHOD_TITLES

    _, _, _, out, _ = study
    md = (out / "RESULTS.md").read_text(encoding="utf-8")
    assert "SMOKE OUTPUT" in md
    assert "| Pre-training | a) linear" in md and "b) fine-tune" in md
    for title in METHOD_TITLES.values():
        assert f"| {title} |" in md
    assert "(+" in md or "(-" in md  # differences to scratch
    assert "## GVSL against each row, seed by seed" in md
    assert "Discussion" in md and "| **total** |" in md and "python benchmarks/paper_table.py" in md
    for name in [f"tsne_{m}.png" for m in METHODS] + ["fig7_tsne.png"]:
        png = out / "figures" / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"figures/{name}" in md


def test_rerun_reuses_runs(study):
    pt, argv, work, out, first = study
    again = pt.main(argv + ["--no-estimate"])
    assert again["meta"]["runs_reused"] == 5 + 36
    for task in TASKS:
        assert again[task] == first[task]


def test_refusals(study, tmp_path):
    pt = study[0]
    with pytest.raises(SystemExit, match="smoke"):
        pt.main(["--budget", "tiny", "--out", str(ROOT / "docs"), "--work", str(tmp_path), "--quiet"])
    with pytest.raises(SystemExit, match="overlap"):
        pt.main(["--budget", "tiny", "--seeds", "9001", "--work", str(tmp_path), "--out", str(tmp_path), "--quiet"])
    assert not any(tmp_path.iterdir())


def test_each_budget_writes_its_own_docs_folder_so_none_overwrites_anothers_results(pt, tmp_path):
    outs = {name: pt.default_out(name, tmp_path) for name in ("tiny", "small", "medium", "gpu", "paper")}
    assert outs["tiny"] == tmp_path / "out"
    assert outs["small"] == ROOT / "docs" / "results" / "study_small"
    assert outs["medium"] == ROOT / "docs" / "results" / "study_medium"
    assert len(set(outs.values())) == len(outs)


def test_summary_helpers(pt):
    from study.report import _cell, _nan_to_none
    from study.stats import mean_std

    mean, std, n = mean_std([0.5, float("nan"), 0.7])
    assert n == 2 and math.isclose(mean, 0.6) and std > 0
    assert _cell(0.512, 0.0, 1, 0.432, False, False) == "0.512 (+0.080)"
    assert _cell(float("nan"), 0.0, 0, 0.4, False, False) == "n/a"
    assert _nan_to_none({"a": [float("nan"), 1.0]}) == {"a": [None, 1.0]}


def test_budgets_pass_their_pretraining_schedule_to_the_engine(pt, tmp_path):
    from study import plan, runs

    medium = plan.BUDGETS["medium"]
    cfg = runs.pretrain_config(medium, "gvsl", 0, tmp_path / "run", "cpu")
    assert (cfg.iters, cfg.decay_start, cfg.lr) == (3000, 1500, 1e-3)
    # the budgets without a decay keep the constant rate they were measured with
    assert runs.pretrain_config(plan.BUDGETS["small"], "gvsl", 0, tmp_path / "s", "cpu").decay_start == 0


def test_paper_heads_row_pretrains_gvsl_with_the_papers_heads(pt, tmp_path):
    from study import plan, runs

    small = plan.BUDGETS["small"]
    cfg = runs.pretrain_config(small, "paper-heads", 0, tmp_path / "p", "cpu")
    assert (cfg.variant, cfg.affine_head, cfg.deformable_head) == ("gvsl", "paper", "paper")
    default = runs.pretrain_config(small, "gvsl", 0, tmp_path / "g", "cpu")
    assert (default.affine_head, default.deformable_head) != ("paper", "paper")


def test_paired_differences_per_seed(pt):
    from study.paired import paired
    from study.stats import Measurements

    per_seed = Measurements().per_seed
    col = per_seed["heart_seg"]["linear"]
    col["gvsl"].update({0: 0.60, 1: 0.50, 2: 0.70})
    col["scratch"].update({0: 0.40, 1: 0.55, 2: 0.30})  # GVSL ahead on seeds 0 and 2, behind on 1
    col["restoration"].update({0: 0.50, 2: float("nan")})  # only seed 0 is comparable
    p = paired(per_seed, [0, 1, 2])["heart_seg"]["linear"]
    assert p["scratch"]["diffs"] == pytest.approx([0.20, -0.05, 0.40])
    assert p["scratch"]["wins"] == 2 and p["scratch"]["n"] == 3
    assert p["scratch"]["mean"] == pytest.approx(0.55 / 3)
    assert p["restoration"]["n"] == 1 and p["restoration"]["std"] == 0.0
    assert p["matching"]["n"] == 0 and math.isnan(p["matching"]["mean"])
    # the p-value is scipy's paired t-test on the same seeds; none where fewer than two compare
    from scipy import stats

    gvsl, scratch = [0.60, 0.50, 0.70], [0.40, 0.55, 0.30]
    assert p["scratch"]["p"] == pytest.approx(stats.ttest_rel(gvsl, scratch).pvalue)
    assert math.isnan(p["restoration"]["p"]) and math.isnan(p["matching"]["p"])
    # the only finite p is the only comparison Holm counts, so it is left as it is
    assert p["scratch"]["p_holm"] == pytest.approx(p["scratch"]["p"])


def test_holm_adjusts_the_k_th_smallest_p_by_m_minus_k_plus_1_and_keeps_the_order(pt):
    from study.paired import add_holm, holm

    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> non-decreasing 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adj = holm([0.2, float("nan"), 0.001])  # NaN is neither adjusted nor counted
    assert adj[0] == pytest.approx(0.2) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.002)
    assert holm([0.6, 0.9]) == [1.0, 1.0]
    nested = {"a": {"x": {"diffs": [1.0], "p": 0.01}}, "b": {"diffs": [1.0], "p": 0.02}}
    assert add_holm(nested) == 2
    assert nested["a"]["x"]["p_holm"] == pytest.approx(0.02) and nested["b"]["p_holm"] == pytest.approx(0.02)


def test_paired_table_names_the_cells_holms_correction_keeps(pt):
    from study.paired import md_paired, paired
    from study.plan import METHODS
    from study.stats import Measurements

    seeds = list(range(6))
    per_seed = Measurements().per_seed
    col = per_seed["heart_seg"]["linear"]
    col["gvsl"].update({s: 0.5 for s in seeds})
    col["scratch"].update({s: 0.1 + 0.012 * s for s in seeds})  # far behind on every seed: survives
    lean = [0.1, -0.01, 0.08, 0.03, 0.09, 0.02]  # GVSL ahead on 5 of 6, raw p = 0.036
    for other in ("restoration", "matching", "no-affine", "paper-heads"):
        col[other].update({s: 0.5 - lean[s] for s in seeds})
    sil = {m: {s: -0.05 for s in seeds} for m in METHODS}
    pair = paired(per_seed, seeds, sil)
    rest = pair["heart_seg"]["linear"]["restoration"]
    assert rest["p"] < 0.05 <= rest["p_holm"]  # four such leans: the smallest is multiplied by 4
    assert set(pair["silhouette"]) == set(METHODS) - {"gvsl"}
    holm_line = next(x for x in md_paired(pair) if x.startswith("Holm's correction"))
    assert "over the table's 5 comparisons" in holm_line  # equal silhouettes have no spread, so no p
    assert "Scratch on linear SHC-syn" in holm_line and "restoration only) on" not in holm_line


def test_seeds_for_p_is_the_first_count_below_alpha(pt):
    from study.paired import paired_t_p, seeds_for_p

    n = seeds_for_p(0.10, 0.10)
    assert n is not None and paired_t_p(0.10, 0.10, n) < 0.05 <= paired_t_p(0.10, 0.10, n - 1)
    assert seeds_for_p(0.10, 0.02) < n  # a tighter spread needs fewer seeds
    assert seeds_for_p(0.001, 1.0, most=50) is None  # a tiny effect in a wide spread never separates


def test_runs_side_by_side_finish_every_run_and_raise_a_failure(pt, tmp_path):
    import dataclasses

    from study import plan, runs
    from study.timing import Clock

    tiny = plan.BUDGETS["tiny"]
    jobs = [
        ("pretrain", runs.pretrain_config(tiny, v, 0, tmp_path / v, "cpu"), v) for v in ("restoration", "paper-heads")
    ]
    runs.run_jobs_side_by_side(jobs, 2, Clock(quiet=True))
    for v in ("restoration", "paper-heads"):
        report = json.loads((tmp_path / v / "report.json").read_text())
        assert report["status"] == "done" and (tmp_path / v / "checkpoints" / "last.pt").is_file()
    bad = dataclasses.replace(jobs[0][1], run=str(tmp_path / "bad"), data=str(tmp_path / "missing"))
    with pytest.raises(Exception, match="missing"):
        runs.run_jobs_side_by_side([("pretrain", bad, "bad")], 2, Clock(quiet=True))


def test_a_run_made_with_a_relative_work_folder_is_reused_with_an_absolute_one(pt, tmp_path, monkeypatch):
    import dataclasses

    import yaml

    from study import plan, runs

    monkeypatch.chdir(tmp_path)
    tiny = plan.BUDGETS["tiny"]
    rel = runs.pretrain_config(tiny, "gvsl", 0, Path("work") / "gvsl", "cpu")
    (tmp_path / "work" / "gvsl").mkdir(parents=True)
    (tmp_path / "work" / "gvsl" / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(rel)))
    absolute = runs.pretrain_config(tiny, "gvsl", 0, tmp_path / "work" / "gvsl", "cpu")
    assert runs._same_config(tmp_path / "work" / "gvsl", absolute)
    other = runs.pretrain_config(tiny, "gvsl", 0, tmp_path / "elsewhere", "cpu")
    assert not runs._same_config(tmp_path / "work" / "gvsl", other)


def test_finetune_probe_reruns_the_studys_finetune_at_other_lengths_and_rates(study, tmp_path):
    import argparse

    import yaml

    spec = importlib.util.spec_from_file_location("finetune_probe", BENCHMARKS / "finetune_probe.py")
    fp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fp)
    _, _, work, _, _ = study
    out = tmp_path / "probe.json"
    argv = ["--study", str(work), "--budget", "tiny", "--seeds", "0", "--methods", "scratch", "gvsl"]
    argv += ["--settings", "3:1e-3", "6:1e-4", "--json", str(out)]
    assert fp.main(argv) == 0
    data = json.loads(out.read_text())
    runs = {(r["setting"], r["method"]): r["test_dice"] for r in data["runs"]}
    assert set(runs) == {(s, m) for s in ("3:0.001", "6:0.0001") for m in ("scratch", "gvsl")}
    assert all(0.0 <= v <= 1.0 for v in runs.values())
    gvsl_rows = [r for r in data["summary"] if r["method"] == "gvsl"]
    assert [r["diff"] for r in gvsl_rows] == pytest.approx(
        [runs[(s, "gvsl")] - runs[(s, "scratch")] for s in ("3:0.001", "6:0.0001")]
    )
    run = work / "seed0" / "probe_finetune" / "6-0.0001" / "gvsl"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["iters"] == 6 and cfg["lr"] == pytest.approx(1e-4) and cfg["task"] == "seg" and not cfg["linear"]
    assert cfg["init"] == str(work / "seed0" / "pretrain" / "gvsl" / "checkpoints" / "last.pt")
    before = (run / "report.json").stat().st_mtime_ns
    fp.main(argv)  # a finished run is reused, not trained again
    assert (run / "report.json").stat().st_mtime_ns == before
    for bad in ("1000", "0:1e-3", "10:-1", "x:y"):
        with pytest.raises(argparse.ArgumentTypeError):
            fp.parse_setting(bad)
    with pytest.raises(SystemExit, match="no study data"):
        fp.main(["--study", str(tmp_path / "none"), "--budget", "tiny", "--seeds", "0"])


def test_from_record_adds_new_seeds_to_the_recorded_ones_without_running_them(study, tmp_path):
    pt, _, work, out, first = study
    record = tmp_path / "seed0.json"
    record.write_text((out / "results.json").read_text(encoding="utf-8"), encoding="utf-8")
    out2 = tmp_path / "out2"
    argv = ["--budget", "tiny", "--seeds", "0", "1", "--work", str(work), "--out", str(out2), "--quiet"]
    merged = pt.main(argv + ["--from-record", str(record), "--no-estimate"])
    meta = merged["meta"]
    assert meta["seeds"] == [0, 1] and [r["seeds"] for r in meta["from_record"]] == [[0]] and meta["tsne_seed"] == 1
    # seed 0's finished runs lie in the same work folder: had it been run again they would count as reused
    assert meta["runs_reused"] == 0
    old = first["meta"]["per_seed"]
    for task in TASKS:
        for mode in MODES:
            for method in METHODS:
                values = meta["per_seed"][task][mode][method]
                assert values["0"] == old[task][mode][method]["0"], (task, mode, method)
                assert "1" in values
    assert {r["seed"] for r in meta["pretrain_diagnostics"]} == {0, 1}
    md = (out2 / "RESULTS.md").read_text(encoding="utf-8")
    assert "Seed 0 was not run by this command" in md and first["meta"]["command"] in md
    assert "seed 1." in md  # the t-SNE is of the seed that was run

    # two records of separate invocations: seed 0 from the first (though the second holds it too),
    # seed 1 from the second, only seed 2 is run
    record2 = tmp_path / "seeds01.json"
    record2.write_text((out2 / "results.json").read_text(encoding="utf-8"), encoding="utf-8")
    argv3 = ["--budget", "tiny", "--seeds", "0", "1", "2", "--work", str(work), "--out", str(tmp_path / "out3")]
    three = pt.main(argv3 + ["--quiet", "--no-estimate", "--from-record", str(record), str(record2)])["meta"]
    assert [(r["path"], r["seeds"]) for r in three["from_record"]] == [(str(record), [0]), (str(record2), [1])]
    assert three["runs_reused"] == 0 and three["tsne_seed"] == 2
    assert three["per_seed"]["heart_seg"]["linear"]["gvsl"]["1"] == meta["per_seed"]["heart_seg"]["linear"]["gvsl"]["1"]
    assert {r["seed"] for r in three["pretrain_diagnostics"]} == {0, 1, 2}
    md3 = (tmp_path / "out3" / "RESULTS.md").read_text(encoding="utf-8")
    assert "Seed 0 was not run" in md3 and "Seed 1 was not run" in md3 and md3.count("the other seeds were run") == 1
    with pytest.raises(SystemExit, match="holds none of the asked seeds"):
        pt.main(argv3 + ["--quiet", "--from-record", str(record), str(record)])  # the same file twice

    with pytest.raises(SystemExit, match="nothing to run"):
        pt.main(["--budget", "tiny", "--seeds", "0", "--work", str(work), "--out", str(out2), "--quiet",
                 "--from-record", str(record)])  # fmt: skip
    other = json.loads(record.read_text(encoding="utf-8"))
    other["meta"]["budget_config"]["pre_iters"] += 1
    record.write_text(json.dumps(other), encoding="utf-8")
    with pytest.raises(SystemExit, match=r"another budget \(pre_iters"):
        pt.main(argv + ["--from-record", str(record)])
    with pytest.raises(SystemExit, match="not a readable"):
        pt.main(argv + ["--from-record", str(tmp_path / "missing.json")])


def test_issue_check_says_against_which_row_gvsl_is_clearly_ahead(pt):
    from study.discussion import discussion
    from study.paired import paired
    from study.plan import METHODS, MODES, TASKS
    from study.stats import Measurements

    mean = {t: {m: {k: 0.1 for k in METHODS} for m in MODES} for t in TASKS}
    spread = {t: {m: {k: {"std": 0.05, "n": 3} for k in METHODS} for m in MODES} for t in TASKS}
    mean["heart_seg"]["linear"].update(gvsl=0.30, scratch=0.10, restoration=0.27)
    per_seed = Measurements().per_seed
    col = per_seed["heart_seg"]["linear"]
    col["gvsl"].update({0: 0.30, 1: 0.35, 2: 0.25})
    col["scratch"].update({0: 0.10, 1: 0.12, 2: 0.08})  # ahead on every seed, by far more than the spread
    col["restoration"].update({0: 0.20, 1: 0.36, 2: 0.24})  # behind on seed 1: a lean, not clear
    pair = paired(per_seed, [0, 1, 2])

    def check(m: dict, pair: dict | None) -> str:
        return next(x for x in discussion(m, spread, {}, True, pair) if "Check of issue" in x)

    line = check(mean, pair)
    assert "mean beats both" in line and "ahead on every seed): scratch;" in line
    assert f"scratch p {pair['heart_seg']['linear']['scratch']['p']:.3g} (Holm " in line
    assert check(mean, None).endswith("neither.")
    mean["heart_seg"]["linear"]["restoration"] = 0.35
    assert "does NOT beat" in check(mean, pair)

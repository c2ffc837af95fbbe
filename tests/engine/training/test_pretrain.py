"""Pre-training runs: learns, resumes exactly, survives SIGKILL and signals, runs under DDP;
options and CLI refusals of the training configs.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from gvsl_app.data.datasets import PairDataset, validation_pair
from gvsl_app.training.config import FinetuneConfig, PretrainConfig
from gvsl_app.training.pretrain import DECAY_FLOOR, build_model, lr_factor, pretrain, validate
from gvsl_app.training.progress import StopFlag
from gvsl_app.training.runs import RunFolder, read_metrics
from models.checkpoint import read_checkpoint

from helpers import GVSL, ROOT, drain, small, torchrun


def test_pretraining_lowers_ncc_on_a_fixed_pair_and_writes_the_run_folder(tmp_path):
    cfg = small(tmp_path / "run", iters=30, lr=2e-3, val_every=30, ckpt_every=10)
    pair = validation_pair(PairDataset(cfg.data, cfg.size, seed=cfg.seed, n_synthetic=cfg.n_synthetic))
    torch.manual_seed(cfg.seed)
    before = validate(build_model(cfg), cfg, pair)
    last = drain(pretrain(cfg))
    assert last.phase == "done"
    run = RunFolder(cfg.run)
    ck = run.load_checkpoint("last")
    model = build_model(cfg)
    model.load_state_dict(ck["model"])
    after = validate(model, cfg, pair)
    assert after["ncc"] < before["ncc"] - 0.01, (before, after)
    assert run.config_path.is_file() and run.best.is_file() and run.report_path.is_file()
    rows = [r for r in read_metrics(run.metrics_path) if "event" not in r]
    assert [r["iteration"] for r in rows] == list(range(1, 31))
    for key in ("ncc", "smooth", "mse", "loss", "lr", "sec_per_step", "samples_per_s", "data_wait_s"):
        assert key in rows[0]
    assert json.loads(run.report_path.read_text())["status"] == "done"


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    drain(pretrain(small(tmp_path / "full")))
    stop = StopFlag()
    last = drain(pretrain(small(tmp_path / "part"), stop), stop=stop, stop_at=3)
    assert last.phase == "stopped" and last.iteration == 3
    assert read_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["iteration"] == 3
    drain(pretrain(small(tmp_path / "part", resume=True)))
    a = read_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = read_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert b["iteration"] == 6
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    its = [r["iteration"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl") if "event" not in r]
    assert its == list(range(1, 7))


def test_learning_rate_decays_along_a_half_cosine_from_decay_start(tmp_path):
    cfg = small(tmp_path / "run", iters=8, decay_start=3, lr=1e-3)
    drain(pretrain(cfg))
    rates = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "event" not in r]
    # each row holds the rate its step used: lr * factor(iteration - 1), steps counted from 0
    assert rates == pytest.approx([1e-3 * lr_factor(cfg, i) for i in range(0, 8)])
    assert rates[:4] == pytest.approx([1e-3] * 4) and all(a > b for a, b in zip(rates[3:8], rates[4:8]))
    assert lr_factor(cfg, cfg.iters - 1) == pytest.approx(DECAY_FLOOR)
    with pytest.raises(ValueError, match="decay_start"):
        small(tmp_path / "bad", iters=8, decay_start=8)


def test_variants_train(tmp_path):
    for variant in ("restoration", "matching", "no-affine"):
        last = drain(pretrain(small(tmp_path / variant, variant=variant, iters=2, val_every=2)))
        assert last.phase == "done", variant
        rows = [r for r in read_metrics(tmp_path / variant / "metrics.jsonl") if "event" not in r]
        assert ("ncc" in rows[0]) == (variant != "restoration")
        assert ("mse" in rows[0]) == (variant != "matching")


def test_clean_matching_input_matches_the_clean_scans_and_restores_the_transformed_one(tmp_path):
    from gvsl_app.training.pretrain import PretrainObjective

    torch.manual_seed(0)
    moving, fixed = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    a, b = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)  # two corruptions of the moving scan
    for match_input in ("clean", "transformed"):
        cfg = small(tmp_path / match_input, match_input=match_input)
        torch.manual_seed(0)
        objective = PretrainObjective(build_model(cfg), cfg).eval()
        with torch.no_grad():
            objective.model.restoration_head.layers[-1].weight.normal_(0, 0.1)  # it starts at a constant 0
            ta, tb = objective(moving, fixed, a), objective(moving, fixed, b)
        assert not torch.isclose(ta["mse"], tb["mse"])  # restoration always sees the corrupted scan
        same_match = bool(torch.isclose(ta["ncc"], tb["ncc"]))
        assert same_match == (match_input == "clean"), match_input


def test_snapshots_keep_loadable_weights_of_every_nth_iteration_with_the_chosen_heads(tmp_path):
    from gvsl_app.services.weights import load_gvsl

    cfg = small(tmp_path / "snap", iters=4, snapshot_every=2, val_every=4, affine_head="paper")
    assert drain(pretrain(cfg)).phase == "done"
    snaps = RunFolder(cfg.run).snapshots()
    assert [i for i, _ in snaps] == [2, 4]
    model, _ = load_gvsl(snaps[-1][1])
    assert model.config()["affine_head"] == "paper" and model.config()["deformable_head"] == "pyramid"
    assert model.trained_modalities == frozenset({"ct"})
    last = read_checkpoint(tmp_path / "snap" / "checkpoints" / "last.pt")["model"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, last[k], msg=k)  # the iteration-4 snapshot is the final model
    assert "optimizer" not in read_checkpoint(snaps[0][1])


def test_affine_warmup_matches_without_displacement_first(tmp_path):
    cfg = small(tmp_path / "warm", iters=4, affine_warmup=2, val_every=4, lr=1e-2)
    assert drain(pretrain(cfg)).phase == "done"
    rows = [r for r in read_metrics(tmp_path / "warm" / "metrics.jsonl") if "event" not in r]
    smooth = [r["smooth"] for r in rows]
    assert smooth[:2] == [0.0, 0.0] and min(smooth[2:]) > 0, smooth


def test_sigkill_while_checkpointing_leaves_a_loadable_last(tmp_path):
    run = tmp_path / "killed"
    cmd = GVSL + [
        "pretrain",
        "--data",
        "synthetic:cardiac",
        "--n-synthetic",
        "3",
        "--run",
        str(run),
        "--iters",
        "1000",
        "--size",
        "24",
        "--width",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--quiet",
    ]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ckpt_every: 1\nval_every: 1000\nlog_every: 1\n")
    proc = subprocess.Popen(
        cmd + ["--config", str(cfg)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert last.exists(), "no checkpoint written"
    time.sleep(1.0)  # several more atomic rewrites of last.pt happen in this second
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = read_checkpoint(last)
    assert ck["iteration"] >= 1 and "model" in ck and "optimizer" in ck
    # and the run resumes from it
    cfg.write_text("ckpt_every: 1\nval_every: 1000\nlog_every: 1\n")
    subprocess.run(
        GVSL
        + [
            "pretrain",
            "--run",
            str(run),
            "--data",
            "synthetic:cardiac",
            "--n-synthetic",
            "3",
            "--size",
            "24",
            "--width",
            "4",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--quiet",
            "--iters",
            str(ck["iteration"] + 1),
            "--resume",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert read_checkpoint(last)["iteration"] == ck["iteration"] + 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_process_group_stops_cleanly_with_a_checkpoint(tmp_path, sig):
    """Ctrl-C in a terminal signals the whole process group, DataLoader workers included."""
    run = tmp_path / "term"
    proc = subprocess.Popen(
        GVSL
        + [
            "pretrain",
            "--data",
            "synthetic:cardiac",
            "--n-synthetic",
            "3",
            "--run",
            str(run),
            "--iters",
            "1000",
            "--size",
            "24",
            "--width",
            "4",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--quiet",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 2) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "stopped"
    assert report["best"] is None or Path(report["best"]).is_file()  # never names a file that is not there
    assert read_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == report["iteration"] >= 2


def test_two_process_gloo_ddp_keeps_replicas_identical(tmp_path):
    run = tmp_path / "ddp"
    proc = torchrun(
        ["-m", "gvsl_app.cli", "pretrain", "--data", "synthetic:cardiac", "--n-synthetic", "4", "--run-dir", str(run)]
        + ["--iters", "3", "--size", "24", "--width", "4", "--workers", "0", "--device", "cpu", "--quiet"]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((run / "report.json").read_text())
    assert report["world_size"] == 2 and report["status"] == "done"
    a, b = report["replica_checksums"]  # one per rank, computed on each
    assert a == pytest.approx(b, rel=1e-9) and report["replicas_in_sync"] is True
    single = read_checkpoint(run / "checkpoints" / "last.pt")
    assert single["iteration"] == 3


def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    script = tmp_path / "nan_on_rank1.py"
    script.write_text(f"""
import os, sys, torch
from gvsl_app.training import pretrain as P
from gvsl_app.training.config import PretrainConfig
real = P.PretrainObjective.forward
def forward(self, *a, **k):
    terms = real(self, *a, **k)
    if os.environ["RANK"] == "1":  # only rank 1 diverges
        terms["loss"] = terms["loss"] * float("nan")
    return terms
P.PretrainObjective.forward = forward
cfg = PretrainConfig(data="synthetic:cardiac", n_synthetic=4, run={str(tmp_path / "nan")!r}, iters=50, size=24,
                     width=4, workers=0, device="cpu", log_every=1, ckpt_every=1, val_every=50)
last = [p for p in P.pretrain(cfg)][-1]
# one write() of one line: under torchrun both ranks share the pipe, unbuffered, and print()'s
# separate pieces interleaved ("RANKRANK  01  errorerror  11") about once in ten loaded runs
os.write(1, f"RANK {{os.environ['RANK']}} {{last.phase}} {{last.iteration}}\\n".encode())
""")
    proc = torchrun([str(script)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = sorted(l for l in proc.stdout.splitlines() if l.startswith("RANK"))
    assert lines == ["RANK 0 error 1", "RANK 1 error 1"], proc.stdout


@pytest.mark.parametrize(
    "cls, options, culprit",
    [
        (PretrainConfig, {"val_every": 0}, "val_every must be > 0"),
        (PretrainConfig, {"ckpt_every": 0}, "ckpt_every must be > 0"),
        (PretrainConfig, {"iters": "ten"}, "iters: expected a whole number, got 'ten'"),
        (PretrainConfig, {"amp": "false"}, "amp: expected true or false, got 'false'"),
        (PretrainConfig, {"batch": True}, "batch: expected a whole number"),
        (PretrainConfig, {"lr": 0.0}, "lr must be > 0"),
        (PretrainConfig, {"n_synthetic": 1}, "n_synthetic must be >= 2"),
        (PretrainConfig, {"workers": -1}, "workers must be >= 0"),
        (FinetuneConfig, {"iters": 0}, "iters must be > 0"),
        (FinetuneConfig, {"iters": -2}, "iters must be > 0"),
        (FinetuneConfig, {"n_train": -1}, "n_train must be >= 0"),
        (FinetuneConfig, {"val_fraction": 1.5}, "val_fraction must lie between 0 and 1"),
    ],
)
def test_options_out_of_range_or_of_the_wrong_type_are_refused_by_name(cls, options, culprit):
    with pytest.raises(ValueError, match=culprit):
        cls(**options)


def test_cli_refuses_bad_yaml_and_bad_options_without_a_traceback(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("iters: [1, 2\n")
    typed = tmp_path / "typed.yaml"
    typed.write_text("amp: 'false'\n")
    for args, culprit in (
        ([f"--config={bad_yaml}"], "not valid YAML"),
        ([f"--config={typed}"], "option amp"),
        (["--val-every", "0"], "val_every must be > 0"),
    ):
        run = tmp_path / f"r{len(culprit)}"
        cmd = (
            ["finetune", "--data", str(tmp_path), "--run", str(run)]
            if args[0] == "--val-every"
            else ["pretrain", "--run", str(run), "--device", "cpu"]
        )
        proc = subprocess.run(GVSL + cmd + args, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and culprit in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not run.exists()  # refused before the run folder was touched


def test_a_run_folder_rank_0_refuses_stops_every_rank_with_the_reason(tmp_path):
    """Only rank 0 checks and locks the folder; the other rank must stop too, not wait in DDP."""
    run = tmp_path / "ddp"
    args = ["-m", "gvsl_app.cli", "pretrain", "--data", "synthetic:cardiac", "--n-synthetic", "4", "--run-dir"]
    args += [str(run), "--iters", "2", "--size", "24", "--width", "4", "--workers", "0", "--device", "cpu", "--quiet"]
    assert torchrun(args).returncode == 0
    again = torchrun(args)  # the folder holds a run now, and no --overwrite
    assert again.returncode != 0
    assert "already holds a run" in again.stderr or "--overwrite" in again.stderr, again.stderr[-2000:]
    assert "another rank of this run stopped" in again.stderr, again.stderr[-2000:]


def test_validation_scores_the_restoration_of_a_corrupted_scan_as_trained(tmp_path):
    """A restoration that only passes its input through must not score a perfect 0."""
    cfg = small(tmp_path / "run")
    pair = validation_pair(PairDataset(cfg.data, cfg.size, seed=cfg.seed, n_synthetic=cfg.n_synthetic))
    model = build_model(cfg)
    model.features = lambda x: (None, x)  # the network hands the scan itself on ...
    model.restoration_head = torch.nn.Identity()  # ... and "restores" it unchanged
    first, again = validate(model, cfg, pair), validate(model, cfg, pair)
    assert first["mse"] > 1e-3  # the corruption is still there
    assert first["mse"] == again["mse"]  # the same corruption at every validation


def test_a_loss_gone_non_finite_between_logged_steps_never_reaches_a_snapshot(tmp_path, monkeypatch):
    from gvsl_app.training import pretrain as P

    real, calls = P.PretrainObjective.forward, []

    def forward(self, *a, **k):  # the third step diverges; no step is logged before the eighth
        terms = real(self, *a, **k)
        calls.append(1)
        if len(calls) == 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(P.PretrainObjective, "forward", forward)
    cfg = small(tmp_path / "run", iters=8, log_every=8, ckpt_every=100, val_every=100, snapshot_every=4)
    last = drain(pretrain(cfg))
    assert last.phase == "error" and last.iteration == 4  # caught at the snapshot step, before it wrote
    assert not (tmp_path / "run" / "checkpoints" / "iter_000004.pt").exists()

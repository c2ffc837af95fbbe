"""The corpus's faults that need their own set-up: a kill -9 that left staging folders, a full
disk (a file size limit in a child process), two interrupts before the first checkpoint, a
loss gone NaN, and a --width that disagrees with --init.

Each runs the real ``gvsl`` command (in-process where it can) on tiny inputs.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import yaml

from gvsl_app.cli import main
from gvsl_app.data.synthetic import cardiac_dataset
from gvsl_app.io.outputs import _host
from gvsl_app.training.config import PretrainConfig
from gvsl_app.training.pretrain import pretrain

from helpers import ROOT

GVSL = [sys.executable, "-m", "gvsl_app.cli"]
TINY = ["--data", "synthetic:cardiac", "--n-synthetic", "2", "--size", "24", "--width", "4", "--workers", "0"]
TINY += ["--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return cardiac_dataset(tmp_path_factory.mktemp("pair") / "data", 3, seed=2, shape=(24, 24, 24))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_staging_folders_a_killed_match_left_are_removed_on_the_next_write(pair, tmp_path, caplog):
    out = tmp_path / "out"
    images = pair / "images"
    argv = ["match", str(images / "case_000.nii.gz"), str(images / "case_001.nii.gz"), "--out", str(out)]
    argv += ["--size", "24", "--device", "cpu", "--no-refine"]
    assert main(argv) == 0
    dead = _dead_pid()
    host = _host()
    stale = [out / f".gvsl-partial-{host}-{dead}-0badc0de", out / f".gvsl-writing-{host}-{dead}-0badc0de"]
    for folder in stale:
        folder.mkdir()
        (folder / "warped_moving.nii.gz").write_bytes(b"half a file")
    live = out / f".gvsl-partial-{host}-{os.getpid()}-1234abcd"  # a call still writing: kept
    elsewhere = out / f".gvsl-partial-other-host-{dead}-1234abcd"  # another machine's (a network folder)
    for folder in (live, elsewhere):
        folder.mkdir()
    caplog.clear()
    assert main([*argv, "--overwrite"]) == 0
    err = caplog.text  # a warning: on stderr from the command line
    assert not any(p.exists() for p in stale) and live.is_dir() and elsewhere.is_dir()
    assert "removed 2 unfinished output folder(s)" in err and str(dead) in err


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_full_disk_during_pretrain_names_the_file_and_a_plain_rerun_starts_again(tmp_path):
    run = tmp_path / "run"
    argv = [*GVSL, "pretrain", *TINY, "--run", str(run), "--iters", "1"]
    full = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=300)
    assert full.returncode == 2, full.stderr
    assert "disk full writing" in full.stderr and str(run / "checkpoints") in full.stderr, full.stderr
    assert "Traceback" not in full.stderr and "inline_container" not in full.stderr.split(": ", 2)[1]
    assert not list((run / "checkpoints").iterdir())  # no half-written checkpoint
    # nothing was saved, so nothing is lost: the same command starts again, no --overwrite needed
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (run / "checkpoints" / "last.pt").is_file() and list((run / "history").iterdir())


def test_two_interrupts_before_the_first_checkpoint_leave_a_run_that_starts_again(tmp_path):
    run = tmp_path / "run"
    argv = [*GVSL, "pretrain", *TINY, "--run", str(run), "--iters", "1000"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=fh)
    deadline = time.time() + 120
    while not (run / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    # the second once the first is handled (two signals before the handler runs are one)
    while "press again" not in log.read_text() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = log.read_text()
    assert "Traceback" not in err, err
    if (run / "checkpoints" / "last.pt").is_file():  # a fast machine: the first step ended first
        assert "--resume" in err, err
        return
    assert "no checkpoint was written yet: run the same command again" in err, err
    # what it says works: the same command (shorter here), without --resume or --overwrite
    cfg = PretrainConfig(
        data="synthetic:cardiac", n_synthetic=2, size=24, width=4, workers=0, device="cpu", run=str(run), iters=1
    )
    assert [p.phase for p in pretrain(cfg)][-1] == "done"


def test_a_loss_gone_nan_names_the_term_and_claims_no_checkpoint_that_is_not_there(tmp_path, monkeypatch):
    from gvsl_app.training import pretrain as P

    real = P.PretrainObjective.forward

    def forward(self, *a, **k):
        terms = real(self, *a, **k)
        terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(P.PretrainObjective, "forward", forward)
    cfg = PretrainConfig(
        data="synthetic:cardiac",
        n_synthetic=2,
        size=24,
        width=4,
        workers=0,
        device="cpu",
        run=str(tmp_path / "r"),
        iters=3,
    )
    last = [p for p in pretrain(cfg)][-1]
    assert last.phase == "error"
    assert "non-finite loss at iteration 1: loss = nan" in last.message
    assert "no checkpoint was written yet" in last.message and "last good checkpoint" not in last.message


def test_finetune_from_a_checkpoint_records_the_checkpoints_width(pair, tmp_path):
    import torch

    import models

    gv4 = models.GVSL(widths=models.widths_from_base(4))
    init = tmp_path / "w4.pt"
    torch.save(
        {"format": "gvsl-studio", "kind": "pretrain", "model_config": gv4.config(), "model": gv4.state_dict()}, init
    )
    run = tmp_path / "ft"
    argv = ["finetune", "--data", str(pair), "--run", str(run), "--iters", "1", "--size", "16", "--device", "cpu"]
    assert main([*argv, "--init", str(init), "--quiet"]) == 0  # --width left out: the checkpoint's
    assert yaml.safe_load((run / "config.yaml").read_text())["width"] == 4

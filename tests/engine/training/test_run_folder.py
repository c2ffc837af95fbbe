"""Run folders that cannot be lost or mixed up: locks, no destruction, resume rules, clean exits."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gvsl_app.jobs.training_job import resume_command
from gvsl_app.training.config import FinetuneConfig
from gvsl_app.training.finetune import finetune
from gvsl_app.training.pretrain import pretrain
from gvsl_app.training.progress import StopFlag
from gvsl_app.training.runs import RunFolder
from models.checkpoint import read_checkpoint

from helpers import GVSL, ROOT, drain, small


def training_process(run: Path) -> subprocess.Popen:
    """A small ``gvsl pretrain`` in its own process, returned once it has logged two steps."""
    proc = subprocess.Popen(
        GVSL
        + [
            "pretrain",
            "--data",
            "synthetic:cardiac",
            "--n-synthetic",
            "2",
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
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 2) and time.time() < deadline:
        time.sleep(0.05)
    return proc


def test_resume_without_a_checkpoint_is_refused_and_keeps_the_history(tmp_path):
    run = tmp_path / "no-last"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"iteration": 1, "loss": 0.5}\n')
    proc = subprocess.run(
        GVSL
        + [
            "pretrain",
            "--data",
            "synthetic:cardiac",
            "--n-synthetic",
            "2",
            "--run",
            str(run),
            "--iters",
            "2",
            "--size",
            "24",
            "--width",
            "4",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--resume",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "last.pt: no checkpoint to resume from" in proc.stderr and "Traceback" not in proc.stderr
    assert (run / "metrics.jsonl").read_text() == '{"iteration": 1, "loss": 0.5}\n'
    with pytest.raises(FileNotFoundError, match="without --resume"):
        drain(finetune(FinetuneConfig(data=str(tmp_path), run=str(run), resume=True)))


def test_half_written_checkpoints_of_a_killed_run_are_removed_on_the_next_start(tmp_path):
    cfg = small(tmp_path / "tmp", iters=2, val_every=2)
    stale = Path(cfg.run) / "checkpoints" / ".last.pt.k9x2.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 1024)
    keep = Path(cfg.run) / "checkpoints" / "notes.tmp"  # not ours: left alone
    keep.write_text("mine")
    assert drain(pretrain(cfg)).phase == "done"
    assert not stale.exists() and keep.read_text() == "mine"
    assert read_checkpoint(Path(cfg.run) / "checkpoints" / "last.pt")["iteration"] == 2


def test_run_reports_are_strict_json_with_null_for_undefined_numbers(tmp_path):
    import numpy as np

    from gvsl_app.io.jsonio import dumps_strict

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))

    run = RunFolder(tmp_path / "r").create()
    run.write_report(
        {"best_val": float("inf"), "dice": {"1": float("nan"), "2": np.float32(0.5)}, "rows": [np.float64("-inf"), 1]}
    )
    assert strict(run.report_path.read_text()) == {"best_val": None, "dice": {"1": None, "2": 0.5}, "rows": [None, 1]}
    assert strict(dumps_strict({"ok": 1.25})) == {"ok": 1.25}


def test_a_second_process_on_a_locked_run_folder_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "busy"
    first = training_process(run)
    metrics = run / "metrics.jsonl"
    try:
        second = subprocess.run(
            GVSL
            + [
                "pretrain",
                "--data",
                "synthetic:cardiac",
                "--n-synthetic",
                "2",
                "--run",
                str(run),
                "--iters",
                "2",
                "--size",
                "24",
                "--width",
                "4",
                "--workers",
                "0",
                "--device",
                "cpu",
                "--quiet",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        assert f"another process (PID {first.pid}) is training in this run folder" in second.stderr
        assert first.poll() is None  # the first run goes on, its log intact
        lines = [json.loads(x)["iteration"] for x in metrics.read_text().splitlines() if '"event"' not in x]
        assert lines == list(range(1, len(lines) + 1))
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    # the lock went with its holder: the folder can be resumed now
    with RunFolder(run).lock():
        pass


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    script = (
        "import sys, time; from gvsl_app.training.runs import RunFolder\n"
        f"with RunFolder({str(tmp_path / 'k')!r}).lock():\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RuntimeError, match=f"PID {holder.pid}"):
        with RunFolder(tmp_path / "k").lock():
            pass
    holder.kill()
    holder.wait(timeout=30)
    with RunFolder(tmp_path / "k").lock():
        pass


def test_a_fresh_start_never_destroys_an_existing_run(tmp_path):
    cfg = small(tmp_path / "kept", iters=2, val_every=2)
    drain(pretrain(cfg))
    run = RunFolder(cfg.run)
    history = run.metrics_path.read_text()
    config_text = run.config_path.read_text()
    # a typo in the data: refused before the folder is touched
    with pytest.raises(Exception, match="typo"):
        drain(pretrain(small(cfg.run, iters=2, data=str(tmp_path / "typo"))))
    # a good fresh start into a folder that holds a run: refused unless asked
    with pytest.raises(FileExistsError, match="holds a run.*--resume.*--overwrite"):
        drain(pretrain(small(cfg.run, iters=3, val_every=3)))
    assert run.metrics_path.read_text() == history and run.config_path.read_text() == config_text
    # asked: the earlier run moves to history/, nothing is deleted
    assert drain(pretrain(small(cfg.run, iters=3, val_every=3, overwrite=True))).phase == "done"
    (archived,) = (run.path / "history").iterdir()
    assert (archived / "metrics.jsonl").read_text() == history
    assert read_checkpoint(archived / "checkpoints" / "last.pt")["iteration"] == 2
    assert read_checkpoint(run.last)["iteration"] == 3
    with pytest.raises(ValueError, match="exclude each other"):
        small(cfg.run, resume=True, overwrite=True)


def test_finetune_checks_every_split_before_touching_the_run_folder(tmp_path, seg_data):
    import shutil

    import numpy as np

    from gvsl_app.data.datasets import split_names
    from gvsl_app.io.images import read_volume, write_volume

    data = tmp_path / "data"
    shutil.copytree(seg_data, data)
    cfg = FinetuneConfig(
        data=str(data),
        run=str(tmp_path / "ft"),
        iters=1,
        size=16,
        batch=1,
        device="cpu",
        val_every=1,
        val_fraction=0.2,
        test_fraction=0.3,
    )
    _, _, test = split_names(sorted(p.name.split(".")[0] for p in (data / "images").iterdir()), 0.2, 0.3, 0)
    label = data / "labels" / f"{test[0]}.nii.gz"
    bad = read_volume(label)
    write_volume(bad.with_array(np.zeros((8, 8, 8), dtype=np.uint8)), label, is_label=True)
    with pytest.raises(Exception, match=test[0]):  # a test-split label: found before training, not after
        drain(finetune(cfg))
    assert not (tmp_path / "ft" / "config.yaml").exists() and not (tmp_path / "ft" / "checkpoints").exists()


def test_a_second_interrupt_aborts_at_once_without_a_traceback(tmp_path):
    proc = training_process(tmp_path / "twice")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err


def test_the_guis_resume_command_continues_a_run_started_with_overwrite(tmp_path):
    """The GUI's Resume passes the run's own config.yaml, which records ``overwrite: true`` for
    a run started that way; --resume decides for that call, and the run goes on as saved.
    """
    cfg = small(tmp_path / "gui", iters=3, val_every=3, overwrite=True)
    stop = StopFlag()
    assert drain(pretrain(cfg, stop), stop=stop, stop_at=1).phase == "stopped"
    proc = subprocess.run(resume_command(cfg.run), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ck = read_checkpoint(RunFolder(cfg.run).last)
    assert ck["iteration"] == 3 and ck["config"]["size"] == 32 and ck["config"]["n_synthetic"] == 4

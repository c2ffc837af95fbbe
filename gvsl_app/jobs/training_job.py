"""A training run as a child process (``gvsl pretrain|finetune``) followed through its run folder.

Qt-free: the widget calls :meth:`TrainingJob.poll` from a timer. The run folder is the
only channel (docs/design/architecture.md): the child writes ``metrics.jsonl`` line by line and the job tails
it, so attaching to a run started elsewhere (a cluster job on a shared folder) is the same
code path without a process. Stopping sends SIGTERM, which the CLI turns into "finish the
step, write last.pt, exit". A job never outlives the GUI: on Linux the child gets
SIGTERM when the GUI process dies (``PR_SET_PDEATHSIG``, see ``_child``), and ``shutdown`` (widget or
viewer closing, interpreter exit) stops it and waits for its checkpoint.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gvsl_app.jobs.child import PARENT_ENV
from gvsl_app.jobs.state import DONE, ERROR, FOLLOWING, RUNNING, STARTING, STOPPED, STOPPING, TrainingState
from gvsl_app.training.runs import RunFolder

NOT_LOSSES = {"iteration", "time", "lr", "sec_per_step", "samples_per_s", "data_wait_s", "event", "message"}
LOG_NAME = "gui_process.log"
CHILD = "gvsl_app.jobs.child"  # = the gvsl CLI, plus "stop when the GUI dies"
# Strong references: a job whose widget was closed and collected still has a child to stop
# when the interpreter exits; a job leaves the set when its process has ended.
_LIVE: set[TrainingJob] = set()


FORM_NUMBERS = ("size", "width", "iters", "workers", "n_synthetic")
"""The numeric settings a training form shows; their defaults are the engine's (:func:`task_defaults`)."""


def task_defaults(task: str) -> dict[str, int]:
    """The engine's defaults of :data:`FORM_NUMBERS` for ``task`` (``pretrain``, ``seg`` or ``cls``).

    Read from :class:`~gvsl_app.training.config.PretrainConfig` / ``FinetuneConfig``, the
    same defaults ``gvsl pretrain|finetune`` uses, so a run started from a GUI and the same
    run from the command line train alike. Fine-tuning on synthetic data writes as many
    subjects as pre-training generates.
    """
    from gvsl_app.training.config import FinetuneConfig, PretrainConfig

    pre = PretrainConfig()
    cfg = pre if task == "pretrain" else FinetuneConfig()
    return {
        "size": cfg.size,
        "width": cfg.width,
        "iters": cfg.iters,
        "workers": cfg.workers,
        "n_synthetic": pre.n_synthetic,
    }


@dataclass
class TrainingSpec:
    """What the training form describes; ``commands()`` is what runs.

    A numeric setting left at ``None`` is not passed on, so the engine's default applies
    (:func:`task_defaults` shows it).
    """

    task: str = "pretrain"  # pretrain, or a gvsl_app.options.Task (seg | cls)
    run: str = "runs/gui"
    data: str = "synthetic:cardiac"
    variant: str = "gvsl"
    init: str = "scratch"
    linear: bool = False
    size: int | None = None
    width: int | None = None
    iters: int | None = None
    device: str = "auto"
    workers: int | None = None
    n_synthetic: int | None = None

    def commands(self, python: str = sys.executable) -> list[list[str]]:
        """The child processes' command lines for this training (data preparation first, if any)."""
        base = [python, "-m", CHILD]
        common = ["--run", str(self.run), *self._given("iters", "size", "width", "workers")]
        common += ["--device", self.device, "--quiet"]
        if self.task == "pretrain":
            return [
                [
                    *base,
                    "pretrain",
                    "--data",
                    self.data,
                    "--variant",
                    self.variant,
                    *self._given("n_synthetic"),
                    *common,
                ]
            ]
        cmds, data = [], self.data
        if data.startswith("synthetic:"):  # fine-tuning needs labelled files: write synthetic subjects first
            data = str(Path(self.run) / "data")
            n = self.n_synthetic if self.n_synthetic is not None else task_defaults(self.task)["n_synthetic"]
            cmds.append(
                [*base, "sample", "cardiac", "--out", data, "--n", str(n)]
                + (["--classification"] if self.task == "cls" else [])
            )
        cmds.append(
            base
            + ["finetune", "--data", data, "--task", self.task, "--init", self.init or "scratch", *common]
            + (["--linear"] if self.linear else [])
        )
        return cmds

    def _given(self, *names: str) -> list[str]:
        """``--name value`` for each setting that is not ``None``."""
        out: list[str] = []
        for name in names:
            value = getattr(self, name)
            if value is not None:
                out += [f"--{name.replace('_', '-')}", str(value)]
        return out


def resume_command(run_dir: str | os.PathLike, python: str = sys.executable) -> list[str]:
    """Continue a run from its ``last.pt`` with the configuration it was started with."""
    run = RunFolder(run_dir)
    cfg = run.read_config()
    sub = "finetune" if "task" in cfg else "pretrain"
    return [python, "-m", CHILD, sub, "--config", str(run.config_path), "--run", str(run.path), "--resume", "--quiet"]


def run_kind(run_dir: str | os.PathLike) -> str:
    """``gvsl`` (pre-training), ``seg`` or ``cls`` from the run's configuration."""
    cfg = RunFolder(run_dir).read_config()
    return cfg.get("task", "gvsl") if "task" in cfg else "gvsl"


class MetricsTail:
    """Complete new lines of a growing JSONL file; notices when a resume rewrote the file."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0
        self.inode: int | None = None
        self.reset = False

    def read(self) -> list[dict]:
        """The complete lines added since the last read (all of them again after a rewrite)."""
        try:
            st = self.path.stat()
        except OSError:
            return []
        if st.st_ino != self.inode or st.st_size < self.offset:
            self.offset, self.inode, self.reset = 0, st.st_ino, True
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        out = []
        for line in complete.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


class TrainingJob:
    """One run folder, followed; with ``commands`` it is also the process that writes it."""

    def __init__(
        self, run_dir: str | os.PathLike, state: TrainingState, commands: list[list[str]] | None = None, total: int = 0
    ):
        self.run = RunFolder(run_dir)
        self.state = state
        self.tail = MetricsTail(self.run.metrics_path)
        self.history: dict[str, tuple[list[int], list[float]]] = {}
        self.proc: subprocess.Popen | None = None
        self._pending = [list(c) for c in commands or []]
        self._stop_requested = False
        self._log: BinaryIO | None = None
        state.run_dir, state.iteration, state.total, state.eta_s, state.message = str(self.run.path), 0, total, 0.0, ""

    # -- process ---------------------------------------------------------------------------
    def start(self) -> None:
        """Launch the first pending command, or follow the run folder when there is none."""
        self.run.path.mkdir(parents=True, exist_ok=True)
        if self._pending:
            self._launch(self._pending.pop(0))  # before the status, so that a STARTING job can be stopped
        self.state.status = STARTING if self.proc is not None else FOLLOWING

    def _launch(self, cmd: list[str]) -> None:
        if self._log is None:
            self._log = open(self.run.path / LOG_NAME, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        _LIVE.add(self)

    @property
    def alive(self) -> bool:
        """Whether a child process is running."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def can_stop(self) -> bool:
        """A child of this job is running (or about to) and has not been asked to stop yet.

        Once asked, a second SIGTERM would make the CLI abort without writing ``last.pt``
        (its "second interrupt" rule), so a stop is sent at most once.
        """
        return not self._stop_requested and (self.alive or bool(self._pending))

    def stop(self) -> None:
        """Ask the child to stop at the next step and write ``last.pt`` (SIGTERM), once."""
        if self._pending:
            self._pending.clear()
            self._stop_requested = True  # the chain's next command (e.g. after `gvsl sample`) never starts
        if self.alive and self.state.status != STOPPING:
            assert self.proc is not None  # alive implies a process
            self._stop_requested = True
            self.state.status = STOPPING  # also what keeps a second call from signalling again
            if sys.platform == "win32":
                self.proc.terminate()
            else:
                self.proc.send_signal(signal.SIGTERM)

    def shutdown(self, timeout: float = 20.0) -> None:
        """Stop and wait for the checkpoint; kill the child if it does not exit in time."""
        if self.alive:
            self.stop()
            assert self.proc is not None  # alive implies a process
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        _LIVE.discard(self)

    def detach(self) -> None:
        """Its widget is gone: stop the child without waiting (it writes ``last.pt`` on its own;
        :data:`_LIVE` keeps this job so that the interpreter's exit still waits for it).
        """
        self.stop()

    # -- following -------------------------------------------------------------------------
    def poll(self) -> bool:
        """Read new metrics and the process state; ``True`` when something changed."""
        records = self.tail.read()
        if self.tail.reset:
            self.history.clear()
            self.tail.reset = False
        for rec in records:
            self._add(rec)
        if not self.state.total:
            try:
                self.state.total = int(self.run.read_config().get("iters", 0))
            except (FileNotFoundError, ValueError, OSError):
                pass
        before = self.state.status
        self._update_status()
        return bool(records) or self.state.status != before

    def _add(self, rec: dict) -> None:
        it = int(rec.get("iteration", 0))
        if rec.get("event") == "error":
            self.state.message = str(rec.get("message", ""))
        for key, value in rec.items():
            if key in NOT_LOSSES or not isinstance(value, (int, float)):
                continue
            xs, ys = self.history.setdefault(key, ([], []))
            xs.append(it)
            ys.append(float(value))
        if rec.get("event") is None and "sec_per_step" in rec:
            self.state.sec_per_step = float(rec["sec_per_step"])
        if it >= self.state.iteration:
            self.state.iteration = it
            self.state.eta_s = self.state.sec_per_step * max(self.state.total - it, 0)

    def _update_status(self) -> None:
        if self.proc is None:  # attached to a run started elsewhere
            report = self.run.read_report() if self.run.report_path.is_file() else None
            if report is not None and report.get("iteration", -1) >= self.state.iteration:
                self.state.status = STOPPED if report.get("status") == "stopped" else DONE
            elif self.state.status not in (DONE, STOPPED):
                self.state.status = FOLLOWING
            return
        rc = self.proc.poll()
        if rc is None:
            if self.state.status == STARTING and self.state.iteration > 0:
                self.state.status = RUNNING
            return
        if rc == 0 and self._pending and not self._stop_requested:
            self._launch(self._pending.pop(0))
            return
        report = self.run.read_report() if self.run.report_path.is_file() else {}
        assert report is not None  # read_report is None only without the file, checked just before
        if rc == 0:
            self.state.status = STOPPED if (self._stop_requested or report.get("status") == "stopped") else DONE
        elif self._stop_requested:
            self.state.status = STOPPED
        else:
            self.state.message = self.state.message or self.log_tail()
            self.state.status = ERROR
        if self._log is not None:
            self._log.close()
            self._log = None
        _LIVE.discard(self)

    def log_tail(self, n: int = 6) -> str:
        """The last ``n`` non-empty lines of the child's log, joined on one line."""
        try:
            lines = (self.run.path / LOG_NAME).read_text(errors="replace").splitlines()
        except OSError:
            return "the training process failed (no log)"
        lines = [ln.strip() for ln in lines if ln.strip()]
        return " | ".join(lines[-n:]) or "the training process failed"

    def checkpoint(self) -> Path | None:
        """``best.pt`` when the run has one, else ``last.pt``, else ``None``."""
        for p in (self.run.best, self.run.last):
            if p.is_file():
                return p
        return None


@atexit.register
def _shutdown_all() -> None:
    for job in list(_LIVE):
        job.shutdown(timeout=10.0)

"""The run folder: config, metrics log, checkpoints and report of one training run.

Layout (docs/design/architecture.md)::

    RUN/config.yaml            the configuration actually used
    RUN/metrics.jsonl          one JSON object per logged step, flushed as written
    RUN/checkpoints/last.pt    latest state (model, optimiser, scheduler, RNG, iteration)
    RUN/checkpoints/best.pt    best state on the validation split / fixed pair
    RUN/checkpoints/iter_NNNNNN.pt  model weights of iteration N (pre-training with snapshot_every)
    RUN/report.json            final numbers
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from gvsl_app.io.jsonio import dumps_strict
from gvsl_app.training.config import MAY_CHANGE_ON_RESUME, PATH_OPTIONS, RUN_CONTROL, C, resume_config
from models.checkpoint import FORMAT, atomic_torch_save, read_checkpoint


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name ``path`` in the error of a write that finds the disk full (or the file size limit
    reached): Python's own ``[Errno 28] No space left on device`` does not say which file.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) and str(path) not in str(exc):
            raise OSError(exc.errno, f"disk full writing {path} ({exc.strerror})") from None
        raise


def non_finite_message(step: int, values: dict[str, float], last: Path, where: str = "") -> str:
    """Why a training stopped on a NaN/inf loss: which loss terms (by name), at which iteration,
    and what is kept: the last checkpoint only when one exists (before the first one, the run
    can only be started again).
    """
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    named = ", ".join(f"{k} = {values[k]}" for k in bad) if bad else "the loss"
    kept = (
        f"keeping the last good checkpoint {last}"
        if last.is_file()
        else "no checkpoint was written yet (start the run again, without --resume)"
    )
    return (
        f"non-finite loss at iteration {step}{where}: {named}; stopped, {kept}. "
        "Try a lower --lr, smaller loss weights, or check the data."
    )


def refuse_run_among_data(run: str | os.PathLike, data: str) -> None:
    """Refuse a ``--run`` folder that is the ``--data`` folder or lies among its volumes
    (``images/``, ``labels/``): the run's files would be mixed with the data (links followed).
    """
    if not data or ":" in data or not Path(data).is_dir():
        return  # synthetic:... or a data path that is refused elsewhere, naming it
    run_path = Path(run).resolve()
    folder = Path(data).resolve()
    for inputs in (folder, folder / "images", folder / "labels"):
        if inputs.is_dir() and (run_path == inputs or (inputs != folder and run_path.is_relative_to(inputs))):
            raise ValueError(
                f"--run {run} is {'the data folder' if inputs == folder else 'inside ' + str(inputs)} of --data "
                f"{data}: the run's files would be mixed with the data; choose another --run"
            )


class RunFolder:
    """Paths and writers of a run folder; only rank 0 should write."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        """The run's ``config.yaml``."""
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        """The run's ``metrics.jsonl`` (one JSON line per logged step or event)."""
        return self.path / "metrics.jsonl"

    @property
    def last(self) -> Path:
        """The latest checkpoint, ``checkpoints/last.pt``."""
        return self.path / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        """The best checkpoint on validation, ``checkpoints/best.pt``."""
        return self.path / "checkpoints" / "best.pt"

    @property
    def report_path(self) -> Path:
        """The run's final ``report.json``."""
        return self.path / "report.json"

    def create(self) -> RunFolder:
        """Make the folder and its ``checkpoints/``; return ``self``."""
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        return self

    def write_config(self, config: Any) -> None:
        """Write ``config.yaml`` atomically (temp file + rename): a resume reads it back."""
        data = asdict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config)
        tmp = self.config_path.with_suffix(".tmp")
        with writing(self.config_path):
            tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, self.config_path)

    def resumed_config(self, config: C) -> tuple[C, dict[str, tuple[Any, Any]]]:
        """The configuration ``--resume`` continues with and what it changed (see
        :func:`~gvsl_app.training.config.resume_config`): the saved ``config.yaml`` (the
        ``last.pt`` checkpoint's copy when the file is gone) with the options ``config`` may
        change. Refuses a folder without ``last.pt`` first, as a resume without it would.
        """
        self.require_resumable()
        if self.config_path.is_file():
            source = str(self.config_path)
            try:
                saved = self.read_config()
            except yaml.YAMLError as exc:
                raise ValueError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None
        else:
            saved, source = self.load_checkpoint("last").get("config") or {}, str(self.last)
        if not isinstance(saved, dict):
            raise ValueError(f"{source}: expected a mapping of option: value")
        if source == str(self.config_path):
            self._check_saved_config(config, saved)
        return resume_config(config, saved, source)

    def _check_saved_config(self, config: Any, saved: dict) -> None:
        """Trust a run's ``config.yaml`` only when it is complete and agrees with ``last.pt``.

        An emptied, trimmed or hand-edited file would otherwise resume on defaults (other data,
        size, width) and then be rewritten with them. Refused: unknown keys; keys missing that
        the checkpoint's own copy of the configuration records (a key both lack comes from an
        older version and keeps its default); values that differ from the checkpoint's copy
        (except those a resume may change and the paths, which a resume may respell).
        """
        names = [f.name for f in dataclasses.fields(config)]
        unknown = sorted(set(saved) - set(names))
        if unknown:
            raise ValueError(
                f"{self.config_path}: unknown option(s) {', '.join(unknown)}; a run's config.yaml holds only the "
                "options of the run that wrote it. Remove them (or the whole file: --resume then uses the copy "
                f"{self.last} holds)"
            )
        recorded = self.load_checkpoint("last").get("config") or {}
        missing = [n for n in names if n not in saved and n in recorded and n not in RUN_CONTROL]
        if missing:
            raise ValueError(
                f"{self.config_path}: incomplete, {len(missing)} option(s) missing ({', '.join(missing[:8])}"
                + (" ..." if len(missing) > 8 else "")
                + f") that {self.last} was trained with; restore the file, or remove it to resume with the "
                "checkpoint's own copy"
            )
        fixed = set(names) - RUN_CONTROL - MAY_CHANGE_ON_RESUME - set(PATH_OPTIONS)
        edited = [n for n in names if n in fixed and n in recorded and saved[n] != recorded[n]]
        if edited:
            diff = ", ".join(f"{n} {recorded[n]!r} -> {saved[n]!r}" for n in edited[:5])
            raise ValueError(
                f"{self.config_path} disagrees with {self.last} ({diff}: checkpoint -> file); the file was edited "
                "after the run started. Restore it, or remove it to resume with the checkpoint's own copy; to "
                "train with other values, start a fresh run"
            )

    def read_config(self) -> dict:
        """The saved configuration (``FileNotFoundError`` when this is no run folder)."""
        if not self.config_path.is_file():
            raise FileNotFoundError(f"{self.path}: not a run folder (no config.yaml)")
        return yaml.safe_load(self.config_path.read_text()) or {}

    def log(self, record: dict) -> None:
        """Append one JSON line and flush it to disk, so followers see it at once."""
        record = {"time": time.time(), **record}
        with writing(self.metrics_path), open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def truncate_metrics(self, after_iteration: int) -> None:
        """Drop log lines past ``after_iteration`` (a resumed run rewrites them)."""
        if not self.metrics_path.is_file():
            return
        keep = [r for r in read_metrics(self.metrics_path) if r.get("iteration", 0) <= after_iteration]
        tmp = self.metrics_path.with_suffix(".tmp")
        with writing(self.metrics_path):
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.metrics_path)

    def save_checkpoint(self, which: str, state: dict) -> Path:
        """Atomically write ``last`` or ``best`` (temp file + rename)."""
        return atomic_torch_save({"format": FORMAT, **state}, self.last if which == "last" else self.best)

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunFolder]:
        """Hold the run folder for this process (an advisory ``fcntl`` lock on ``RUN/.lock``).

        A second process that tries to train into the same folder gets an error naming the
        holder's PID instead of interleaving ``metrics.jsonl`` and overwriting checkpoints.
        The operating system releases the lock when the holder exits, even on ``kill -9``, so
        a crashed run never leaves the folder locked. Readers (the GUI following a run) do
        not lock.
        """
        import fcntl

        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / ".lock", "a+")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                raise RuntimeError(
                    f"{self.path}: another process (PID {holder}) is training in this run folder; "
                    "wait for it to finish or stop it, or choose another --run"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield self
        finally:
            fh.close()  # closing releases the lock
            # A run refused before it wrote anything leaves no empty folder behind.
            if created and [p.name for p in self.path.iterdir()] == [".lock"]:
                (self.path / ".lock").unlink(missing_ok=True)
                self.path.rmdir()

    def start_fresh(self, overwrite: bool) -> Path | None:
        """Make room for a new run: refuse if the folder holds one, or with ``overwrite`` archive it.

        Nothing is deleted: the earlier run's config, metrics, report and checkpoints move to
        ``RUN/history/<UTC time>/``, whose path is returned (``None`` when there was nothing).
        """
        held = [p for p in (self.config_path, self.metrics_path, self.report_path, self.last, self.best) if p.exists()]
        if not held:
            return None
        if not overwrite and not self.has_weights():
            # A run stopped (two Ctrl-C, a kill, a crash) before its first checkpoint: nothing
            # to resume, nothing worth refusing for. Start again; its config and log are kept.
            dest = self._archive()
            logging.getLogger(__name__).warning(
                "%s held a run stopped before its first checkpoint; starting again (its files moved to %s)",
                self.path,
                dest,
            )
            return dest
        if not overwrite:
            names = ", ".join(str(p.relative_to(self.path)) for p in held)
            raise FileExistsError(
                f"{self.path} holds a run ({names}); pass --resume to continue it, --overwrite "
                "to start afresh (the earlier run moves to history/), or choose another --run"
            )
        return self._archive()

    def has_weights(self) -> bool:
        """True when the folder holds a checkpoint or a finished run's report (something to keep)."""
        folder = self.path / "checkpoints"
        return (
            self.report_path.exists()
            or self.last.exists()
            or self.best.exists()
            or (folder.is_dir() and any(folder.glob("iter_*.pt")))
        )

    def _archive(self) -> Path:
        """Move the run's files to ``RUN/history/<UTC time>/`` and return that folder."""
        dest = self.path / "history" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        dest.mkdir(parents=True, exist_ok=True)
        for p in (self.config_path, self.metrics_path, self.report_path, self.path / "checkpoints"):
            if p.exists():
                os.replace(p, dest / p.name)
        return dest

    def require_resumable(self) -> None:
        """Refuse ``--resume`` where there is nothing to resume (instead of starting afresh)."""
        if not self.last.is_file():
            stopped = self.config_path.is_file() and not self.has_weights()
            raise FileNotFoundError(
                f"{self.last}: no checkpoint to resume from"
                + (" (the run there stopped before its first checkpoint)" if stopped else "")
                + f". Run without --resume to start a new run in {self.path}, or pass the run folder that holds "
                "last.pt."
            )

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete half-written checkpoint files (``.NAME.pt.*.tmp``) that a killed process left.

        Checkpoints are written to such a temporary file and renamed; a ``kill -9`` in
        between leaves the temporary behind, and each one is a whole checkpoint's size.
        Only the process that owns the run folder may call this.
        """
        folder = self.path / "checkpoints"
        stale = sorted(folder.glob(".*.pt.*.tmp")) if folder.is_dir() else []
        for f in stale:
            f.unlink(missing_ok=True)
        return stale

    def save_snapshot(self, iteration: int, state: dict) -> Path:
        """Atomically write the model-only snapshot ``checkpoints/iter_NNNNNN.pt``."""
        return atomic_torch_save({"format": FORMAT, **state}, self.path / "checkpoints" / f"iter_{iteration:06d}.pt")

    def snapshots(self) -> list[tuple[int, Path]]:
        """``(iteration, path)`` of every snapshot, in iteration order."""
        found = []
        for f in (self.path / "checkpoints").glob("iter_*.pt"):
            try:
                found.append((int(f.stem[len("iter_") :]), f))
            except ValueError:
                continue
        return sorted(found)

    def load_checkpoint(self, which: str = "last") -> dict:
        """The ``last`` or ``best`` checkpoint."""
        return read_checkpoint(self.last if which == "last" else self.best)

    def write_report(self, report: dict) -> None:
        """Write ``report.json`` atomically (temp file + rename), strict JSON."""
        tmp = self.report_path.with_suffix(".tmp")
        with writing(self.report_path):
            tmp.write_text(dumps_strict(report))
        os.replace(tmp, self.report_path)

    def read_report(self) -> dict | None:
        """The run's report, or ``None`` before it is written."""
        return json.loads(self.report_path.read_text()) if self.report_path.is_file() else None


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All complete JSON lines of a metrics file (a half-written last line is skipped)."""
    return list(iter_metrics(path))


def iter_metrics(path: str | os.PathLike, start: int = 0) -> Iterator[dict]:
    """The complete JSON lines of a metrics file from line ``start`` (a half-written last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path) as fh:
        for i, line in enumerate(fh):
            if i < start or not line.endswith("\n"):
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue

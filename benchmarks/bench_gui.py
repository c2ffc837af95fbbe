"""The viewer under load: each widget's real button pressed while a 10 ms heartbeat ticks.

Usage (needs a display; on a server under Xvfb):
  QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_gui.py \
      [--jobs matching,training,segmentation,clusters,explorer] [--threads 1] [--no-startup]

The desktop app's viewer (``napari_plugin.app.build_viewer``: the five docks as ``gvsl app``
builds them, the cardiac sample pair at 96^3) is opened in this process; then, one after
the other, the real buttons are pressed: Z-Matching of the sample pair (demo weights,
refinement on, as by default), a tiny training run (width 8, size 32, 20 iterations) whose
loss plot follows it, segmentation of the fixed image with the shipped segmenter, feature
clusters (t-SNE) with the demo weights, and the label explorer comparing that segmentation
with the fixed labels. A 10 ms QTimer records the gaps between its beats (a gap is the time
the event loop was busy: the viewer frozen) and a sampling thread records what the GUI
thread was running, so each job prints its median gap, worst gap, the number of gaps over
100 ms, and the stage and code at the worst gap.

It also measures (a) ``gvsl app --sample cardiac`` from process start to the window with
its docks and the sample shown (a subprocess with ``GVSL_APP_EXIT_WHEN_SHOWN=1``, which
makes the app print when its event loop first idles with the window shown, then quit),
and (b) the canvas width against the window width at the default window size. Both use a
throw-away napari settings file (``NAPARI_CONFIG``), so a window size saved by an earlier
session does not count.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

JOBS = ("matching", "training", "segmentation", "clusters", "explorer")
PLUGIN = "gvsl-studio"


class Heartbeat:
    """A 10 ms QTimer whose beats measure the event loop, plus a sampler of the GUI thread's stack."""

    def __init__(self, stage: Callable[[], str], sample_ms: float = 5.0, depth: int = 1) -> None:
        from qtpy.QtCore import QTimer

        self.stage = stage
        self.beats: list[tuple[float, str]] = []
        self.samples: list[tuple[float, str]] = []
        self._main = threading.main_thread().ident or 0
        self._sample_s = sample_ms / 1000
        self._depth = depth
        self._running = False
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.beats.append((time.perf_counter(), self.stage())))

    def start(self) -> None:
        self.beats, self.samples, self._running = [], [], True
        threading.Thread(target=self._sample, daemon=True).start()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self._running = False

    def _sample(self) -> None:
        # Every few ms, where the GUI thread is: a gap's samples say what froze the viewer.
        while self._running:
            frame = sys._current_frames().get(self._main)
            if frame is not None:
                self.samples.append((time.perf_counter(), _where(frame, self._depth)))
            time.sleep(self._sample_s)

    def summary(self) -> dict:
        """Median and worst gap (ms), gaps over 100 ms, and the stage and code at the worst gap."""
        t = np.array([b[0] for b in self.beats])
        if len(t) < 2:
            return {"beats": len(t), "median": float("nan"), "worst": float("nan"), "over100": 0, "at": "no beats"}
        gaps = np.diff(t) * 1000
        i = int(np.argmax(gaps))
        return {
            "beats": len(t),
            "median": float(np.median(gaps)),
            "worst": float(gaps[i]),
            "over100": int((gaps > 100).sum()),
            "at": self._at(i),
            "computing": max((float(g) for g, b in zip(gaps, self.beats[1:]) if b[1].endswith(COMPUTING)), default=0.0),
            "long": [(float(gaps[k]), self._at(int(k))) for k in np.flatnonzero(gaps > 100)],
        }

    def _at(self, i: int) -> str:
        """The stage and the most sampled code between beats ``i`` and ``i + 1``."""
        lo, hi = self.beats[i][0], self.beats[i + 1][0]
        inside = collections.Counter(w for s, w in self.samples if lo <= s <= hi and w)
        code = "; ".join(f"{w} ({n})" for w, n in inside.most_common(2)) or "no Python frame sampled (Qt/C++)"
        return f"stage '{self.beats[i + 1][1]}': {code}"


def _where(frame, depth: int = 1) -> str:
    """Our innermost frame (napari_plugin) and the ``depth`` innermost frames of all, as
    ``file:function``; empty when the GUI thread was idle in the benchmark's event loop.
    """
    inner: list[str] = []
    ours = None
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        name = "/".join(path.split("/")[-2:]) + ":" + frame.f_code.co_name
        if "bench_gui.py" in path:  # the benchmark's own waiting loop: the GUI was idle here
            break
        if len(inner) < depth:
            inner.append(name)
        if ours is None and "/napari_plugin/" in path:
            ours = name
        frame = frame.f_back
    chain = " < ".join(inner)
    return chain if ours is None or ours in inner else f"{ours} > {chain}"


def wait_for(done: Callable[[], bool], timeout_s: float) -> bool:
    """Run the real Qt event loop until ``done()`` (checked every 20 ms) or the timeout."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    check = QTimer()
    check.setInterval(20)
    check.timeout.connect(lambda: loop.quit() if done() else None)
    check.start()
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec_()
    check.stop()
    return done()


def settle(ms: int = 400) -> None:
    """Let the event loop draw what a job left behind (its last layer's first paint counts)."""
    t_end = time.perf_counter() + ms / 1000
    wait_for(lambda: time.perf_counter() >= t_end, ms / 1000 + 1)


def widget(viewer, name: str):
    return viewer.window.dock_widgets[f"{name} ({PLUGIN})"]


COMPUTING = " (worker)"


def stage_of(w) -> str:
    """The job's stage, marked while its worker thread computes (the rest is the GUI showing results)."""
    worker = getattr(w, "_worker", None)
    return w.state.stage + (COMPUTING if worker is not None and worker.is_running else "")


def finished(w) -> bool:
    worker = getattr(w, "_worker", None)
    return w.state.status in ("done", "error") and (worker is None or not worker.is_running)


def job_matching(viewer, tmp: Path):
    w = widget(viewer, "Z-Matching")
    w.device.setCurrentText("cpu")
    return w, w.controls.run_button, lambda: finished(w), lambda: stage_of(w)


def job_training(viewer, tmp: Path):
    w = widget(viewer, "Training")
    f = w.fields
    f["run_dir"].value = tmp / "run"
    for key, value in (("size", 32), ("width", 8), ("iters", 20), ("workers", 0), ("n_synthetic", 2)):
        f[key].value = value
    f["device"].value = "cpu"

    def stage() -> str:
        return f"{w.state.status} {w.state.iteration}/{w.state.total}"

    return w, w.start_button, lambda: w.state.status in ("done", "stopped", "error"), stage


def job_segmentation(viewer, tmp: Path):
    w = widget(viewer, "Segmentation")
    w.image.set_layer("cardiac fixed")
    w.reference.set_layer("cardiac fixed labels")
    w.device.setCurrentText("cpu")
    return w, w.controls.run_button, lambda: finished(w), lambda: stage_of(w)


def job_clusters(viewer, tmp: Path):
    w = widget(viewer, "Feature clusters")
    w.image.set_layer("cardiac fixed")
    w.labels.set_layer("cardiac fixed labels")
    w.device.setCurrentText("cpu")
    return w, w.controls.run_button, lambda: finished(w), lambda: stage_of(w)


def job_explorer(viewer, tmp: Path):
    w = widget(viewer, "Label explorer")
    seg = "cardiac fixed segmentation"
    w.labels.set_layer(seg if seg in viewer.layers else "cardiac moving labels")
    w.reference.set_layer("cardiac fixed labels")
    return w, w.controls.run_button, lambda: finished(w), lambda: stage_of(w)


def run_job(viewer, name: str, tmp: Path, timeout_s: float, depth: int = 1) -> dict:
    """Raise the job's dock, press its button, follow it to the end; the heartbeat's numbers."""
    w, button, done, stage = globals()[f"job_{name}"](viewer, tmp)
    w.parentWidget().raise_()  # the dock's tab, as a user clicks it
    settle(300)
    beat = Heartbeat(stage, depth=depth)
    beat.start()
    t0 = time.perf_counter()
    button.click()
    ok = wait_for(done, timeout_s)
    seconds = time.perf_counter() - t0
    settle()
    beat.stop()
    report = getattr(getattr(w, "result", None), "report", None) or {}
    engine = report.get("seconds", {}) if name == "matching" else {}
    detail = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in engine.items() if k in ("network_s", "refine_s", "total_s"))
    status = getattr(w.state, "status", "?")
    message = getattr(w.state, "message", "")
    return {
        "job": name,
        "seconds": seconds,
        "ok": ok and status == "done",
        "status": status,
        "message": message,
        "detail": detail,
        **beat.summary(),
    }


def canvas_width(viewer) -> tuple[int, int]:
    """(canvas width, window width) in pixels, found through Qt (napari's own attributes are private)."""
    from qtpy.QtWidgets import QMainWindow, QOpenGLWidget

    dock = next(iter(viewer.window.dock_widgets.values()))
    main = dock.window()
    assert isinstance(main, QMainWindow)
    canvases = [c for c in main.findChildren(QOpenGLWidget) if c.isVisible()]
    return (max(c.width() for c in canvases) if canvases else -1), main.width()


def startup_seconds(repeats: int, settings: Path) -> list[float]:
    """Seconds from starting ``gvsl app --sample cardiac`` to its window shown, per run."""
    gvsl = Path(sys.executable).with_name("gvsl")
    cmd = [str(gvsl)] if gvsl.exists() else [sys.executable, "-m", "gvsl_app.cli"]
    env = {**os.environ, "GVSL_APP_EXIT_WHEN_SHOWN": "1", "NAPARI_CONFIG": str(settings)}
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [*cmd, "app", "--sample", "cardiac"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert proc.stdout is not None
        shown = None
        for line in proc.stdout:
            if line.startswith("gvsl app: window shown"):
                shown = time.perf_counter() - t0
        proc.wait(timeout=120)
        if shown is None:
            raise RuntimeError(f"gvsl app exited with {proc.returncode} without showing its window")
        out.append(shown)
    return out


def _parse_args(argv) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", default=",".join(JOBS), help="comma-separated subset of " + ", ".join(JOBS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads in this process and the training child")
    ap.add_argument("--startup-runs", type=int, default=3)
    ap.add_argument("--no-startup", action="store_true")
    ap.add_argument("--depth", type=int, default=1, help="innermost frames shown at the worst gap")
    ap.add_argument("--all-gaps", action="store_true", help="print every gap over 100 ms, not only the worst")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per job at most")
    args = ap.parse_args(argv)
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    unknown = set(jobs) - set(JOBS)
    if unknown:
        ap.error(f"unknown jobs: {sorted(unknown)}")
    return args, jobs


def main(argv=None) -> int:
    args, jobs = _parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_gui_"))
    os.environ["NAPARI_CONFIG"] = str(tmp / "napari_settings.yaml")  # before napari is imported
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the training child's threads
    print(f"bench_gui {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")

    if not args.no_startup:
        runs = startup_seconds(args.startup_runs, tmp / "startup_settings.yaml")
        print(
            f"startup: gvsl app --sample cardiac, window with docks shown after "
            f"{statistics.median(runs):.2f} s median ({', '.join(f'{s:.2f}' for s in runs)})"
        )

    import torch

    torch.set_num_threads(args.threads)
    from napari_plugin import _warmup
    from napari_plugin.app import build_viewer

    viewer = build_viewer(sample="cardiac")
    # The first row: the seconds after start while the engine (torch, MONAI...) is imported
    # in the background and the widgets that need it finish building. The heartbeat (a QTimer)
    # is held here, so it lives as long as the viewer.
    beat = Heartbeat(lambda: "importing" if not _warmup.is_ready() else "ready", depth=args.depth)
    results = [_warm_up(beat, _warmup.is_ready)]
    canvas, window = canvas_width(viewer)
    print(f"canvas {canvas} px of a {window} px window ({100 * canvas / max(window, 1):.0f} %) at the default size")

    print(f"{'job':<13} {'seconds':>7} {'median':>7} {'worst':>7} {'>100ms':>6}  at the worst gap")
    failed = 0
    for name in ["warm-up", *jobs]:
        r = results[0] if name == "warm-up" else run_job(viewer, name, tmp, args.timeout, args.depth)
        failed += not r["ok"]
        _print_job(name, r, args.all_gaps)
    viewer.close()
    return 1 if failed else 0


def _warm_up(beat: Heartbeat, ready: Callable[[], bool]) -> dict:
    """The warm-up row: seconds until the engine is imported, and the event loop's gaps meanwhile."""
    beat.start()
    t0 = time.perf_counter()
    wait_for(ready, 120)
    warm = {"job": "warm-up", "seconds": time.perf_counter() - t0, "ok": True, "status": "done", "message": ""}
    settle(1000)
    beat.stop()
    return {**warm, **beat.summary()}


def _print_job(name: str, r: dict, all_gaps: bool) -> None:
    note = "" if r["ok"] else f"  [{r['status']}: {r['message']}]"
    print(
        f"{name:<13} {r['seconds']:7.1f} {r['median']:5.0f}ms {r['worst']:5.0f}ms {r['over100']:6d}  {r['at']}{note}",
        flush=True,
    )
    if r.get("computing"):
        print(f"    worst gap while the worker computed: {r['computing']:.0f} ms")
    if r.get("detail"):
        print(f"    engine: {r['detail']}")
    if all_gaps:
        for gap, at in r["long"]:
            print(f"    {gap:5.0f}ms  {at}")


if __name__ == "__main__":
    sys.exit(main())

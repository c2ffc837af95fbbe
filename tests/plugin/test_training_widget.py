"""Training widget: a real (tiny) run as a child process, live metrics, stop/resume, attach, no orphans."""

from __future__ import annotations

import json
import time

import pytest
import yaml

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

from napari_plugin._training import TrainingWidget  # noqa: E402 (after the skips)


@pytest.fixture(autouse=True)
def _one_thread_children(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child trains on one of the two shared cores


def _widget(viewer, run_dir, iters=400):
    w = TrainingWidget(viewer)
    viewer.window.add_dock_widget(w, name="Training")
    w.fields["run_dir"].value = run_dir
    w.fields["size"].value = 32
    w.fields["width"].value = 8
    w.fields["iters"].value = iters
    w.fields["workers"].value = 0
    w.fields["n_synthetic"].value = 2
    w.fields["device"].value = "cpu"
    return w


def _click(qtbot, button):
    from qtpy.QtCore import Qt

    qtbot.mouseClick(button, Qt.LeftButton)


def test_training_run_progress_stop_resume_and_use_checkpoint(qtbot, make_napari_viewer, tmp_path):
    from qtpy.QtCore import QTimer

    from gvsl_app.jobs.state import shared_checkpoints
    from napari_plugin._matching import MatchingWidget

    viewer = make_napari_viewer()
    run = tmp_path / "run"
    w = _widget(viewer, run)
    matching = MatchingWidget(viewer)
    beats: list[tuple[bool, int]] = []  # per heartbeat: (child alive, iteration the GUI shows)
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: beats.append((w.job is not None and w.job.alive, w.state.iteration)))
    timer.start()
    _click(qtbot, w.start_button)
    assert w.job is not None and w.job.alive
    cmd = " ".join(w.job.proc.args)
    assert "gvsl_app.jobs.child pretrain --data synthetic:cardiac --variant gvsl" in cmd and "--size 32" in cmd
    qtbot.waitUntil(lambda: w.state.iteration >= 2, timeout=240_000)
    qtbot.wait(50)
    timer.stop()
    alive = [it for running, it in beats if running]
    print(f"heartbeat while training: {len(alive)} beats, iterations seen {sorted(set(alive))}")
    # the GUI thread kept handling events while the child trained, before and after progress arrived
    assert len(alive) >= 10 and alive[0] == 0 and alive[-1] >= 2
    assert alive == sorted(alive)  # the progress shown only moves forward
    assert w.state.status == "running" and w.state.total == 400
    assert "ETA" in w.bar.format() and w.bar.value() == w.state.iteration
    assert {"ncc", "smooth", "mse", "loss"} <= set(w.job.history)
    assert set(w.plot.labels()) >= {"ncc", "smooth", "mse", "loss"}

    _click(qtbot, w.stop_button)
    qtbot.waitUntil(lambda: w.state.status == "stopped", timeout=120_000)
    stopped_at = json.loads((run / "report.json").read_text())["iteration"]
    assert (run / "checkpoints" / "last.pt").is_file()
    assert json.loads((run / "report.json").read_text())["status"] == "stopped"
    assert 2 <= stopped_at < 400

    # Start is refused on a folder that holds a run; Resume continues it.
    assert w.start() is None
    _click(qtbot, w.resume_button)
    assert "--resume" in w.job.proc.args
    qtbot.waitUntil(lambda: w.state.iteration > stopped_at, timeout=240_000)
    _click(qtbot, w.stop_button)
    qtbot.waitUntil(lambda: w.state.status == "stopped", timeout=120_000)
    assert json.loads((run / "report.json").read_text())["iteration"] > stopped_at

    path = w.use_checkpoint()
    assert path is not None and path.endswith(".pt")
    assert shared_checkpoints(viewer).gvsl == path
    assert matching.weights.value() == path


def test_closing_the_viewer_leaves_no_orphan(qtbot, make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    run = tmp_path / "run"
    w = _widget(viewer, run, iters=1000)
    job = w.start()
    qtbot.waitUntil(lambda: w.state.iteration >= 1, timeout=240_000)
    proc = job.proc
    viewer.close()
    assert proc.poll() is not None  # shutdown waited for the child
    assert (run / "checkpoints" / "last.pt").is_file()


def test_attach_follows_a_run_started_elsewhere(qtbot, make_napari_viewer, tmp_path):
    run = tmp_path / "cluster_run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": "x", "variant": "gvsl", "iters": 6}))
    viewer = make_napari_viewer()
    w = _widget(viewer, tmp_path / "unused")
    w.attach(str(run))
    assert w.state.status == "following" and w.state.total == 6
    with open(run / "metrics.jsonl", "a") as fh:
        for i in range(1, 5):
            fh.write(
                json.dumps(
                    {"iteration": i, "ncc": -0.1 * i, "smooth": 0.01, "mse": 0.2, "loss": 0.1, "sec_per_step": 2.0}
                )
                + "\n"
            )
        fh.write('{"iteration": 5, "ncc"')  # a line being written: not read yet
    qtbot.waitUntil(lambda: w.state.iteration == 4, timeout=10_000)
    assert w.state.eta_s == pytest.approx(4.0) and w.job.history["ncc"][1] == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(': -0.5, "loss": 0.0, "sec_per_step": 2.0}\n')
        fh.write(json.dumps({"iteration": 6, "event": "validate", "val_ncc": -0.6}) + "\n")
    (run / "report.json").write_text(json.dumps({"status": "done", "iteration": 6}))
    qtbot.waitUntil(lambda: w.state.status == "done", timeout=10_000)
    assert w.state.iteration == 6 and w.job.history["val_ncc"] == ([6], [-0.6])
    assert w.job.proc is None  # nothing to stop: the run belongs to another process


def test_failed_run_shows_the_engine_error(qtbot, make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    w = _widget(viewer, tmp_path / "ft")
    w.fields["task"].value = "fine-tune: segmentation"
    w.fields["synthetic"].value = False
    w.fields["data"].value = tmp_path / "no_such_data"
    w.start()
    qtbot.waitUntil(lambda: w.state.status == "error", timeout=120_000)
    assert "no_such_data" in w.state.message
    assert any(m.startswith("Training:") and "no_such_data" in m for m in notifications)
    w.attach(str(tmp_path / "empty"))
    assert any("not a run folder" in m for m in notifications)


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_child_stops_when_the_gui_process_dies(tmp_path):
    """Even a killed GUI leaves no orphan: the child gets SIGTERM and saves its checkpoint."""
    import os
    import signal
    import subprocess
    import sys

    from gvsl_app.jobs.training_job import TrainingSpec

    run = tmp_path / "run"
    spec = TrainingSpec(run=str(run), size=32, width=8, iters=1000, device="cpu", workers=0, n_synthetic=2)
    (cmd,) = spec.commands()
    gui = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import os, subprocess, sys, time\n"
                f"p = subprocess.Popen({cmd!r}, env={{**os.environ, 'GVSL_GUI_PID': str(os.getpid())}})\n"
                "print(p.pid, flush=True)\n"
                "time.sleep(600)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(gui.stdout.readline())
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "metrics.jsonl").is_file():
        time.sleep(0.5)
    assert (run / "metrics.jsonl").is_file()
    gui.send_signal(signal.SIGKILL)
    gui.wait()

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{child}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] == "Z"

    try:
        deadline = time.time() + 120
        while time.time() < deadline and not gone():
            time.sleep(0.5)
        assert gone()
        assert (run / "checkpoints" / "last.pt").is_file()
    finally:
        if not gone():  # never leave the test's own orphan behind
            os.kill(child, signal.SIGKILL)


def test_a_run_folder_in_use_elsewhere_is_an_error_naming_the_holder(tmp_path):
    import os

    from gvsl_app.jobs.state import ERROR, TrainingState
    from gvsl_app.jobs.training_job import TrainingJob, TrainingSpec
    from gvsl_app.training.runs import RunFolder

    spec = TrainingSpec(run=str(tmp_path / "busy"), iters=2, size=24, width=4, device="cpu", workers=0, n_synthetic=2)
    state = TrainingState()
    with RunFolder(spec.run).lock():  # e.g. a `gvsl pretrain` started in a terminal
        job = TrainingJob(spec.run, state, spec.commands(), total=spec.iters)
        job.start()
        deadline = time.time() + 120
        while job.alive and time.time() < deadline:
            time.sleep(0.1)
        job.poll()
    assert state.status == ERROR
    assert f"another process (PID {os.getpid()}) is training in this run folder" in state.message


def test_the_form_is_magicgui_and_shows_the_engines_defaults_for_each_task(make_napari_viewer, tmp_path):
    from magicgui.widgets import Container

    from gvsl_app.training.config import FinetuneConfig, PretrainConfig

    w = TrainingWidget(make_napari_viewer())
    assert isinstance(w.form, Container)
    pre, ft = PretrainConfig(), FinetuneConfig()
    shown = (w.fields["size"].value, w.fields["width"].value, w.fields["iters"].value, w.fields["workers"].value)
    assert shown == (pre.size, pre.width, pre.iters, pre.workers)
    assert (
        w.fields["n_synthetic"].value == pre.n_synthetic
        and w.fields["variant"].enabled
        and not w.fields["init"].enabled
    )
    w.fields["task"].value = "fine-tune: segmentation"
    assert (w.fields["size"].value, w.fields["width"].value, w.fields["iters"].value, w.fields["workers"].value) == (
        ft.size,
        ft.width,
        ft.iters,
        ft.workers,
    )
    assert not w.fields["variant"].enabled and w.fields["init"].enabled and w.fields["linear"].enabled
    w.fields["run_dir"].value = tmp_path / "run"
    cmd = w.spec().commands()[-1]  # what the GUI starts: the CLI with the engine's values
    assert cmd[cmd.index("finetune") :][:1] == ["finetune"]
    assert cmd[cmd.index("--size") + 1] == str(ft.size) and cmd[cmd.index("--iters") + 1] == str(ft.iters)
    assert cmd[cmd.index("--run") + 1] == str(tmp_path / "run")
    w.fields["synthetic"].value = False
    assert (
        w.fields["data"].enabled and not w.fields["n_synthetic"].enabled and w.spec().data == ""
    )  # no folder chosen yet
    for name in ("data", "run_dir"):  # the path, not magicgui's "Choose directory" button, takes the row
        button = w.fields[name].choose_btn.native
        assert button.text() == "…" and button.toolTip() == "Choose directory"
        assert button.maximumWidth() <= 40 < w.fields[name].line_edit.native.sizeHint().width()


def test_loss_plot_draws_each_term_and_validation_in_its_training_colour(qtbot):
    import numpy as np

    from napari_plugin._lossplot import CYCLE, LossPlot, nice_ticks

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(420, 300)
    history = {
        "ncc": ([1, 2, 3, 4], [-0.1, -0.2, -0.3, -0.35]),
        "loss": ([1, 2, 3, 4], [0.9, 0.6, 0.4, 0.3]),
        "val_ncc": ([2, 4], [-0.15, -0.33]),
    }
    plot.update_curves(history)
    assert plot.labels() == ["loss", "ncc", "val_ncc"]  # training terms sorted, then validation
    from qtpy.QtGui import QImage

    image = plot.grab().toImage().convertToFormat(QImage.Format_RGB32)  # B, G, R, 255 per pixel
    ptr = image.constBits()
    ptr.setsize(image.height() * image.bytesPerLine())
    pixels = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine())[:, : 4 * image.width()]
    bgr = pixels.reshape(image.height(), image.width(), 4)[..., :3]

    def drawn(hex_colour: str) -> int:
        rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
        return int(np.all(bgr == rgb[::-1], axis=-1).sum())

    assert drawn(CYCLE[0]) > 20 and drawn(CYCLE[1]) > 20  # loss (C0) and ncc (C1) lines
    plot.clear()
    assert plot.labels() == []
    ticks = nice_ticks(-0.35, 0.9)
    assert 3 <= len(ticks) <= 7 and ticks[0] >= -0.35 and ticks[-1] <= 0.9
    assert all(round(t / 0.2, 9).is_integer() for t in ticks) or all(round(t / 0.5, 9).is_integer() for t in ticks)

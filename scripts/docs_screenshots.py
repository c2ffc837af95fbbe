"""Regenerate the screenshots of the README and docs/guide/app.md from the real desktop app.

Usage (needs a display; on a server under Xvfb, with a 1600x1000 screen):
  QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/docs_screenshots.py \
      [--out docs/guide/screenshots]

The viewer is the desktop app's (``napari_plugin.app.build_viewer``, as ``gvsl app --sample
cardiac`` builds it: the five GVSL docks tabbed on the right, the cardiac sample pair at
96^3), with a throw-away napari settings file so that no saved window size counts, and the
window filling the 1600x1000 screen (on a first start the app takes 90 % of it). Each
widget is driven by its real button, one after the other, on the CPU with one torch thread
(and one for the training child):

* ``matching_before.png``: the pair loaded (fixed image green, moving magenta, both
  additive, as a user sets them in the layer controls), the Z-Matching tab shown, nothing run.
* ``matching.png``: after *Run Z-Matching* with the defaults (demo weights, working size
  auto, refinement on with the ``auto`` schedule): result layers and the report.
* ``training.png``: the Training tab after a short real pre-training run (synthetic
  cardiac, width 8, size 32, 25 iterations): progress bar and loss plot.
* ``segmentation.png``: the fixed image segmented by the shipped segmenter with the fixed
  labels as ground truth: the labels layer and the per-structure volume/Dice table.
* ``clusters.png``: Feature clusters with the demo weights compared with a random
  initialisation (t-SNE panels), one structure picked in the list.

Between the matching shots and the others the matching result layers are deleted and the
images get their grey look back, so each later picture shows its own widget's result.
napari's note at the window's first show under PyQt5 (its support is deprecated) is printed,
not shown as a toast; any notification after that would be a toast over the next picture.
Every file written is printed with its size; a job that fails or does not finish, or a
notification, ends the script with a non-zero exit status and the reason.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "gvsl-studio"
WINDOW = (1600, 1000)
"""The window's size in pixels: the whole Xvfb screen of the command line above."""
TRAIN = {"size": 32, "width": 8, "iters": 25, "workers": 0, "n_synthetic": 2}
"""The short pre-training run of ``training.png`` (synthetic cardiac, CPU)."""
CLUSTER_LABEL = "Myocardium"
"""The structure picked in the Feature clusters list (ringed in the plots, alone in the viewer)."""
JOB_TIMEOUT_S = 900.0


class ShotError(RuntimeError):
    """A job failed or did not finish: no screenshot of it."""


def wait_until(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Process Qt events until ``done()`` holds; a ShotError after ``timeout_s`` seconds."""
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > end:
            raise ShotError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        app.processEvents(QEventLoop.AllEvents, 50)
        time.sleep(0.01)  # the machine is shared: no busy loop


def settle(seconds: float = 1.0) -> None:
    """Let the event loop lay out and paint what the last step changed."""
    end = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= end, seconds + 5, "the viewer to settle")


def dock(viewer, name: str):
    """The GVSL widget ``name`` docked in the app (plugin name, or the bundle's plain name)."""
    docks = viewer.window.dock_widgets
    for key in (f"{name} ({PLUGIN})", name):
        if key in docks:
            return docks[key]
    raise ShotError(f"no '{name}' dock in the app (docks: {', '.join(docks)})")


def show_tab(widget) -> None:
    """Raise the widget's dock tab, as a click on the tab does."""
    widget.parentWidget().raise_()  # the QDockWidget around it
    settle(0.8)


def finished(w) -> bool:
    """A widget's job has ended and its worker thread has returned."""
    worker = getattr(w, "_worker", None)
    return w.state.status in ("done", "error") and (worker is None or not worker.is_running)


def check_done(w, what: str) -> None:
    if w.state.status != "done":
        raise ShotError(f"{what} ended with status '{w.state.status}': {w.state.message or 'no message'}")


class Notes:
    """napari notifications while the script runs: after start-up each would be a toast over
    the next screenshot, so any fails the script.
    """

    def __init__(self) -> None:
        from napari.utils.notifications import notification_manager

        self.seen: list[tuple[str, str]] = []
        self.started = False
        notification_manager.notification_ready.connect(self._record)

    def _record(self, notification) -> None:
        severity = str(getattr(notification.severity, "value", notification.severity))
        when = "" if self.started else "at start-up, not shown: "
        print(f"  napari notification ({when}{severity}): {notification.message}", flush=True)
        if self.started:
            self.seen.append((severity, str(notification.message)))


def shoot(viewer, out: Path, name: str, notes: Notes) -> Path:
    if notes.seen:
        severity, message = notes.seen[-1]
        raise ShotError(f"a napari notification ({severity}) would cover {name}: {message}")
    settle(1.0)
    path = out / name
    shape = viewer.screenshot(str(path), canvas_only=False, flash=False).shape
    if not path.is_file():
        raise ShotError(f"napari did not write {path}")
    print(f"wrote {path} ({shape[1]}x{shape[0]} px, {path.stat().st_size / 1024:.0f} KiB)", flush=True)
    return path


def matching_shots(viewer, out: Path, notes: Notes) -> list[Path]:
    w = dock(viewer, "Z-Matching")
    w.device.setCurrentText("cpu")
    if not w.refine.isChecked() or w.refine_preset.currentText() != "auto" or w.weights.value() is not None:
        raise ShotError("the Z-Matching widget's defaults changed (demo weights, refine on, auto schedule)")
    fixed, moving = viewer.layers[w.fixed.currentText()], viewer.layers[w.moving.currentText()]
    # before: the overlay the result will show (fixed green, moving magenta, additive)
    fixed.colormap, fixed.blending = "green", "additive"
    moving.colormap, moving.blending = "magenta", "additive"
    viewer.layers.selection.active = moving
    show_tab(w)
    shots = [shoot(viewer, out, "matching_before.png", notes)]
    t0 = time.perf_counter()
    w.controls.run_button.click()
    wait_until(lambda: finished(w), JOB_TIMEOUT_S, "Z-Matching")
    check_done(w, "Z-Matching")
    rep = w.result.report
    print(
        f"  Z-Matching {time.perf_counter() - t0:.1f} s: mean Dice {rep.mean_dice_before:.4f} -> "
        f"{rep.mean_dice_after:.4f}, NCC {rep.ncc_before:.4f} -> {rep.ncc_after:.4f}, "
        f"refined {rep.refined.preset if rep.refined else None}, init {rep.init['chosen']}, {rep.quality.status}",
        flush=True,
    )
    shots.append(shoot(viewer, out, "matching.png", notes))
    # the later shots show their own results: the matching layers go, the images turn grey again
    from napari_plugin import _matching as m

    for name in (m.DISPLACEMENT, m.FOLDING, m.JACOBIAN, m.MAGNITUDE, m.WARPED_LABELS, m.WARPED):
        if name in viewer.layers:
            viewer.layers.remove(name)
    for layer in (fixed, moving):
        layer.colormap, layer.blending = "gray", "translucent"
    fixed.visible, moving.visible = True, False
    viewer.layers.selection.active = fixed
    return shots


def training_shot(viewer, out: Path, tmp: Path, notes: Notes) -> Path:
    w = dock(viewer, "Training")
    f = w.fields
    f["run_dir"].value = tmp / "pretrain-w8-s32"
    for key, value in TRAIN.items():
        f[key].value = value
    f["device"].value = "cpu"
    show_tab(w)
    t0 = time.perf_counter()
    w.start_button.click()
    wait_until(lambda: w.state.status in ("done", "stopped", "error"), JOB_TIMEOUT_S, "the training run")
    if w.state.status != "done":
        raise ShotError(f"training ended with status '{w.state.status}': {w.state.message or 'no message'}")
    settle(1.5)  # the widget polls the run twice a second: the last points reach the plot
    print(f"  training {time.perf_counter() - t0:.1f} s: {w.state.iteration}/{w.state.total} iterations", flush=True)
    return shoot(viewer, out, "training.png", notes)


def segmentation_shot(viewer, out: Path, notes: Notes) -> Path:
    w = dock(viewer, "Segmentation")
    w.image.set_layer("cardiac fixed")
    w.reference.set_layer("cardiac fixed labels")
    w.device.setCurrentText("cpu")
    show_tab(w)
    t0 = time.perf_counter()
    w.controls.run_button.click()
    wait_until(lambda: finished(w), JOB_TIMEOUT_S, "Segmentation")
    check_done(w, "Segmentation")
    if w.table.rowCount() == 0 or "mean Dice" not in w.summary.text():
        raise ShotError(f"Segmentation shows no Dice table (summary: {w.summary.text()!r})")
    print(f"  segmentation {time.perf_counter() - t0:.1f} s: {w.summary.text()}", flush=True)
    return shoot(viewer, out, "segmentation.png", notes)


def clusters_shot(viewer, out: Path, notes: Notes) -> Path:
    w = dock(viewer, "Feature clusters")
    w.image.set_layer("cardiac fixed")
    w.labels.set_layer("cardiac fixed labels")
    w.weights_b.combo.setCurrentIndex(w.weights_b.combo.findData("random"))
    w.device.setCurrentText("cpu")
    seg = "cardiac fixed segmentation"
    if seg in viewer.layers:
        viewer.layers[seg].visible = False  # the previous shot's result would hide the points' colours
    show_tab(w)
    t0 = time.perf_counter()
    w.controls.run_button.click()
    wait_until(lambda: finished(w), JOB_TIMEOUT_S, "Feature clusters")
    check_done(w, "Feature clusters")
    if len(w.canvas.panels) != 2:
        raise ShotError(f"Feature clusters drew {len(w.canvas.panels)} t-SNE panels, not 2")
    rows = [w.label_list.item(r).text().split("  (")[0] for r in range(w.label_list.count())]
    if CLUSTER_LABEL in rows:
        w.label_list.setCurrentRow(rows.index(CLUSTER_LABEL))  # as a click on the structure
    titles = "; ".join(p["title"].replace("\n", " ") for p in w.canvas.panels)
    print(f"  feature clusters {time.perf_counter() - t0:.1f} s: {titles}", flush=True)
    return shoot(viewer, out, "clusters.png", notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "guide" / "screenshots", help="folder for the PNGs")
    args = ap.parse_args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        print(
            'docs_screenshots: no display; run it under Xvfb: QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" '
            ".venv/bin/python scripts/docs_screenshots.py",
            file=sys.stderr,
        )
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gvsl-docs-"))
    os.environ["NAPARI_CONFIG"] = str(tmp / "napari_settings.yaml")  # before napari is imported
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # this process and the training child: one thread each
    t_start = time.perf_counter()

    import torch

    torch.set_num_threads(1)
    from napari.settings import get_settings

    from napari_plugin import _warmup
    from napari_plugin.app import build_viewer, quiet_launch

    quiet_launch()
    notes = Notes()
    app_settings = get_settings().application  # the throw-away file's
    level = app_settings.gui_notification_level
    # napari's own note at the window's first show under PyQt5 (its support is deprecated) would
    # otherwise stay as a toast over every picture; it is printed above instead
    app_settings.gui_notification_level = "error"
    viewer = build_viewer(sample="cardiac")
    written: list[Path] = []
    try:
        viewer.window.set_geometry(0, 0, *WINDOW)
        wait_until(_warmup.is_ready, 300, "the engine's background import")
        settle(2.0)
        app_settings.gui_notification_level = level
        notes.started = True
        written += matching_shots(viewer, out, notes)
        written.append(training_shot(viewer, out, tmp, notes))
        written.append(segmentation_shot(viewer, out, notes))
        written.append(clusters_shot(viewer, out, notes))
    except ShotError as exc:
        print(f"docs_screenshots: FAILED: {exc}", file=sys.stderr)
        if written:
            print(f"  (written before the failure: {', '.join(p.name for p in written)})", file=sys.stderr)
        return 1
    finally:
        viewer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(written)} screenshots in {out} ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

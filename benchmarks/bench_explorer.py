"""Label explorer on a large label map: time to the table and the viewer's longest stall.

Usage (needs a display; on a server: ``xvfb-run -a python benchmarks/bench_explorer.py``):
  python benchmarks/bench_explorer.py [--side 256] [--no-distances]

Two ``--side``^3 cardiac label maps (a synthetic subject's seven structures upsampled with
nearest neighbour, and a copy with the LV shifted by 3 voxels and the aorta removed) are
added to a real napari viewer with the Label explorer docked; *Compare* runs while a 10 ms
Qt timer records the gaps between its beats (a gap is the longest time the event loop was
busy, i.e. the viewer frozen). Prints the seconds until the table is filled, the median and
longest gap, and the number of gaps over 100 ms.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--no-distances", action="store_true")
    args = ap.parse_args(argv)

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication
    from scipy import ndimage

    from gvsl_app.data.synthetic import make_cardiac_subject
    from napari_plugin._explorer import LabelExplorerWidget

    _, labels = make_cardiac_subject(11, (96, 96, 96))
    zoom = args.side / 96
    ref = ndimage.zoom(labels.array, zoom, order=0)
    edited = ref.copy()
    lv = edited == 1
    edited[lv] = 0
    edited[np.roll(lv, 3, axis=2) & (edited == 0)] = 1
    edited[edited == 6] = 0
    spacing = tuple(s / zoom for s in labels.spacing[::-1])
    viewer = napari.Viewer(show=True)
    viewer.add_labels(ref, name="reference", scale=spacing)
    viewer.add_labels(edited, name="edited", scale=spacing)
    w = LabelExplorerWidget(viewer)
    viewer.window.add_dock_widget(w, name="Label explorer")
    w.labels.set_layer("edited")
    w.reference.set_layer("reference")
    w.distances.setChecked(not args.no_distances)
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()

    beats: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    timer.start()
    t0 = time.perf_counter()
    w.run()
    while w.state.status not in ("done", "error"):
        app.processEvents()
        time.sleep(0.002)
    t_done = time.perf_counter() - t0
    for _ in range(10):
        app.processEvents()
    timer.stop()
    if w.state.status == "error":
        print(f"error: {w.state.message}")
        return 1
    gaps = np.diff(beats) * 1000 if len(beats) > 1 else np.array([0.0])
    print(
        f"{args.side}^3 label maps, {w.table.rowCount()} structures, distances {'off' if args.no_distances else 'on'}: "
        f"table after {t_done:.1f} s; heartbeat gaps median {np.median(gaps):.0f} ms, longest {gaps.max():.0f} ms, "
        f"{int((gaps > 100).sum())} over 100 ms ({len(beats)} beats)"
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

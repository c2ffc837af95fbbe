"""Small helpers and constants the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from gvsl_app.io.volume import Volume
from gvsl_app.training.config import PretrainConfig

SMALL = (48, 48, 48)
WIDTHS = (8, 16, 32, 64, 128, 64, 32, 16, 8)


def rotated(volume, degrees: float = 30.0):
    """The same voxels with a non-identity direction (rotation about z) and odd origin."""
    a = np.deg2rad(degrees)
    d = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    return volume.with_array(volume.array, direction=tuple(d.flatten()), origin=(12.5, -40.0, 7.25))


# ---------------------------------------------------------------------------- training runs

ROOT = Path(__file__).resolve().parents[1]
GVSL = [sys.executable, "-m", "gvsl_app.cli"]


def small(run, **kw) -> PretrainConfig:
    base = dict(
        data="synthetic:cardiac",
        n_synthetic=4,
        run=str(run),
        iters=6,
        size=32,
        width=8,
        workers=0,
        log_every=1,
        ckpt_every=2,
        val_every=3,
        device="cpu",
        seed=0,
    )
    base.update(kw)
    return PretrainConfig(**base)


def drain(gen, stop=None, stop_at=None):
    last = None
    for p in gen:
        last = p
        if stop is not None and p.phase == "train" and p.iteration == stop_at:
            stop.set()
    return last


# ---------------------------------------------------------------------------- volume IO


def rotation(ax: float, ay: float, az: float) -> tuple[float, ...]:
    """Row-major 3x3 proper rotation (degrees about x, then y, then z)."""
    ax, ay, az = (math.radians(a) for a in (ax, ay, az))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return tuple((rz @ ry @ rx).ravel())


ROT = rotation(20.0, -10.0, 30.0)
SPACING = (0.7, 1.3, 2.5)
ORIGIN = (-12.5, 30.25, 7.0)


def make_volume(shape=(6, 9, 11), dtype=np.int16, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1500, size=shape).astype(dtype)
    return Volume(arr, SPACING, ORIGIN, ROT)


def torchrun(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m torch.distributed.run --standalone --nproc_per_node=2 ARGS`` from the
    repository root, one OpenMP thread per rank, capturing stdout and stderr as text.

    ``--standalone``: torchrun's agent binds its rendezvous store to port 0 itself and hands
    the port to its workers, so no port is chosen here, closed, and bound again later by
    someone else (a free port picked by the test raced with the other DDP tests and
    processes on the machine). A collective that waits for a rank that is gone fails after
    ``GVSL_DIST_TIMEOUT_S`` (120 s here, gvsl_app.training.distributed) with gloo's message,
    inside ``timeout``; past ``timeout`` the whole process group (agent and ranks) is killed,
    never left running. The caller asserts on ``returncode`` with ``stderr`` in the message,
    so a failure says why.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GVSL_DIST_TIMEOUT_S": "120"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the ranks too, not only the agent
        out, err = proc.communicate()
        raise AssertionError(f"torchrun {args} ran past {timeout} s; stderr:\n{err[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def matching_widget(viewer, ckpt, size: int = 32):
    """A Z-Matching widget docked in ``viewer`` with ``ckpt`` chosen, on the CPU, at a small
    working size and with the refinement off (the tests that refine say so).
    """
    from napari_plugin._matching import MatchingWidget

    w = MatchingWidget(viewer)
    viewer.window.add_dock_widget(w, name="Z-Matching")
    assert w.refine.isChecked()  # the best quality by default, as `gvsl match`
    w.refine.setChecked(False)
    w.weights.add_path(str(ckpt))
    w.device.setCurrentText("cpu")
    w.cube_size.setValue(size)
    return w


def match_report(**fields):
    """A matching report with plain values, ``fields`` replacing them."""
    from gvsl_app.services.match_result import MatchReport, Quality

    base = dict(
        fixed="f.nii.gz",
        moving="m.nii.gz",
        working_size=32,
        network_passes=1,
        device="cpu",
        weights="demo",
        physical_overlap=1.0,
        init={"chosen": "mass", "rotation_deg": 3.0, "translation_mm": [3.0, 4.0, 0.0]},
        similarity="ncc",
        similarity_reason="one contrast",
        moving_data_share=1.0,
        overlap_masked=False,
        refined=None,
        similarity_grid=[32, 32, 32],
        ncc_before=0.2,
        ncc_after=0.2,
        ncc_network=0.2,
        similarity_before=0.2,
        similarity_after=0.2,
        fallback=[],
        warnings=[],
        folding_percent=0.0,
        jacobian_min=1.0,
        jacobian_max=1.0,
        max_displacement_mm=0.0,
        quality=Quality("ok", [], 1.0, 0.1, 0.2, 0.3),
        seconds={"total_s": 1.0, "network_s": 0.5},
    )
    return MatchReport(**{**base, **fields})


def in_file_order(array, record: dict):
    """A reoriented layer's voxels in its file's voxel order (``record``: ``metadata["gvsl_orientation"]``;
    axes after the first three, such as a displacement field's components, stay).
    """
    import numpy as np

    flipped = array[tuple(slice(None, None, -1) if f else slice(None) for f in record["flips"])]
    return np.transpose(flipped, (*np.argsort(record["axes"]), *range(3, np.ndim(array))))  # trailing axes stay


def write_dicom_series(folder, array: np.ndarray, spacing, origin, series_uid: str, modality="CT", prefix="slice"):
    """A DICOM series with one file per slice, positioned like a scanner would write it."""
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    d = img.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        s = img[:, :, k]
        tags = {
            "0008|0060": modality,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0010|0020": "PHANTOM",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0018|0050": f"{spacing[2]:.6f}",
        }
        for tag, value in tags.items():
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(s)

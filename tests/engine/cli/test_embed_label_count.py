"""``gvsl embed`` refuses a label map it cannot describe up front (#33): 70,000 distinct labels
gave no output for 300 s (the sampling scanned the volume once per label); now exit 2 at
once, one line naming the labels file and the count, nothing left behind. In the style of
test_bad_input.py (the real entry point, in-process).
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import models
from gvsl_app.cli import main


def _write(arr, path):
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed_count")
    img = np.random.default_rng(0).normal(size=(48, 48, 48)).astype(np.float32)
    many = np.zeros(48**3, np.int32)
    many[:70_000] = np.arange(1, 70_001)
    # 200 structures of 552 voxels: 100,000 voxels to sample at --per-label 500
    big = np.zeros(48**3, np.int32)
    big[: 200 * 552] = np.repeat(np.arange(1, 201), 552)
    gv = models.GVSL(widths=models.DEMO_WIDTHS)
    torch.save(
        {"format": "gvsl-studio", "kind": "pretrain", "model_config": gv.config(), "model": gv.state_dict()},
        root / "gvsl.pt",
    )
    return {
        "img": _write(img, root / "img.nii.gz"),
        "many": _write(many.reshape(48, 48, 48), root / "instances_labels.nii.gz"),
        "big": _write(big.reshape(48, 48, 48), root / "parcels_labels.nii.gz"),
        "gvsl": str(root / "gvsl.pt"),
    }


@pytest.fixture()
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.parametrize(
    "labels, per_label, culprit",
    [
        ("many", 500, "instances_labels.nii.gz: 70000 distinct labels; embedding describes at most 1000"),
        ("big", 500, "parcels_labels.nii.gz: 200 labels x up to 500 voxels each would sample 100000 voxels"),
    ],
)
def test_embed_refuses_more_labels_than_it_can_describe_at_once(
    files, tmp_path, capsys, restore_signals, labels, per_label, culprit
):
    out = tmp_path / "OUT"
    argv = ["embed", files["img"], files[labels], "--out", str(out), "--weights", files["gvsl"]]
    t0 = time.perf_counter()
    rc = main([*argv, "--size", "32", "--per-label", str(per_label), "--device", "cpu"])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") <= 2, err
    assert culprit in err, err
    assert seconds < 30, seconds  # refused before any sampling, network or t-SNE
    assert not out.exists()

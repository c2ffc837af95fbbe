"""The engine on a CUDA device: bf16 autocast, matching (network alone and refined), pre-training
and fine-tuning runs, sliding-window segmentation, each compared with the CPU or reloaded on it.

Every test needs CUDA and is skipped without it. Sizes stay tiny (width-8 networks, 32^3-48^3
volumes, a few iterations): these check that the CUDA paths run and agree with the CPU, not
the models' quality. No napari or Qt is imported.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gvsl_app.data.datasets import PairDataset, validation_pair
from gvsl_app.data.synthetic import make_cardiac_subject
from gvsl_app.services.matching import match
from gvsl_app.services.segment import load_segmenter, segment
from gvsl_app.training.config import FinetuneConfig
from gvsl_app.training.finetune import finetune
from gvsl_app.training.pretrain import build_model, pretrain, validate
from gvsl_app.training.runs import read_metrics
from models import RefineSchedule, resolve_device
from models.checkpoint import read_checkpoint
from models.device import autocast

from helpers import drain, small

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

DEVICE = "cuda"

SHORT_REFINE = RefineSchedule(affine_levels=((24, 40),), deformable_levels=((24, 12, 30), (48, 16, 15)))
"""A refinement of the default's form (affine, then two deformable levels up to the 48^3 scan), shorter."""


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of voxels on which two label maps agree."""
    assert a.shape == b.shape
    return float((a == b).mean())


def _on_device(tensors) -> set[str]:
    return {t.device.type for t in tensors if isinstance(t, torch.Tensor)}


def test_auto_picks_cuda_and_autocast_runs_convolutions_in_bf16():
    dev = resolve_device("auto")
    assert dev.type == "cuda"
    conv = torch.nn.Conv3d(1, 4, 3, padding=1).to(dev)
    x = torch.randn(1, 1, 8, 8, 8, device=dev)
    with autocast(dev):
        y = conv(x)
    assert y.is_cuda and y.dtype == torch.bfloat16
    with autocast(dev, enabled=False):
        assert conv(x).dtype == torch.float32
    with autocast(torch.device("cpu")):  # a no-op off CUDA
        assert conv.cpu()(x.cpu()).dtype == torch.float32
    with pytest.raises(ValueError, match="does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.fixture(scope="module")
def cardiac_pair():
    """Two synthetic cardiac CT subjects (seeds 3000, 3001) at 48^3 with their labels."""
    fixed, fl = make_cardiac_subject(3000, (48, 48, 48))
    moving, ml = make_cardiac_subject(3001, (48, 48, 48))
    return fixed, moving, fl, ml


@pytest.mark.parametrize("refine", [False, True], ids=["network", "refined"])
def test_matching_on_cuda_agrees_with_the_cpu(cardiac_pair, refine):
    """The demo weights on the same pair: CUDA (bf16 network, fp32 refinement) and CPU give
    the same map to within bf16 rounding, the same Dice, and the report names the device.
    """
    fixed, moving, fl, ml = cardiac_pair
    kw = dict(moving_labels=ml, fixed_labels=fl, refine=refine, schedule=SHORT_REFINE if refine else None)
    cpu = match(fixed, moving, device="cpu", **kw)
    torch.cuda.reset_peak_memory_stats()
    gpu = match(fixed, moving, device=DEVICE, **kw)
    assert gpu.report.device.startswith("cuda") and cpu.report.device == "cpu"
    assert torch.cuda.max_memory_allocated() > 0  # the network really ran on the GPU
    for r in (cpu, gpu):
        assert r.report.fallback == [], r.report.fallback  # a real map on both, not the identity
        assert r.report.mean_dice_after > r.report.mean_dice_before
        assert np.isfinite(r.displacement_mm).all() and np.isfinite(r.warped.array).all()
    assert gpu.displacement_mm.shape == cpu.displacement_mm.shape == (*fixed.shape, 3)
    assert gpu.warped.shape == fixed.shape and gpu.warped_labels is not None
    moved = np.linalg.norm(cpu.displacement_mm, axis=-1).mean()
    diff = np.linalg.norm(gpu.displacement_mm - cpu.displacement_mm, axis=-1)
    assert moved > 0.5  # the map moves the scan by more than half a millimetre on average
    assert diff.mean() < 0.1 * moved + 0.1, (diff.mean(), moved)
    assert gpu.report.mean_dice_after == pytest.approx(cpu.report.mean_dice_after, abs=0.03)
    assert gpu.report.ncc_after == pytest.approx(cpu.report.ncc_after, abs=0.01)
    assert _agreement(gpu.warped_labels.array, cpu.warped_labels.array) > 0.97
    if refine:
        g, c = gpu.report.refined, cpu.report.refined
        assert g.cpu_threads is None and isinstance(c.cpu_threads, int)  # no CPU thread cap on CUDA
        assert g.steps_done > 0 and not g.stopped
        assert [lv["shape"] for lv in g.levels] == [lv["shape"] for lv in c.levels]
        assert gpu.report.ncc_after >= gpu.report.ncc_network
    else:
        assert gpu.report.refined is None
        assert gpu.report.ncc_after == gpu.report.ncc_network


def test_pretraining_on_cuda_writes_a_checkpoint_that_reproduces_its_validation_on_cpu(tmp_path, cardiac_pair):
    cfg = small(tmp_path / "run", device=DEVICE, iters=6, ckpt_every=3, val_every=3)
    assert cfg.amp  # bf16 autocast: the CUDA default
    last = drain(pretrain(cfg))
    assert last.phase == "done", last.message
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "done" and report["device"].startswith("cuda")
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in rows if "event" not in r]
    assert [r["iteration"] for r in steps] == list(range(1, 7))
    assert all(math.isfinite(r[k]) for r in steps for k in ("ncc", "smooth", "mse", "loss"))
    val6 = [r for r in rows if r.get("event") == "validate" and r["iteration"] == 6]
    assert len(val6) == 1

    # last.pt (iteration 6) loads on the CPU and scores the validation pair as the CUDA run did
    ck = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["iteration"] == 6 and _on_device(ck["model"].values()) == {"cpu"}
    model = build_model(small(tmp_path / "unused"))
    model.load_state_dict(ck["model"])
    torch.manual_seed(cfg.seed)
    init = build_model(cfg)  # the run's initial weights (same seed)
    assert any(not torch.equal(init.state_dict()[k], v) for k, v in ck["model"].items())  # it trained
    pair = validation_pair(PairDataset(cfg.data, cfg.size, seed=cfg.seed, n_synthetic=cfg.n_synthetic))
    on_cpu = validate(model, cfg, pair)
    assert all(math.isfinite(v) for v in on_cpu.values())
    assert on_cpu["ncc"] == pytest.approx(val6[0]["val_ncc"], abs=5e-3)
    assert on_cpu["mse"] == pytest.approx(val6[0]["val_mse"], rel=0.05, abs=1e-3)

    # the checkpoint matches on the CPU through the service
    fixed, moving, _, _ = cardiac_pair
    res = match(
        fixed, moving, weights=tmp_path / "run" / "checkpoints" / "last.pt", size=32, device="cpu", refine=False
    )
    assert res.report.device == "cpu" and np.isfinite(res.displacement_mm).all()

    # and the run resumes on CUDA from it (optimiser state and CUDA RNG state restored)
    last = drain(pretrain(small(tmp_path / "run", device=DEVICE, iters=8, ckpt_every=3, val_every=3, resume=True)))
    assert last.phase == "done", last.message
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 8


def test_finetuning_on_cuda_and_sliding_window_segmentation_agree_with_cpu(tmp_path, seg_data):
    cfg = FinetuneConfig(
        data=str(seg_data),
        run=str(tmp_path / "seg"),
        init="scratch",
        iters=20,
        size=24,
        width=8,
        batch=2,
        lr=3e-3,
        device=DEVICE,
        val_every=10,
        val_fraction=0.2,
        test_fraction=0.2,
        seed=0,
    )
    assert cfg.amp
    last = drain(finetune(cfg))
    assert last.phase == "done", last.message
    report = json.loads((tmp_path / "seg" / "report.json").read_text())
    assert math.isfinite(report["test"]["mean_dice"])
    rows = [r for r in read_metrics(tmp_path / "seg" / "metrics.jsonl") if "event" not in r]
    assert rows and all(math.isfinite(r["loss"]) for r in rows)

    best = tmp_path / "seg" / "checkpoints" / "best.pt"
    net, ck = load_segmenter(best, torch.device("cpu"))  # a CUDA-trained checkpoint loads on the CPU
    assert ck["kind"] == "segmentation" and ck["preprocess"]["size"] == 24
    assert _on_device(ck["model"].values()) == {"cpu"}
    image, labels = make_cardiac_subject(7, (40, 36, 44))  # larger than the 24^3 window: several windows
    on_cpu = segment(image, best, device="cpu", reference=labels)
    on_gpu = segment(image, best, device=DEVICE, reference=labels)
    assert on_cpu.report["device"] == "cpu" and on_gpu.report["device"].startswith("cuda")
    a, b = on_gpu.labels.array, on_cpu.labels.array
    assert a.shape == b.shape == image.shape and a.dtype == b.dtype == np.uint8
    assert a.max() < net.n_classes and len(np.unique(b)) > 1  # the CPU prediction is not all background
    assert _agreement(a, b) > 0.95
    assert on_gpu.report["mean_dice"] == pytest.approx(on_cpu.report["mean_dice"], abs=0.05)

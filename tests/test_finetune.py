"""Fine-tuning runs: from pre-trained or scratch, linear probe, classification AUC, evaluate;
official checkpoints as initialisation."""

import ast
import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from gvsl_app.data.datasets import ClassificationDataset, load_labelled_volumes
from gvsl_app.services.inference import segment_array
from gvsl_app.training.config import FinetuneConfig
from gvsl_app.training.finetune import finetune
from gvsl_app.training.pretrain import pretrain
from models.checkpoint import read_checkpoint
from models.downstream import ClassificationNet, SegmentationNet

from helpers import GVSL, ROOT, drain, small


def hand_dice(a, b) -> float:
    """Dice of two boolean masks, counted by hand (1.0 when both are empty, as the reports)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def best_model(run: Path):
    """The network of a fine-tuning run's best checkpoint, in eval mode."""
    ck = read_checkpoint(run / "checkpoints" / "best.pt")
    mc = ck["model_config"]
    net = SegmentationNet(mc["n_classes"], mc["widths"]) if "n_classes" in mc else ClassificationNet(**mc)
    net.load_state_dict(ck["model"])
    return net.eval()


def per_case_dice(run: Path, data, names, size: int) -> dict[str, dict[int, float]]:
    """Dice per label of the best checkpoint's segmentation of each case, counted here."""
    net = best_model(run)
    out = {}
    for name, (img, lab, _) in zip(names, load_labelled_volumes(data, names)):
        pred = segment_array(net, img, size, torch.device("cpu"))
        out[name] = {k: hand_dice(pred == k, lab == k) for k in range(1, net.n_classes)}
    return out


def test_finetune_from_pretrained_and_scratch_and_linear_freezes_backbone(tmp_path, seg_data):
    drain(pretrain(small(tmp_path / "pre", iters=2, val_every=2)))
    init = tmp_path / "pre" / "checkpoints" / "last.pt"
    common = dict(
        data=str(seg_data),
        iters=4,
        size=24,
        width=8,
        batch=2,
        device="cpu",
        val_every=2,
        val_fraction=0.2,
        test_fraction=0.2,
        seed=0,
    )
    for name, init_ck, linear in (
        ("scratch", "scratch", False),
        ("full", str(init), False),
        ("linear", str(init), True),
    ):
        last = drain(finetune(FinetuneConfig(run=str(tmp_path / name), init=init_ck, linear=linear, **common)))
        assert last.phase == "done", name
        report = json.loads((tmp_path / name / "report.json").read_text())
        splits = report["splits"]
        assert splits["test"] and set(splits["test"]).isdisjoint(splits["train"] + splits["val"])
        # the test numbers are the best checkpoint's on the held-out cases, recounted here
        cases = per_case_dice(tmp_path / name, seg_data, splits["test"], size=24)
        for k in range(1, 8):
            expect = np.mean([d[k] for d in cases.values()])
            assert report["test"][f"dice_{k}"] == pytest.approx(expect, abs=1e-6), (name, k)
        assert report["test"]["mean_dice"] == pytest.approx(np.mean([report["test"][f"dice_{k}"] for k in range(1, 8)]))
    pre = read_checkpoint(init)["model"]
    lin = read_checkpoint(tmp_path / "linear" / "checkpoints" / "last.pt")["model"]
    full = read_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    backbone = [k for k in lin if k.startswith("unet.")]
    assert backbone and all(torch.equal(lin[k], pre[k]) for k in backbone)
    assert any(not torch.equal(full[k], pre[k]) for k in backbone)
    assert not torch.equal(lin["head.weight"], full["head.weight"])


def test_classification_finetune_reports_auc(tmp_path, cls_data):
    last = drain(
        finetune(
            FinetuneConfig(
                data=str(cls_data),
                run=str(tmp_path / "cls"),
                task="cls",
                iters=3,
                size=24,
                width=8,
                batch=2,
                device="cpu",
                val_every=3,
                val_fraction=0.25,
                test_fraction=0.25,
            )
        )
    )
    assert last.phase == "done"
    report = json.loads((tmp_path / "cls" / "report.json").read_text())
    test = report["splits"]["test"]
    with open(cls_data / "labels.csv", newline="") as fh:
        truth = {row["name"]: int(row["label"]) for row in csv.DictReader(fh)}
    ys = np.array([truth[n] for n in test])
    assert set(ys) == {0, 1}  # both classes held out, so the AUC is defined
    # the AUC of the best checkpoint's scores on the held-out cases, from its definition:
    # the share of (abnormal, normal) pairs ranked correctly, ties counting one half
    net = best_model(tmp_path / "cls")
    images = ClassificationDataset(cls_data, 24, names=test)
    with torch.no_grad():
        scores = np.array([float(torch.sigmoid(net(images[i]["image"][None]))[0, 0]) for i in range(len(test))])
    pairs = [(p, q) for p in scores[ys == 1] for q in scores[ys == 0]]
    expect = np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs])
    assert report["test"]["auc"] == pytest.approx(expect)


def test_official_checkpoint_as_init(tmp_path, seg_data):
    rows = [
        l.split("\t")
        for l in (ROOT / "tests" / "data" / "official_gvsl_state_dict.tsv").read_text().splitlines()
        if "\t" in l and "." in l.split("\t")[0]
    ]
    g = torch.Generator().manual_seed(0)
    state = {n: torch.randn(ast.literal_eval(s), generator=g) * 0.01 for n, s, _ in rows}
    path = tmp_path / "GVSL_official.pth"
    torch.save(state, path)
    cfg = FinetuneConfig(
        data=str(seg_data),
        run=str(tmp_path / "off"),
        init=str(path),
        iters=1,
        size=16,
        batch=1,
        device="cpu",
        val_every=1,
        linear=True,
        test_fraction=0.0,
        val_fraction=0.2,
    )
    last = drain(finetune(cfg))
    assert last.phase == "done"
    ck = read_checkpoint(tmp_path / "off" / "checkpoints" / "last.pt")
    assert ck["model_config"]["widths"][0] == 32
    assert torch.equal(
        ck["model"]["unet.down4.maxpool_conv.1.double_conv.3.weight"],
        state["unet.down4.maxpool_conv.1.double_conv.3.weight"],
    )


def test_evaluate_cli_writes_report(tmp_path, seg_data):
    run = tmp_path / "ev"
    drain(
        finetune(
            FinetuneConfig(
                data=str(seg_data), run=str(run), iters=2, size=24, width=8, batch=1, device="cpu", val_every=2
            )
        )
    )
    out = subprocess.run(
        GVSL + ["evaluate", "--run", str(run), "--data", str(seg_data), "--device", "cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads((run / "report.json").read_text())
    ev = report["evaluation"]
    names = sorted(p.name.split(".nii")[0] for p in (seg_data / "images").glob("*.nii.gz"))
    assert ev["n"] == 6 and sorted(ev["per_case"]) == names
    # every case of the folder, scored with the best checkpoint, recounted here
    cases = per_case_dice(run, seg_data, names, size=24)
    for name, per in cases.items():
        for k, v in per.items():
            assert ev["per_case"][name][str(k)] == pytest.approx(v, abs=1e-6), (name, k)
    assert ev["dice"] == pytest.approx({str(k): np.mean([d[k] for d in cases.values()]) for k in range(1, 8)})
    assert ev["mean_dice"] == pytest.approx(np.mean(list(ev["dice"].values())))
    # the table printed shows the same numbers
    lines = out.stdout.splitlines()
    for k, v in ev["dice"].items():
        assert f"{k:>8} {v:7.4f}" in lines, out.stdout
    assert f"{'mean':>8} {ev['mean_dice']:7.4f}   (6 cases, {seg_data})" in lines, out.stdout


def test_evaluate_on_a_pretraining_run_says_what_to_do(tmp_path):
    from gvsl_app.training.finetune import evaluate_run

    cfg = small(tmp_path / "pre", iters=1, val_every=1)
    drain(pretrain(cfg))
    with pytest.raises(ValueError, match="is a pre-training run.*gvsl finetune --init"):
        evaluate_run(cfg.run, str(tmp_path))

"""Fine-tuning runs: from pre-trained or scratch, linear probe, classification AUC, evaluate;
official checkpoints as initialisation.
"""

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
from gvsl_app.training.config import FinetuneConfig, load_config
from gvsl_app.training.finetune import finetune
from gvsl_app.training.pretrain import pretrain
from gvsl_app.training.runs import read_metrics
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


def test_finetune_resume_keeps_the_saved_data_splits_and_learning_rate(tmp_path, seg_data):
    run = tmp_path / "ft"
    common = dict(size=16, batch=1, device="cpu", val_every=2, test_fraction=0.2)
    drain(finetune(FinetuneConfig(data=str(seg_data), run=str(run), iters=2, lr=2e-3, **common)))
    splits = json.loads((run / "report.json").read_text())["splits"]
    # other data and another rate (as `gvsl finetune --run R --resume --data D --lr 0.1` passes them)
    asked = load_config(FinetuneConfig, None, run=str(run), resume=True, iters=4, data=str(tmp_path), lr=0.1)
    with pytest.raises(ValueError, match=rf"data '{seg_data}' -> '{tmp_path}', lr 0.002 -> 0.1 \(saved -> asked\)"):
        drain(finetune(asked))
    assert read_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 2
    # --data spelt otherwise but naming the same folder, the rest left out: the saved run goes on
    last = drain(finetune(load_config(FinetuneConfig, None, run=str(run), resume=True, iters=4, data=f"{seg_data}/.")))
    assert last.phase == "done" and last.iteration == 4
    assert json.loads((run / "report.json").read_text())["splits"] == splits
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "event" not in r]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4] and {r["lr"] for r in rows} == {2e-3}
    ck = read_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["optimizer"]["param_groups"][0]["lr"] == 2e-3
    assert {k: ck["config"][k] for k in ("data", "lr", "size", "iters", "device")} == {
        "data": str(seg_data),
        "lr": 2e-3,
        "size": 16,
        "iters": 4,
        "device": "cpu",
    }


def test_segmentation_checkpoints_record_the_training_spacing_and_export_keeps_it(tmp_path, seg_data):
    import SimpleITK as sitk

    from gvsl_app.services.export_weights import export_weights

    run = tmp_path / "sp"
    drain(finetune(FinetuneConfig(data=str(seg_data), run=str(run), iters=1, size=16, batch=1, device="cpu")))
    train = json.loads((run / "report.json").read_text())["splits"]["train"]
    spacings = np.array([sitk.ReadImage(str(seg_data / "images" / f"{n}.nii.gz")).GetSpacing() for n in train])
    assert len(train) >= 2 and np.ptp(spacings, axis=0).max() > 0.01  # the synthetic subjects differ
    exported = export_weights(run / "checkpoints" / "last.pt", tmp_path / "seg.pt")
    for ck in (read_checkpoint(run / "checkpoints" / "last.pt"), read_checkpoint(exported)):
        pre = ck["preprocess"]
        assert pre["size"] == 16
        np.testing.assert_allclose(pre["spacing"], np.median(spacings, axis=0), rtol=1e-5)
        np.testing.assert_allclose(pre["spacing_range"], [spacings.min(0), spacings.max(0)], rtol=1e-5)


def _cardiac_nifti(tmp_path, shape, seed=0, direction_degrees=0.0):
    """A synthetic cardiac subject written as NIfTI and read back (image and labels Volumes)."""
    from gvsl_app.data.synthetic import make_cardiac_subject
    from gvsl_app.io.images import read_labels, read_volume, write_volume

    from helpers import rotated

    image, labels = make_cardiac_subject(seed, shape)
    if direction_degrees:
        image, labels = rotated(image, direction_degrees), rotated(labels, direction_degrees)
    write_volume(image, tmp_path / "img.nii.gz")
    write_volume(labels, tmp_path / "lab.nii.gz", is_label=True)
    image = read_volume(tmp_path / "img.nii.gz")
    return image, read_labels(tmp_path / "lab.nii.gz", image)


def test_segment_resamples_an_image_unlike_the_training_spacing_and_returns_its_grid(tmp_path, seg_ckpt, monkeypatch):
    from gvsl_app.data.preprocess import normalise
    from gvsl_app.services import segment as seg

    image, _ = _cardiac_nifti(tmp_path, (40, 40, 40), direction_degrees=30.0)
    ck = read_checkpoint(seg_ckpt)
    ck["preprocess"] = {"size": 32, "spacing": [1.1, 1.1, 1.5], "spacing_range": [[1.0, 1.0, 1.4], [1.2, 1.2, 1.6]]}
    weights = tmp_path / "seg_spacing.pt"
    torch.save(ck, weights)
    seen = []

    def bright(model, array, roi, device):  # a stand-in network: contrast-filled blood is label 1
        seen.append(array)
        return (array > 0.63).astype(np.uint8)

    monkeypatch.setattr(seg, "segment_array", bright)
    res = seg.segment(image, weights, device="cpu")
    # inferred at the nearest training spacing (2.8 / 3.5 mm -> 1.2 / 1.6 mm), returned on the image's grid
    expect = [round(n * s / t) for n, s, t in zip((40, 40, 40), image.spacing[::-1], (1.6, 1.2, 1.2))]
    assert seen[0].shape == tuple(expect) and seen[0].dtype == np.float32
    assert res.report["spacing"]["resampled_to"] == pytest.approx([1.2, 1.2, 1.6])
    labels = res.labels
    assert labels.shape == image.shape and labels.array.dtype == np.uint8
    assert (labels.spacing, labels.origin, labels.direction) == (image.spacing, image.origin, image.direction)
    # the round trip keeps the anatomy in place: the stand-in's labels on the image's own voxels agree
    native = normalise(image) > 0.63
    assert hand_dice(labels.array == 1, native) > 0.9
    # an image within the training spacings: the normalised voxels as they are (no resampling)
    seen.clear()
    near = image.with_array(image.array, spacing=(1.15, 1.15, 1.45))
    res = seg.segment(near, weights, device="cpu")
    assert res.report["spacing"]["resampled_to"] is None and np.array_equal(seen[0], normalise(near))


def test_the_shipped_cardiac_segmenter_segments_a_coarse_scan_at_its_training_spacing(tmp_path):
    from gvsl_app.services.segment import segment

    image, labels = _cardiac_nifti(tmp_path, (40, 40, 40))  # 2.8 mm in-plane; trained at 0.93-1.18 mm
    res = segment(image, None, device="cpu", reference=labels)
    assert res.labels.shape == image.shape
    assert res.report["mean_dice"] > 0.5, res.report["dice"]  # 0.07 on the 40^3 grid, 0.75 resampled
    assert res.report["spacing"]["resampled_to"] is not None

"""Segmentation and embedding services: outputs on the input grid, reports, bad input.

Tiny on purpose (width-8 networks, volumes under 48^3, ~100 t-SNE points): the point is
what the services promise (geometry, units, sampling, determinism, refusals), not quality.
"""

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

import models
from gvsl_app.data.synthetic import make_cardiac_subject
from gvsl_app.services.embed import embed, features_at, sample_voxels
from gvsl_app.services.segment import segment
from models.checkpoint import CheckpointError
from models.downstream import SegmentationNet

SHAPE = (28, 36, 40)  # anisotropic on purpose: (z, y, x) mix-ups show up
ROT = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z


@pytest.fixture(scope="module")
def subject():
    image, labels = make_cardiac_subject(1001, SHAPE)
    # a non-identity direction and an odd origin, shared by image and labels
    image = dataclasses.replace(image, direction=ROT, origin=(12.5, -30.0, 7.25))
    labels = dataclasses.replace(labels, direction=ROT, origin=(12.5, -30.0, 7.25))
    return image, labels


def _seg_checkpoint(path, net, size=32, names=None):
    torch.save(
        {
            "format": "gvsl-studio",
            "kind": "segmentation",
            "model_config": net.config(),
            "model": net.state_dict(),
            "preprocess": {"size": size},
            "label_names": names or {1: "LV", 2: "RV"},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def seg_random(tmp_path_factory):
    torch.manual_seed(0)
    return _seg_checkpoint(tmp_path_factory.mktemp("w") / "seg.pt", SegmentationNet(8, models.DEMO_WIDTHS))


@pytest.fixture(scope="module")
def seg_constant(tmp_path_factory):
    """A network that predicts class 3 everywhere (zero head weights, one-hot bias)."""
    net = SegmentationNet(8, models.DEMO_WIDTHS)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.head.bias[3] = 10.0
    return _seg_checkpoint(tmp_path_factory.mktemp("w") / "seg3.pt", net)


@pytest.fixture(scope="module")
def gvsl_weights(tmp_path_factory):
    torch.manual_seed(0)
    m = models.GVSL(widths=models.DEMO_WIDTHS)
    path = tmp_path_factory.mktemp("w") / "gvsl.pt"
    torch.save({"format": "gvsl-studio", "kind": "pretrain", "model_config": m.config(), "model": m.state_dict()}, path)
    return path


# ----------------------------------------------------------------------------- segmentation


def test_segment_label_map_has_the_image_geometry(subject, seg_random):
    image, _ = subject
    res = segment(image, seg_random, device="cpu")
    lab = res.labels
    assert lab.shape == image.shape
    assert lab.spacing == image.spacing and lab.origin == image.origin and lab.direction == image.direction
    assert np.issubdtype(lab.array.dtype, np.integer)
    assert set(np.unique(lab.array)) <= set(range(8))
    assert set(res.report["volume_ml"]) == {str(k) for k in range(1, 8)}  # every class, 0 when absent
    assert res.report["label_names"]["1"] == "LV" and res.report["label_names"]["5"] == "5"
    assert "dice" not in res.report


def test_segment_report_volumes_in_ml_and_dice_against_reference(subject, seg_constant):
    image, labels = subject
    res = segment(image, seg_constant, device="cpu", reference=labels)
    assert (res.labels.array == 3).all()
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    n = int(np.prod(image.shape))
    r = res.report
    assert r["volume_ml"]["3"] == pytest.approx(n * voxel_ml, rel=1e-6)
    assert r["volume_ml"]["1"] == 0.0
    ref = labels.array
    for k in range(1, 8):
        assert r["reference_volume_ml"][str(k)] == pytest.approx((ref == k).sum() * voxel_ml, rel=1e-6)
    n3 = int((ref == 3).sum())
    assert n3 > 0
    assert r["dice"]["3"] == pytest.approx(2 * n3 / (n + n3), rel=1e-5)
    assert all(r["dice"][str(k)] == pytest.approx(0.0, abs=1e-6) for k in (1, 2, 4, 5, 6, 7))
    assert r["mean_dice"] == pytest.approx(np.mean([r["dice"][str(k)] for k in range(1, 8)]))
    json.dumps(r)  # the CLI writes it as JSON


def test_segment_refuses_a_gvsl_checkpoint_with_a_clear_message(subject, gvsl_weights):
    image, _ = subject
    with pytest.raises(CheckpointError, match=r"pre-training checkpoint.*segmentation needs"):
        segment(image, gvsl_weights, device="cpu")


def test_segment_refuses_a_reference_on_another_grid(subject, seg_random):
    image, labels = subject
    shifted = dataclasses.replace(labels, origin=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="origin"):
        segment(image, seg_random, device="cpu", reference=shifted)
    other_shape = labels.with_array(labels.array[:-2])
    with pytest.raises(ValueError, match="shape"):
        segment(image, seg_random, device="cpu", reference=other_shape)


# ----------------------------------------------------------------------------- embedding


@pytest.fixture(scope="module")
def labels_with_small_structure(subject):
    """The subject's labels plus a label 9 of only 5 voxels (fewer than per_label)."""
    image, labels = subject
    arr = labels.array.copy()
    arr[2, 3, 4:9] = 9
    return labels.with_array(arr)


PER_LABEL = 15


@pytest.fixture(scope="module")
def embedded(subject, labels_with_small_structure, gvsl_weights, tmp_path_factory):
    image, _ = subject
    res = embed(
        image, labels_with_small_structure, weights=gvsl_weights, per_label=PER_LABEL, size=32, seed=3, device="cpu"
    )
    out = res.save(tmp_path_factory.mktemp("embed"))
    return res, out


def _read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], np.array(rows[1:], dtype=float)


def test_embed_csv_columns_and_balanced_sampling(embedded, labels_with_small_structure):
    res, out = embedded
    header, rows = _read_csv(out / "embedding.csv")
    assert header == ["x", "y", "label", "z_index", "y_index", "x_index"]
    assert len(rows) == res.report["n_points"] == 7 * PER_LABEL + 5
    values, counts = np.unique(rows[:, 2].astype(int), return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {**{k: PER_LABEL for k in range(1, 8)}, 9: 5}
    assert np.isfinite(rows[:, :2]).all() and rows[:, :2].std(0).min() > 0


def test_embed_voxels_are_on_the_input_grid_and_carry_their_label(embedded, labels_with_small_structure):
    _, out = embedded
    _, rows = _read_csv(out / "embedding.csv")
    zyx = rows[:, 3:6].astype(int)
    assert (rows[:, 3:6] == zyx).all()
    assert (zyx >= 0).all() and (zyx < np.array(SHAPE)).all()
    arr = labels_with_small_structure.array
    np.testing.assert_array_equal(arr[zyx[:, 0], zyx[:, 1], zyx[:, 2]], rows[:, 2].astype(int))
    assert len({tuple(v) for v in zyx}) == len(zyx)  # no voxel drawn twice
    # the x index reaches beyond the z extent: indices are (z, y, x) of the input grid
    assert zyx[:, 2].max() >= SHAPE[0]


def _silhouette(x, labels):
    """Mean silhouette (Euclidean), written out from its definition; 0 for a lone point."""
    d = np.linalg.norm(x[:, None, :].astype(np.float64) - x[None, :, :], axis=-1)
    scores = []
    for i, label in enumerate(labels):
        same = labels == label
        if same.sum() == 1:
            scores.append(0.0)
            continue
        a = d[i, same].sum() / (same.sum() - 1)
        b = min(d[i, labels == other].mean() for other in np.unique(labels) if other != label)
        scores.append((b - a) / max(a, b))
    return float(np.mean(scores))


def test_silhouette_reference_on_hand_made_clusters():
    """The reference above, on points whose score is known: two tight, far clusters -> ~1."""
    x = np.array([[0.0, 0.0], [0.0, 1.0], [100.0, 0.0], [100.0, 1.0]])
    # a = 1, b = mean(100, sqrt(100^2 + 1)) for every point
    b = (100.0 + np.hypot(100.0, 1.0)) / 2
    assert _silhouette(x, np.array([1, 1, 2, 2])) == pytest.approx((b - 1.0) / b)
    assert _silhouette(x, np.array([1, 2, 1, 2])) < 0  # mixed clusters score below 0


def test_embed_report_has_silhouette_scores(embedded):
    res, out = embedded
    r = json.loads((out / "report.json").read_text())
    # the scores of the labels of the very points embedded, in feature space and in the 2D map
    assert r["silhouette_features"] == pytest.approx(_silhouette(res.features, res.labels), abs=1e-5)
    assert r["silhouette_2d"] == pytest.approx(_silhouette(res.xy, res.labels), abs=1e-5)
    assert r["feature_dim"] == models.DEMO_WIDTHS[-1]
    assert r["points_per_label"]["9"] == 5


def test_embed_is_deterministic_with_the_seed(subject, labels_with_small_structure, embedded):
    image, _ = subject
    first, _ = embedded
    kw = dict(per_label=PER_LABEL, size=32, device="cpu")
    # same weights as the fixture's file (both seeded with 0) through the in-memory path
    torch.manual_seed(0)
    model = models.GVSL(widths=models.DEMO_WIDTHS)
    again = embed(image, labels_with_small_structure, model=model, seed=3, **kw)
    np.testing.assert_array_equal(again.voxels, first.voxels)
    np.testing.assert_allclose(again.features, first.features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again.xy, first.xy, rtol=1e-5, atol=1e-5)
    other = sample_voxels(labels_with_small_structure.array, PER_LABEL, seed=4)
    assert not np.array_equal(other, first.voxels)


def test_embed_refuses_labels_on_another_grid(subject, gvsl_weights):
    image, labels = subject
    with pytest.raises(ValueError, match="spacing"):
        embed(image, dataclasses.replace(labels, spacing=(2.0, 2.0, 2.0)), weights=gvsl_weights, size=32, device="cpu")
    with pytest.raises(ValueError, match="shape"):
        embed(image, labels.with_array(labels.array[:, :-1]), weights=gvsl_weights, size=32, device="cpu")


def test_features_are_read_at_the_voxels_position_in_the_working_cube():
    """A feature cube whose channels are its own (z, y, x) coordinates: trilinear reading is exact."""
    s = 16
    cube = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32)] * 3, indexing="ij"))
    shape = (9, 21, 33)
    vox = np.array([[0, 0, 0], [8, 20, 32], [4, 7, 30], [1, 13, 2]])
    got = features_at(cube, vox, shape)
    expected = vox * (s - 1) / (np.array(shape) - 1)
    np.testing.assert_allclose(got, expected, atol=1e-4)


# ----------------------------------------------------------------------------- segmenter by modality


def test_the_shipped_segmenter_follows_the_images_modality(subject, monkeypatch, tmp_path, seg_constant):
    from gvsl_app.data.brain import make_brain_subject
    from gvsl_app.services import segment as seg_module
    from gvsl_app.services.weights import DEMO_SEG, DEMO_SEG_BRAIN

    ct, _ = subject
    mr, _ = make_brain_subject(3, (24, 28, 24))
    path, why = seg_module.default_segmenter(ct)
    assert path == DEMO_SEG and "looks like CT" in why and "cardiac CT" in why
    path, why = seg_module.default_segmenter(mr)
    assert path == DEMO_SEG_BRAIN and "looks like MR" in why and "brain MR tissues" in why
    # which one ran is in the report; an installation without the MR one says so and uses the CT one
    monkeypatch.setitem(seg_module.DEMO_SEGMENTERS, "mr", tmp_path / "missing.pt")
    monkeypatch.setattr(seg_module, "DEMO_SEG", seg_constant)
    res = segment(mr, device="cpu")
    assert "is not installed" in res.report["segmenter"] and "missing.pt" in res.report["segmenter"]
    assert np.all(res.labels.array == 3)  # the stand-in CT segmenter really ran
    given = segment(ct, seg_constant, device="cpu")
    assert given.report["segmenter"] == f"{seg_constant} (given)"


def test_the_shipped_brain_segmenter_segments_a_held_out_mr_subject():
    """The default `gvsl segment` on MR: the brain tissue segmenter, mean tissue Dice >= 0.75 on a
    subject none of its training, validation or test subjects came from (seed 4242).
    """
    from gvsl_app.data.brain import make_brain_subject
    from gvsl_app.services.weights import DEMO_SEG_BRAIN

    assert DEMO_SEG_BRAIN.is_file(), "models/weights/seg_brain_demo.pt is shipped with the package"
    image, labels = make_brain_subject(4242, (96, 96, 96))
    res = segment(image, device="cpu", reference=labels)
    assert "brain MR tissues" in res.report["segmenter"]
    assert set(res.report["label_names"].values()) >= {"Grey matter", "White matter"}
    assert res.report["mean_dice"] >= 0.75, res.report["dice"]

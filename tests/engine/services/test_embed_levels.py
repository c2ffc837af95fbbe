"""Feature levels of the embedding (#33 item 3): each decoder level and hypercolumns, scored
per level with the silhouette and the 5-NN accuracy; refusals of label maps too big to embed.

Tiny on purpose (width-8 networks, a 32^3 subject, ~100 points).
"""

import numpy as np
import pytest
import torch

import models
from gvsl_app.data.preprocess import normalise
from gvsl_app.data.synthetic import make_cardiac_subject
from gvsl_app.options import EmbedOptions, FeatureLevel
from gvsl_app.services.embed import (
    MAX_LABELS,
    check_label_count,
    decoder_features,
    embed,
    features_at,
    features_per_level,
    knn_accuracy,
    local_features,
    sample_voxels,
)

SHAPE = (32, 32, 32)


@pytest.fixture(scope="module")
def subject():
    return make_cardiac_subject(1002, SHAPE)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.GVSL(widths=models.DEMO_WIDTHS).eval()


def test_levels_are_the_decoder_outputs_coarse_to_fine_and_their_concatenation(subject, model):
    image, labels = subject
    levels = decoder_features(model, normalise(image), 32, torch.device("cpu"))
    assert [tuple(f.shape) for f in levels] == [(64, 4, 4, 4), (32, 8, 8, 8), (16, 16, 16, 16), (8, 32, 32, 32)]
    # the last level is the study's local features: decoder-4 keeps its declared numbers
    np.testing.assert_array_equal(levels[-1].numpy(), local_features(model, normalise(image), 32, torch.device("cpu")))
    vox = sample_voxels(np.asarray(labels.array), 10, 0)
    per = features_per_level(levels, vox, image.shape)
    assert list(per) == list(FeatureLevel.values())
    assert [per[k].shape[1] for k in per] == [64, 32, 16, 8, 120]
    np.testing.assert_array_equal(per["hypercolumn"], np.concatenate([per[f"decoder-{k}"] for k in (1, 2, 3, 4)], 1))
    # a coarse level read at the voxels = that level upsampled (as the decoder does) and read there
    up = torch.nn.functional.interpolate(levels[0][None], size=(32,) * 3, mode="trilinear", align_corners=True)
    np.testing.assert_allclose(per["decoder-1"], features_at(up[0].numpy(), vox, image.shape), atol=2e-2)


def test_knn_accuracy_leave_one_out_on_hand_made_points():
    rng = np.random.default_rng(0)
    far = np.concatenate([rng.normal(0, 1, (20, 3)), rng.normal(50, 1, (20, 3))])
    lab = np.repeat([1, 2], 20)
    assert knn_accuracy(far, lab) == 1.0
    # a point's own label is not its own neighbour: a lone point of label 3 inside label 1's cloud is wrong
    assert knn_accuracy(far, np.where(np.arange(40) == 0, 3, lab)) == pytest.approx(39 / 40)
    assert knn_accuracy(far, np.ones(40, int)) is None
    mixed = rng.normal(0, 1, (400, 3))
    assert 0.3 < knn_accuracy(mixed, rng.integers(1, 3, 400)) < 0.7  # chance: 1/2


def test_embed_embeds_the_chosen_level_and_scores_every_level(subject, model):
    image, labels = subject
    kw = dict(model=model, per_label=12, size=32, seed=1, device="cpu")
    deep = embed(image, labels, **kw)  # the default: the last decoder level, as before
    hyper = embed(image, labels, level="hypercolumn", **kw)
    for res, level, dim in ((deep, "decoder-4", 8), (hyper, "hypercolumn", 120)):
        r = res.report
        assert r["level"] == level and r["feature_dim"] == dim == res.features.shape[1]
        assert list(r["levels"]) == list(FeatureLevel.values())
        assert r["levels"][level]["silhouette"] == pytest.approx(r["silhouette_features"])
        assert r["levels"][level]["knn5"] == r["knn5"] and 0.0 <= r["knn5"] <= 1.0
        assert {"features_s", "scores_s", "tsne_s"} <= set(r["seconds"])
    np.testing.assert_array_equal(deep.voxels, hyper.voxels)
    for level, scores in deep.report["levels"].items():  # the same table, whichever level is embedded
        assert scores == pytest.approx(hyper.report["levels"][level])
    with pytest.raises(ValueError, match="level must be one of decoder-1"):
        embed(image, labels, level="bottleneck", **kw)


def test_the_level_option_is_one_definition_for_the_cli_and_the_widget():
    from gvsl_app.cli import build_parser
    from gvsl_app.options import from_args

    args = build_parser().parse_args(["embed", "i.nii.gz", "l.nii.gz", "--out", "o", "--level", "decoder-2"])
    assert from_args(EmbedOptions, args).level == FeatureLevel.DECODER_2
    assert EmbedOptions().level == "decoder-4"
    with pytest.raises(ValueError, match="--level must be one of"):
        EmbedOptions(level="up4")  # type: ignore[arg-type]


def test_a_label_map_with_too_many_labels_or_voxels_is_refused_by_count():
    many = np.arange(MAX_LABELS + 1).reshape(1, 1, -1) + 1
    with pytest.raises(ValueError, match=rf"^lab.nii.gz: {MAX_LABELS + 1} distinct labels; embedding describes"):
        check_label_count(many, 500, "lab.nii.gz")
    check_label_count(many[..., :MAX_LABELS], 1, "lab.nii.gz")  # 1000 labels of a voxel each: fine
    big = np.repeat(np.arange(1, 201), 600).reshape(1, 1, -1)
    with pytest.raises(ValueError, match="200 labels x up to 500 voxels each would sample 100000 voxels"):
        check_label_count(big, 500, "big.nii.gz")
    check_label_count(big, 100, "big.nii.gz")

"""Datasets and loaders: pairs, labelled crops, classification, splits, clear errors."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from gvsl_app.data.augment import GVSLPairAugment, SpatialAugment
from gvsl_app.data.datasets import (
    ClassificationDataset,
    DatasetError,
    LabelledDataset,
    PairDataset,
    StepSampler,
    batch_generator,
    list_cases,
    load_labelled_volumes,
    split_names,
    step_loader,
    validation_pair,
)

S = 16


def smooth(shape, seed):
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 1, 4, 4, 4)).astype(np.float32))
    return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def arrays(n=4, shape=(20, 18, 22)):
    return [smooth(shape, i) for i in range(n)]


def write(path, arr, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def labelled_folder(tmp_path, n=3, shape=(36, 32, 40)):
    for i in range(n):
        hu = (smooth(shape, i) * 2000 - 1000).astype(np.int16)
        lab = np.zeros(shape, np.uint8)
        z, y, x = 5 + 3 * i, 20 - 2 * i, 10 + 4 * i
        lab[z : z + 6, y : y + 5, x : x + 6] = 1 + i % 2
        ext = ".nii.gz" if i % 2 == 0 else ".mha"
        write(tmp_path / "images" / f"case_{i}{ext}", hu)
        write(tmp_path / "labels" / f"case_{i}.nii.gz", lab)
    return tmp_path


def test_pair_dataset_items_are_two_different_subjects_with_the_right_shapes():
    ds = PairDataset(arrays(), S, length=10, seed=0, modality=None)
    assert len(ds) == 10
    for k in range(10):
        item = ds[k]
        for key in ("moving", "fixed", "moving_input"):
            assert item[key].shape == (1, S, S, S) and item[key].dtype == torch.float32
        i, j = item["pair"].tolist()
        assert i != j
        assert not torch.equal(item["moving"], item["fixed"])
        assert item["moving_input"].min() >= 0 and item["moving_input"].max() <= 1


def test_pair_dataset_is_deterministic_per_seed_index_and_epoch():
    a = PairDataset(arrays(), S, length=8, seed=3, modality=None)
    b = PairDataset(arrays(), S, length=8, seed=3, modality=None)
    c = PairDataset(arrays(), S, length=8, seed=4, modality=None)
    for k in (0, 5, 1234):  # any index >= 0 is valid (step-based samplers)
        x, y = a[k], b[k]
        assert all(torch.equal(x[key], y[key]) for key in x)
    assert not torch.equal(a[0]["moving_input"], a[1]["moving_input"])
    assert not torch.equal(a[0]["moving_input"], c[0]["moving_input"])
    assert torch.equal(a[(0, 2)]["moving_input"], a[2]["moving_input"])  # epoch 0 is the default
    assert not torch.equal(a[(1, 2)]["moving_input"], a[2]["moving_input"])


def test_pair_dataset_spatial_is_shared_and_can_be_switched_off():
    ds = PairDataset(arrays(), S, seed=0, spatial=False, appearance=False, modality=None)
    item = ds[0]
    i, j = item["pair"].tolist()
    assert torch.allclose(item["moving"], ds.volumes[i]) and torch.allclose(item["fixed"], ds.volumes[j])
    same = PairDataset([arrays(1)[0]] * 2, S, seed=0, modality=None)[0]  # identical subjects: warps identical
    assert torch.equal(same["moving"], same["fixed"]) and not torch.equal(same["moving"], ds.volumes[0])
    m, f = validation_pair(ds)
    assert m.shape == f.shape == (1, 1, S, S, S)


def test_unaugmented_batches_can_be_augmented_on_the_training_device_reproducibly():
    ds = PairDataset(arrays(), S, length=4, seed=0, modality=None, augment=False)
    batch = next(iter(step_loader(ds, start=0, count=2, batch=2, workers=0)))
    assert torch.equal(batch["moving"], batch["moving_input"])
    aug = GVSLPairAugment.default()
    outs = [aug(batch["moving"], batch["fixed"], batch_generator(batch)) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    assert not torch.equal(outs[0][2], batch["moving"])


def test_pair_dataset_from_folder_of_mixed_formats_with_or_without_images_subfolder(tmp_path):
    for i, ext in enumerate([".nii.gz", ".mha", ".nrrd"]):
        write(tmp_path / "a" / "images" / f"s{i}{ext}", (smooth((12, 14, 10), i) * 500).astype(np.float32))
        write(tmp_path / "b" / f"s{i}{ext}", (smooth((12, 14, 10), i) * 500).astype(np.float32))
    (tmp_path / "b" / "notes.txt").write_text("not a volume")
    for folder in ("a", "b"):
        ds = PairDataset(str(tmp_path / folder), S, seed=0)
        assert ds.names == ["s0", "s1", "s2"]
        assert ds.volumes.shape == (3, 1, S, S, S)
        assert ds.volumes.min() >= 0 and ds.volumes.max() <= 1


def test_pair_dataset_synthetic_source():
    ds = PairDataset("synthetic:cardiac:3", S, seed=1)
    assert ds.volumes.shape == (3, 1, S, S, S)
    assert ds.volumes.min() >= 0 and ds.volumes.max() <= 1
    assert ds[0]["moving"].shape == (1, S, S, S)
    assert PairDataset("synthetic:cardiac", S, seed=1, n_synthetic=2).volumes.shape[0] == 2


def test_mixed_synthetic_source_pairs_scans_of_one_kind_only():
    ds = PairDataset("synthetic:cardiac+brain:2", S, seed=1)
    assert ds.names == ["cardiac_000", "cardiac_001", "brain_000", "brain_001"]
    assert ds.groups == [[0, 1], [2, 3]]
    pairs = {tuple(ds[k]["pair"].tolist()) for k in range(40)}
    assert pairs <= {(0, 1), (1, 0), (2, 3), (3, 2)}
    assert any(i >= 2 for i, _ in pairs) and any(i < 2 for i, _ in pairs)  # both kinds are drawn
    with pytest.raises(DatasetError, match="synthetic:brain"):
        PairDataset("synthetic:liver", S)


@pytest.mark.parametrize(
    "rows, culprit",
    [
        ("case_0,1\ncase_1,abc\n", "mix numbers and names"),
        ("case_0,1\ncase_1,2.5\n", "must be 0 or 1.*2.5.*case_1"),
        ("case_0,-1\ncase_1,1\n", "must be 0 or 1.*-1"),
        ("case_0,1\ncase_1,\n", "no label for case.*case_1"),
        ("case_0,1\ncase_1,1\n", "1 class.*exactly two"),
        ("case_0,a\ncase_1,b\ncase_2,c\n", "3 class"),
    ],
)
def test_classification_labels_that_a_binary_head_cannot_use_are_refused(tmp_path, rows, culprit):
    folder = labelled_folder(tmp_path / "cls", n=3)
    (folder / "labels.csv").write_text("name,label\n" + rows)
    with pytest.raises(DatasetError, match=culprit):
        ClassificationDataset(folder, 8)


def test_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no volumes found"):
        PairDataset(str(tmp_path / "empty"), S)
    with pytest.raises(DatasetError, match="no such data folder"):
        PairDataset(str(tmp_path / "missing"), S)
    with pytest.raises(DatasetError, match="at least 2"):
        PairDataset(arrays(1), S, modality=None)
    folder = labelled_folder(tmp_path / "lab", n=2)
    (folder / "labels" / "case_1.nii.gz").unlink()
    with pytest.raises(DatasetError, match="without a label map.*case_1"):
        LabelledDataset(folder, patch=8)
    with pytest.raises(DatasetError, match="without a label map"):
        list_cases(folder, need_labels=True)
    (folder / "labels.csv").write_text("name,label\ncase_0,1\ncase_7,0\n")
    with pytest.raises(DatasetError, match="case_7"):
        ClassificationDataset(folder, 8)


def test_loader_with_2_workers_yields_the_same_batches_as_without_workers():
    ds = PairDataset(arrays(), S, length=6, seed=0, modality=None)
    loaders = [step_loader(ds, start=4, count=6, batch=2, workers=w) for w in (0, 2)]
    batches = [list(loader) for loader in loaders]
    assert len(batches[0]) == len(batches[1]) == 3
    for b0, b2 in zip(*batches):
        assert b2["moving"].shape == (2, 1, S, S, S)
        assert all(torch.equal(b0[k], b2[k]) for k in b0)
    # the samples are those of global indices 4..9: a resumed run continues the sequence
    direct = [ds[i] for i in range(4, 10)]
    assert all(torch.equal(batches[0][k // 2]["moving"][k % 2], direct[k]["moving"]) for k in range(6))


def test_step_sampler_resumes_where_it_stopped_and_interleaves_ranks():
    whole = list(StepSampler(0, 10))
    assert whole == list(range(10))
    assert list(StepSampler(0, 4)) + list(StepSampler(4, 6)) == whole  # stop after 4, resume
    ranks = [list(StepSampler(2, 3, rank=r, world=2)) for r in range(2)]
    assert ranks == [[4, 6, 8], [5, 7, 9]]  # disjoint, and together the global steps 2..4
    assert len(StepSampler(3, 5)) == 5
    with pytest.raises(ValueError, match="rank 2"):
        StepSampler(0, 1, rank=2, world=2)


def test_labelled_crops_contain_foreground_most_of_the_time(tmp_path):
    folder = labelled_folder(tmp_path)
    ds = LabelledDataset(folder, patch=12, seed=0, length=60)
    assert ds.n_classes == 3
    hits = 0
    for k in range(60):
        item = ds[k]
        assert item["image"].shape == (1, 12, 12, 12) and item["image"].dtype == torch.float32
        assert item["label"].shape == (12, 12, 12) and item["label"].dtype == torch.int64
        hits += bool((item["label"] > 0).any())
    assert hits >= 0.6 * 60
    # without the bias, a 12^3 crop of these volumes rarely hits the small structure
    plain = LabelledDataset(folder, patch=12, seed=0, length=60, foreground_prob=0.0)
    assert sum(bool((plain[k]["label"] > 0).any()) for k in range(60)) < hits
    assert torch.equal(ds[5]["image"], LabelledDataset(folder, patch=12, seed=0)[5]["image"])
    aug = LabelledDataset(folder, patch=12, seed=0, spatial=SpatialAugment())[1]
    assert aug["label"].dtype == torch.int64 and set(torch.unique(aug["label"]).tolist()) <= {0, 1, 2}


def test_labelled_whole_cubes_and_validation_volumes(tmp_path):
    folder = labelled_folder(tmp_path)
    ds = LabelledDataset(folder, ["case_0", "case_2"], size=S)
    item = ds[1]
    assert item["image"].shape == (1, S, S, S) and item["label"].shape == (S, S, S)
    assert set(torch.unique(item["label"]).tolist()) <= {0, 1, 2}
    vols = load_labelled_volumes(folder, ["case_1"])
    ((img, lab, vol),) = vols
    assert img.shape == lab.shape == vol.shape == (36, 32, 40)
    assert img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    assert set(np.unique(lab).tolist()) == {0, 2}


def test_classification_dataset(tmp_path):
    folder = labelled_folder(tmp_path)
    (folder / "labels.csv").write_text("name,label\ncase_0.nii.gz,normal\ncase_1,abnormal\ncase_2,normal\n")
    ds = ClassificationDataset(folder, S)
    assert ds.classes == ["abnormal", "normal"] and ds.targets == [1, 0, 1]
    item = ds[1]
    assert item["image"].shape == (1, S, S, S) and item["label"].dtype == torch.int64 and int(item["label"]) == 0
    sub = ClassificationDataset(folder, S, names=["case_2"])
    assert len(sub) == 1 and int(sub[0]["label"]) == 1


def test_split_names_is_deterministic_disjoint_and_order_independent():
    names = [f"c{i:02d}" for i in range(20)]
    tr, va, te = split_names(names, 0.2, 0.1, seed=0)
    assert (len(tr), len(va), len(te)) == (14, 4, 2)
    assert sorted(tr + va + te) == names
    assert split_names(names[::-1], 0.2, 0.1, seed=0) == (tr, va, te)
    assert split_names(names, 0.2, 0.1, seed=1) != (tr, va, te)
    tr, va, te = split_names(["a", "b", "c"], 0.2, 0.2, seed=0)
    assert len(tr) == len(va) == len(te) == 1
    assert split_names(["a"], 0.2, 0.2, seed=0) == (["a"], [], [])
    with pytest.raises(ValueError):
        split_names(names, 0.6, 0.5)

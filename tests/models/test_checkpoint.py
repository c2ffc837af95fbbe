"""Checkpoints: the official release's names load; bad files fail clearly; writes are atomic."""

import ast
import os

import pytest
import torch

from models import DEMO_WIDTHS, GVSL, PAPER_HEADS
from models.checkpoint import CheckpointError, atomic_torch_save, load_state_into, model_state, read_checkpoint

from helpers import ROOT


def official_state() -> dict:
    """A state dict with exactly the names and shapes of the authors' release (random values)."""
    here = ROOT / "tests" / "data" / "official_gvsl_state_dict.tsv"
    rows = [line.split("\t") for line in here.read_text().splitlines() if "\t" in line and "." in line.split("\t")[0]]
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(ast.literal_eval(shape), generator=g) * 0.01 for name, shape, _ in rows}


def test_official_names_and_shapes_load_strictly(tmp_path):
    state = official_state()
    assert len(state) == 104
    path = tmp_path / "GVSL_epoch_1000.pth"
    torch.save(state, path)
    model = GVSL(**PAPER_HEADS)
    sd, fmt = model_state(read_checkpoint(path))
    report = load_state_into(model, sd, strict=True, source_format=fmt)
    assert fmt == "official GVSL"
    assert len(report.loaded) == len(model.state_dict()) and not report.missing and not report.unexpected
    assert torch.equal(model.affine_head.rotation.weight, state["fc_rot.weight"])
    assert torch.equal(model.unet.up4.conv.double_conv[3].weight, state["unet.up4.conv.double_conv.3.weight"])


def test_wrong_shape_names_the_key(tmp_path):
    state = official_state()
    state["out_flow.weight"] = torch.zeros(3, 8, 3, 3, 3)
    sd, fmt = model_state(state)
    with pytest.raises(CheckpointError, match="deformable_head.flow.weight"):
        load_state_into(GVSL(**PAPER_HEADS), sd, source_format=fmt)


def test_other_width_is_refused_with_expected_widths():
    small = GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS).state_dict()
    with pytest.raises(CheckpointError, match="widths"):
        load_state_into(GVSL(**PAPER_HEADS), small)


def test_missing_and_unexpected_keys_are_reported():
    state = GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS).state_dict()
    state.pop("affine_head.rotation.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_state_into(GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS), state, strict=True)
    assert "affine_head.rotation.bias" in str(err.value) and "extra.weight" in str(err.value)
    report = load_state_into(GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS), state, strict=False)
    assert report.missing == ["affine_head.rotation.bias"] and report.unexpected == ["extra.weight"]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="run code"):
        read_checkpoint(path)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.pt"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such"):
        read_checkpoint(tmp_path / "nope.pt")


def test_random_bytes_are_not_a_checkpoint_rather_than_code(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 64)  # what a truncated download or a wrong file looks like
    with pytest.raises(CheckpointError, match="noise.pt: not a PyTorch checkpoint file") as err:
        read_checkpoint(noise)
    assert "run code" not in str(err.value)
    legacy = tmp_path / "legacy.pt"  # the pre-1.6 pickle format still loads
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(legacy)["w"], torch.ones(2))


def test_a_checkpoint_that_does_not_fit_is_named(tmp_path):
    from gvsl_app.services.weights import load_gvsl

    foreign = tmp_path / "foreign.pt"
    torch.save({"unet.inc.double_conv.0.weight": torch.zeros(8, 1, 3, 3, 3), "head.weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt: checkpoint keys do not match"):
        load_gvsl(foreign)


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    atomic_torch_save({"a": torch.ones(2)}, path)
    atomic_torch_save({"a": torch.zeros(2)}, path)
    assert torch.equal(read_checkpoint(path)["a"], torch.zeros(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def corrupt_tensor_bytes(path) -> None:
    """Flip bytes in the middle of the largest tensor's stored data (what bit rot or a bad
    copy does): the zip archive stays readable, so only a checksum can tell.
    """
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = (
        int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[start : start + 8] = bytes(b ^ 0x5A for b in raw[start : start + 8])
    path.write_bytes(bytes(raw))


def test_a_checkpoint_with_damaged_tensor_bytes_is_refused_by_its_checksum(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"format": "gvsl-studio", "model": {"w": torch.arange(4096.0)}}, path)
    assert read_checkpoint(path)["model_sha256"]  # written with the checksum, which verifies
    corrupt_tensor_bytes(path)
    with pytest.raises(CheckpointError, match="last.pt: checksum mismatch, the file is damaged"):
        read_checkpoint(path)


def test_checkpoints_without_a_checksum_still_load(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": "gvsl-studio", "model": {"w": torch.ones(3)}}, path)
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.ones(3))
    for shipped in (ROOT / "models" / "weights").glob("*.pt"):
        read_checkpoint(shipped)


def test_non_finite_parameters_are_refused_at_load_naming_the_tensor():
    model = GVSL(widths=DEMO_WIDTHS)
    state = model.state_dict()
    state["unet.inc.double_conv.0.weight"] = state["unet.inc.double_conv.0.weight"].clone().fill_(float("nan"))
    with pytest.raises(
        CheckpointError, match=r"x.pt: the checkpoint holds non-finite parameters.*unet.inc.double_conv.0"
    ):
        load_state_into(model, state, source="x.pt")


def test_a_failed_torch_save_is_a_disk_full_error_naming_the_file(tmp_path, monkeypatch):
    def full(*_a, **_k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3")

    path = tmp_path / "last.pt"
    atomic_torch_save({"a": torch.ones(2)}, path)
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=f"disk full writing {path}"):
        atomic_torch_save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path)["a"], torch.ones(2))  # the earlier file is unchanged
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_shipped_segmenters_fall_back_to_the_spacing_of_their_training_data(tmp_path):
    """The shipped segmenters predate recorded spacings: the documented fallback must be the
    spacing `gvsl sample` wrote for their training split (models/weights/README.md).
    """
    import numpy as np

    from gvsl_app.data.brain import make_brain_subject
    from gvsl_app.data.synthetic import make_cardiac_subject
    from gvsl_app.io.folders import split_names
    from gvsl_app.services.segment_spacing import training_spacing
    from gvsl_app.services.weights import DEMO_SEGMENTERS

    # `gvsl sample cardiac --n 10 --seed 5`: subject i has seed 5 * 100003 + i; the spacing is drawn per
    # subject and scales as 1 / side, so 16^3 subjects give the 96^3 ones' spacing times 6
    names = [f"case_{i:03d}" for i in range(10)]
    train = split_names(names, 0.2, 0.3, 0)[0]
    cubes = [make_cardiac_subject(5 * 100003 + names.index(n), (16, 16, 16))[0] for n in train]
    cardiac = np.array([c.spacing for c in cubes]) * 16 / 96
    found = training_spacing(read_checkpoint(DEMO_SEGMENTERS["ct"]))
    assert found is not None and "shipped" in found.source
    np.testing.assert_allclose(found.median, np.median(cardiac, axis=0), atol=1e-4)
    np.testing.assert_allclose([found.low, found.high], [cardiac.min(0), cardiac.max(0)], atol=1e-4)
    # `gvsl sample brain --n 14 --seed 7`: every 96^3 subject has the template box's spacing
    brain = make_brain_subject(7 * 100003, (96, 96, 96))[0].spacing
    found = training_spacing(read_checkpoint(DEMO_SEGMENTERS["mr"]))
    assert found is not None
    np.testing.assert_allclose(found.median, brain, atol=1e-4)
    np.testing.assert_allclose([found.low, found.high], [brain, brain], atol=1e-4)


def test_a_segmenter_without_a_known_spacing_warns_and_keeps_the_images_grid(seg_ckpt, caplog):
    from gvsl_app.data.synthetic import make_cardiac_subject
    from gvsl_app.services.segment import segment

    image = make_cardiac_subject(1, (32, 32, 32))[0]
    with caplog.at_level("WARNING", logger="gvsl_app.services.segment"):
        res = segment(image, seg_ckpt, device="cpu")
    assert "records no training voxel spacing" in caplog.text and str(seg_ckpt) in caplog.text
    assert res.report["spacing"]["trained"] is None and res.report["spacing"]["resampled_to"] is None
    assert res.labels.shape == image.shape and res.labels.spacing == image.spacing


def _groups(model) -> dict[str, int]:
    return {n: m.num_groups for n, m in model.named_modules() if isinstance(m, torch.nn.GroupNorm)}


def test_the_authors_checkpoint_runs_grouped_as_the_authors_trained_it(tmp_path):
    """Their DoubleConv normalises GroupNorm(channels // 8), their restoration head GroupNorm(4, 16);
    the same tensors in 8 groups everywhere load strictly but compute other features.
    """
    from gvsl_app.services.weights import load_gvsl
    from gvsl_app.training.config import FinetuneConfig
    from gvsl_app.training.finetune import build_downstream
    from models.downstream import SegmentationNet

    path = tmp_path / "GVSL_epoch_1000.pth"
    torch.save(official_state(), path)
    model, _ = load_gvsl(path)
    groups = _groups(model)
    assert groups["unet.inc.double_conv.1"] == 4 and groups["unet.down4.maxpool_conv.1.double_conv.1"] == 64
    assert groups["affine_head.conv.double_conv.1"] == 32 and groups["deformable_head.conv.double_conv.1"] == 2
    assert groups["restoration_head.layers.1"] == 4
    assert model.config()["norm"] == "authors"
    assert set(_groups(GVSL(**PAPER_HEADS)).values()) == {8}  # the project's own default, unchanged
    assert "norm" not in GVSL(**PAPER_HEADS).config()

    # a backbone fine-tuned from it keeps the grouping, in the checkpoint it writes too
    seg, _ = build_downstream(FinetuneConfig(init=str(path), task="seg", run=str(tmp_path / "ft")), 8)
    assert seg.config()["norm"] == "authors" and _groups(seg)["unet.up4.conv.double_conv.1"] == 4
    again = SegmentationNet(8, seg.config()["widths"], norm=seg.config()["norm"])
    assert _groups(again) == _groups(seg)

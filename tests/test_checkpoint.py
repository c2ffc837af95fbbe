"""Checkpoints: the official release's names load; bad files fail clearly; writes are atomic."""
import ast
import os
from pathlib import Path

import pytest
import torch

from models import DEMO_WIDTHS, GVSL, PAPER_HEADS
from models.checkpoint import (CheckpointError, atomic_torch_save, load_state_into, model_state,
                               read_checkpoint)



def official_state() -> dict:
    """A state dict with exactly the names and shapes of the authors' release (random values)."""
    here = Path(__file__).resolve().parent / "data" / "official_gvsl_state_dict.tsv"
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


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    atomic_torch_save({"a": torch.ones(2)}, path)
    atomic_torch_save({"a": torch.zeros(2)}, path)
    assert torch.equal(read_checkpoint(path)["a"], torch.zeros(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]

"""One home for every option: the enums agree with the engine's own lists, the command line
is generated from the option dataclasses, and out-of-range values are refused by name.
"""

from __future__ import annotations

import dataclasses

import pytest

from gvsl_app.cli import build_parser
from gvsl_app.options import (
    AffineHead,
    DeformableHead,
    EmbedOptions,
    JobStatus,
    MatchOptions,
    RefinePreset,
    TrainingSimilarity,
    Variant,
    from_args,
)


def test_the_choice_enums_list_what_the_engine_accepts():
    from gvsl_app.jobs import state
    from gvsl_app.training.config import SIMILARITIES, VARIANTS
    from models import REFINE_PRESETS
    from models.gvsl import AFFINE_HEADS, DEFORMABLE_HEADS

    assert AffineHead.values() == AFFINE_HEADS and DeformableHead.values() == DEFORMABLE_HEADS
    assert Variant.values() == VARIANTS and TrainingSimilarity.values() == SIMILARITIES
    assert RefinePreset.values() == ("auto", *REFINE_PRESETS)
    assert {state.IDLE, state.RUNNING, state.DONE, state.ERROR, state.STOPPED} <= set(JobStatus.values())
    assert RefinePreset.BRAIN == "brain" and f"{RefinePreset.BRAIN}" == "brain" and str(RefinePreset.BRAIN) == "brain"


@pytest.mark.parametrize("command, options_cls", [("match", MatchOptions), ("embed", EmbedOptions)])
def test_the_command_line_defaults_are_the_dataclass_defaults(command, options_cls):
    args = {"match": ["f.nii.gz", "m.nii.gz"], "embed": ["i.nii.gz", "l.nii.gz"]}[command]
    parsed = build_parser().parse_args([command, *args, "--out", "o"])
    assert from_args(options_cls, parsed) == options_cls()
    for f in dataclasses.fields(options_cls):
        assert getattr(parsed, f.name) == f.default or str(getattr(parsed, f.name)) == str(f.default), f.name


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--passes", "99999999999"], "--passes must be <= 10"),
        (["--passes", "0"], "--passes must be >= 1"),
        (["--size", "8"], r"--size must be >= 16 \(the network pools four times\), got 8"),
        (["--size", "100000"], "--size must be <= 512"),
    ],
)
def test_an_out_of_range_match_option_is_refused_by_its_name(argv, message):
    parsed = build_parser().parse_args(["match", "f.nii.gz", "m.nii.gz", "--out", "o", *argv])
    with pytest.raises(ValueError, match=message):
        from_args(MatchOptions, parsed)


def test_a_choice_is_held_as_its_enum_and_a_wrong_one_refused():
    opts = MatchOptions(init="moments", similarity="mind")
    assert opts.init is not None and opts.init.__class__.__name__ == "InitMode" and opts.similarity == "mind"
    with pytest.raises(ValueError, match="--init must be one of auto, none, geometry, mass, moments, got 'pca'"):
        MatchOptions(init="pca")

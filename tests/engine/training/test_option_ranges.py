"""Every numeric option is range-checked, and the refusal names it (``--lr inf`` says --lr),
before any folder is touched: ``gvsl sample --n/--shape/--seed`` and the training options of
``pretrain``/``finetune``, from the command line and from Python/YAML alike.
"""

from __future__ import annotations

import pytest

from gvsl_app import cli
from gvsl_app.training.config import FinetuneConfig, PretrainConfig

PRETRAIN_CASES = [
    ("--lr", "inf"),
    ("--lr", "nan"),
    ("--lr", "-0.001"),
    ("--lr", "5"),
    ("--batch", "0"),
    ("--batch", "100000"),
    ("--workers", "99999999999"),
    ("--workers", "-1"),
    ("--workers", "1000"),
    ("--w-affine", "inf"),
    ("--w-affine", "-1"),
    ("--ncc-eps", "0"),
    ("--ncc-eps", "inf"),
    ("--ncc-eps", "nan"),
    ("--ncc-eps", "2"),
    ("--affine-warmup", "-1"),
    ("--affine-warmup", "11"),  # beyond --iters 10
    ("--seed", "-1"),
    ("--seed", str(2**32)),
    ("--seed", "99999999999"),
]
FINETUNE_CASES = [
    ("--lr", "inf"),
    ("--batch", "0"),
    ("--batch", "100000"),
    ("--workers", "99999999999"),
    ("--seed", "-3"),
]
SAMPLE_CASES = [("--n", "0"), ("--n", "99999999999"), ("--shape", "0"), ("--shape", "4096"), ("--seed", "-1")]


def _refused(capsys, argv: list[str], flag: str, folder) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err, err
    assert not folder.exists()  # refused before the output folder was made


@pytest.mark.parametrize("flag, value", PRETRAIN_CASES)
def test_pretrain_refuses_an_option_out_of_range_naming_it(tmp_path, capsys, flag, value):
    run = tmp_path / "run"
    argv = ["pretrain", "--run", str(run), "--device", "cpu", "--iters", "10", flag, value]
    _refused(capsys, argv, flag, run)


@pytest.mark.parametrize("flag, value", FINETUNE_CASES)
def test_finetune_refuses_an_option_out_of_range_naming_it(tmp_path, capsys, flag, value):
    run = tmp_path / "run"
    _refused(capsys, ["finetune", "--data", str(tmp_path), "--run", str(run), flag, value], flag, run)


@pytest.mark.parametrize("flag, value", SAMPLE_CASES)
def test_sample_refuses_a_count_or_shape_out_of_range_naming_it(tmp_path, capsys, flag, value):
    out = tmp_path / "data"
    _refused(capsys, ["sample", "cardiac", "--out", str(out), flag, value], flag, out)


@pytest.mark.parametrize(
    "cls, options, culprit",
    [
        (PretrainConfig, {"lr": float("inf")}, r"lr must be a finite number, got inf \(--lr\)"),
        (PretrainConfig, {"w_smooth": float("nan")}, r"w_smooth must be a finite number"),
        (PretrainConfig, {"workers": 10**12}, r"workers must be at most"),
        (PretrainConfig, {"iters": 10**12}, r"iters must be at most"),
        (FinetuneConfig, {"val_fraction": float("nan")}, r"val_fraction must be a finite number"),
    ],
)
def test_configs_built_in_python_or_yaml_refuse_non_finite_and_huge_numbers(cls, options, culprit):
    with pytest.raises(ValueError, match=culprit):
        cls(**options)


def test_values_inside_the_ranges_are_accepted():
    PretrainConfig(lr=1.0, batch=1024, workers=0, seed=2**32 - 1, ncc_eps=1.0, affine_warmup=1000, iters=1000)
    FinetuneConfig(batch=1, workers=256, seed=0)


@pytest.mark.parametrize("raw", ["0", "-5", "inf", "nan", "soon"])
def test_the_collective_timeout_from_the_environment_is_range_checked(monkeypatch, raw):
    from gvsl_app.training.distributed import collective_timeout

    monkeypatch.setenv("GVSL_DIST_TIMEOUT_S", raw)
    with pytest.raises(ValueError, match="GVSL_DIST_TIMEOUT_S"):
        collective_timeout()
    monkeypatch.setenv("GVSL_DIST_TIMEOUT_S", "120")
    assert collective_timeout().total_seconds() == 120

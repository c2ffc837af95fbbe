"""--resume continues a run as saved in its config.yaml: what may change, what is refused, paths
saved relative to another folder, a longer run in its learning-rate decay.
"""

import re
import subprocess

import pytest
import yaml

from gvsl_app.training.config import PretrainConfig, load_config
from gvsl_app.training.pretrain import pretrain
from gvsl_app.training.runs import RunFolder
from models.checkpoint import read_checkpoint

from helpers import GVSL, ROOT, drain, small


def test_resume_with_another_width_is_refused_and_a_checkpoint_that_does_not_fit_names_last_pt(tmp_path):
    drain(pretrain(small(tmp_path / "w", iters=1, val_every=1)))
    with pytest.raises(ValueError, match=r"width 8 -> 4 \(saved -> asked\).*fresh run folder"):
        drain(pretrain(small(tmp_path / "w", iters=2, val_every=1, width=4, resume=True)))
    # a config.yaml edited by hand no longer matches the checkpoint's own copy: refused, naming both
    config = tmp_path / "w" / "config.yaml"
    config.write_text(config.read_text().replace("width: 8", "width: 4"))
    with pytest.raises(
        ValueError, match=r"config\.yaml disagrees with .*last\.pt \(width 8 -> 4: checkpoint -> file\)"
    ):
        drain(pretrain(small(tmp_path / "w", iters=2, val_every=1, width=4, resume=True)))


def test_cli_resume_continues_with_the_saved_configuration_and_records_what_may_change(tmp_path):
    run = tmp_path / "r"
    first = ["--data", "synthetic:cardiac", "--n-synthetic", "2", "--iters", "2", "--size", "24", "--width", "4"]
    common = ["pretrain", "--run", str(run), "--workers", "0", "--quiet"]
    proc = subprocess.run(GVSL + common + first + ["--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # only the new length and a cadence: data, size, width, device... come from config.yaml
    resume = ["--resume", "--iters", "3", "--snapshot-every", "3"]
    proc = subprocess.run(GVSL + common + resume, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    ck = read_checkpoint(run / "checkpoints" / "last.pt")
    keys = ("data", "n_synthetic", "size", "width", "device", "iters", "snapshot_every")
    for config in (saved, ck["config"]):
        assert {k: config[k] for k in keys} == {
            "data": "synthetic:cardiac",
            "n_synthetic": 2,
            "size": 24,
            "width": 4,
            "device": "cpu",
            "iters": 3,
            "snapshot_every": 3,
        }
    assert ck["iteration"] == 3 and ck["model_config"]["widths"][0] == 4


def test_resume_refuses_options_that_change_what_is_trained_and_leaves_the_run_alone(tmp_path):
    cfg = small(tmp_path / "r", iters=2, val_every=2)
    drain(pretrain(cfg))
    run = RunFolder(cfg.run)
    config_text, metrics_text = run.config_path.read_text(), run.metrics_path.read_text()
    asked = load_config(PretrainConfig, run.config_path, run=cfg.run, resume=True, iters=4, size=48, lr=1e-3)
    with pytest.raises(ValueError) as err:
        drain(pretrain(asked))
    refused = re.search(r"trains: (.*) \(saved -> asked\)", str(err.value))
    assert refused is not None and refused.group(1) == "size 32 -> 48, lr 0.0001 -> 0.001"  # iters may change
    assert "--overwrite" in str(err.value) and "another --run" in str(err.value)
    assert run.config_path.read_text() == config_text and run.metrics_path.read_text() == metrics_text
    assert read_checkpoint(run.last)["iteration"] == 2


def test_resume_from_another_folder_takes_the_data_path_given_or_says_what_is_missing(tmp_path, monkeypatch):
    """A run started with ``--data data`` in one folder, resumed from another: the saved path
    is relative to where it started, so the path given now is the data (the same folder).
    """
    from dataclasses import asdict

    from gvsl_app.training.config import resume_config

    (tmp_path / "started" / "data").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    saved = asdict(PretrainConfig(data="data", run=str(tmp_path / "run"), size=32))
    monkeypatch.chdir(tmp_path / "elsewhere")
    asked = load_config(PretrainConfig, run=str(tmp_path / "run"), resume=True, data=str(tmp_path / "started" / "data"))
    config, changed = resume_config(asked, saved, "config.yaml")
    assert config.data == str(tmp_path / "started" / "data") and config.size == 32
    assert changed == {"data": ("data", str(tmp_path / "started" / "data"))}
    left_out = load_config(PretrainConfig, run=str(tmp_path / "run"), resume=True)
    with pytest.raises(ValueError, match=r"data 'data' is relative .* --data with its full path"):
        resume_config(left_out, saved, "config.yaml")
    monkeypatch.chdir(tmp_path / "started")  # from where it started, nothing to say
    config, changed = resume_config(left_out, saved, "config.yaml")
    assert config.data == "data" and changed == {}


def test_extending_a_run_in_its_decay_says_how_the_learning_rate_moves(tmp_path):
    cfg = small(tmp_path / "r", iters=3, decay_start=1)
    drain(pretrain(cfg))
    asked = load_config(PretrainConfig, run=cfg.run, resume=True, iters=6)
    first = next(pretrain(asked))
    assert "iters 3 -> 6" in first.message and "decays from iteration 1 to 6" in first.message
    now, was = re.search(r"at 3: x([\d.]+), was x([\d.]+)", first.message).groups()
    assert float(now) > float(was)  # the longer decay is earlier in its cosine: a higher rate

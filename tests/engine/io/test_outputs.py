"""A command's outputs folder: staged inside ``--out``, swapped in only when complete, rolled back on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gvsl_app.io import outputs
from gvsl_app.io.outputs import prepare_output, staged_folder

OURS = ("images", "labels", "report.json")


def _earlier(target: Path) -> dict[str, str]:
    (target / "images").mkdir(parents=True)
    (target / "labels").mkdir()
    (target / "images" / "a.txt").write_text("old image")
    (target / "labels" / "a.txt").write_text("old labels")
    (target / "notes.txt").write_text("the user's")
    return _files(target)


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_new(stage: Path) -> None:
    for name in ("images", "labels"):
        (stage / name).mkdir()
        (stage / name / "b.txt").write_text(f"new {name}")
    (stage / "report.json").write_text("{}")


def test_new_outputs_replace_ours_and_leave_the_rest(tmp_path):
    target = tmp_path / "out"
    _earlier(target)
    with staged_folder(target, OURS) as stage:
        _write_new(stage)
    assert _files(target) == {
        "images/b.txt": "new images",
        "labels/b.txt": "new labels",
        "report.json": "{}",
        "notes.txt": "the user's",
    }
    assert sorted(p.name for p in target.iterdir()) == ["images", "labels", "notes.txt", "report.json"]


def test_a_move_that_fails_half_way_puts_the_earlier_outputs_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    before = _earlier(target)
    real = os.replace

    def replace(src, dst):  # a file held open by another program, met on the second move in
        if Path(dst) == target / "labels" and Path(src).parent.name.startswith(outputs.PARTIAL_PREFIX):
            raise PermissionError(13, "in use", str(dst))
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(PermissionError), staged_folder(target, OURS) as stage:
        _write_new(stage)
    assert _files(target) == before
    assert sorted(p.name for p in target.iterdir()) == ["images", "labels", "notes.txt"]


def test_a_failed_first_call_leaves_no_out_folder_and_a_failed_one_keeps_the_earlier(tmp_path):
    with pytest.raises(RuntimeError), staged_folder(tmp_path / "new", OURS) as stage:
        _write_new(stage)
        raise RuntimeError("the network failed")
    assert not (tmp_path / "new").exists()
    target = tmp_path / "out"
    before = _earlier(target)
    with pytest.raises(RuntimeError), staged_folder(target, OURS) as stage:
        _write_new(stage)
        raise RuntimeError("the network failed")
    assert _files(target) == before


def test_an_out_linked_to_another_disk_is_written_there(tmp_path):
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev or not os.access(other, os.W_OK):
        pytest.skip("no second writable file system here")
    real = other / f"gvsl-test-{os.getpid()}"
    real.mkdir()
    try:
        link = tmp_path / "out"
        link.symlink_to(real, target_is_directory=True)
        prepare_output(link, OURS, overwrite=False)
        with staged_folder(link, OURS) as stage:
            _write_new(stage)
        assert _files(real)["report.json"] == "{}"
        with staged_folder(link, OURS) as stage:  # and replaced there again, across the link
            _write_new(stage)
            (stage / "report.json").write_text('{"again": 1}')
        assert _files(real)["report.json"] == '{"again": 1}'
    finally:
        import shutil

        shutil.rmtree(real, ignore_errors=True)


def test_a_staging_folder_a_killed_call_left_is_not_an_output(tmp_path):
    target = tmp_path / "out"
    (target / f"{outputs.PARTIAL_PREFIX}dead").mkdir(parents=True)
    assert prepare_output(target, OURS, overwrite=False) == target  # not refused as non-empty

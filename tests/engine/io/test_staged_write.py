"""Volumes are written beside their target, verified, and only then renamed over it: a full
disk (ITK's writers print "NWAD: wrote only ..." and raise nothing) never leaves a truncated
file that says it was written, never replaces a good file, and leaves no temporary behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from gvsl_app.io.images import read_volume, volume_to_sitk, write_volume
from gvsl_app.io.outputs import STAGE_PREFIX, IncompleteWriteError, write_staged
from gvsl_app.io.volume import Volume
from gvsl_app.io.write_checks import verify_written

FORMATS = [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd"]


def _volume(side: int, seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)  # random floats: gzip cannot shrink them below the disk's size
    return Volume(rng.standard_normal((side, side, side)).astype(np.float32), spacing=(1.0, 1.5, 2.0))


def _files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where mounting is not permitted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_full_disk_neither_truncates_nor_replaces_the_earlier_file(tiny_disk, suffix):
    target = tiny_disk / f"seg{suffix}"
    small = _volume(8, seed=1)
    write_volume(small, target)
    before = _files(tiny_disk)
    # 2 MB of float32 do not fit. ITK's writers mostly print and go on (then the verification
    # refuses the file); the MetaImage one sometimes raises. Either is the CLI's one-line error.
    with pytest.raises((OSError, ValueError), match=f"cannot write {re.escape(str(target))}") as info:
        write_volume(_volume(80), target)
    assert STAGE_PREFIX not in str(info.value)  # the message names the target, not a temporary
    assert _files(tiny_disk) == before  # the .mhd and its .raw too; no temporary left
    np.testing.assert_array_equal(read_volume(target).array, small.array)


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_full_disk_leaves_no_file_where_there_was_none(tiny_disk, suffix):
    with pytest.raises((OSError, ValueError)):
        write_volume(_volume(80), tiny_disk / f"new{suffix}")
    assert list(tiny_disk.iterdir()) == []


@pytest.mark.parametrize("suffix", FORMATS)
def test_verification_refuses_a_truncated_file_of_every_format(tmp_path, suffix):
    vol = _volume(16)
    img = volume_to_sitk(vol)
    good = write_volume(vol, tmp_path / f"good{suffix}")
    verify_written(img, good)  # complete: passes
    data = good.with_suffix(".raw") if suffix == ".mhd" else good
    content = data.read_bytes()
    data.write_bytes(content[: len(content) - 100])  # the last 100 bytes never reached the disk
    with pytest.raises(IncompleteWriteError, match="disk full"):
        verify_written(img, good)


def test_verification_refuses_a_header_of_another_size(tmp_path):
    written = write_volume(_volume(16), tmp_path / "v.mha")
    with pytest.raises(IncompleteWriteError, match=r"says \(16, 16, 16\)"):
        verify_written(volume_to_sitk(_volume(12)), written)


def test_write_staged_renames_companions_before_the_target_and_cleans_up_a_failure(tmp_path):
    target = tmp_path / "a.mhd"

    def write(staged: Path) -> None:
        sitk.WriteImage(volume_to_sitk(_volume(4)), str(staged))

    write_staged(target, write)
    assert sorted(os.listdir(tmp_path)) == ["a.mhd", "a.raw"]

    def refuse(staged: Path) -> None:
        raise IncompleteWriteError("refused")

    before = _files(tmp_path)
    with pytest.raises(IncompleteWriteError):
        write_staged(target, lambda staged: write(staged), refuse)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("suffix", [".nii", ".mhd"])
def test_gvsl_segment_overwrite_on_a_full_disk_exits_2_and_keeps_the_earlier_result(
    tiny_disk, tmp_path, seg_ckpt, capsys, suffix
):
    """The issue's cases: 'wrote seg.nii' with exit 0 and a truncated file; an .mhd left at 0
    bytes with its .raw partial by --overwrite.
    """
    from gvsl_app.cli import main
    from gvsl_app.data.synthetic import make_cardiac_subject

    image = write_volume(make_cardiac_subject(3, (48, 48, 48))[0], tmp_path / "ct.nii.gz")
    out = tiny_disk / f"seg{suffix}"
    args = ["segment", str(image), "--out", str(out), "--weights", str(seg_ckpt), "--device", "cpu", "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    before = _files(tiny_disk)
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    (tiny_disk / "filler").write_bytes(b"\0" * max(free - 16 * 1024, 0))  # 16 KB left: the map needs ~110 KB
    assert main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot write" in err and "Traceback" not in err, err
    (tiny_disk / "filler").unlink()
    assert _files(tiny_disk) == before  # the earlier map (and .raw) as it was; no temporary left

"""Where a command's outputs go: never mixed with an earlier run's, never over its own inputs,
and swapped in only once the new ones are complete.

A command first calls :func:`prepare_output` (before it reads anything heavy or computes:
the refusals are cheap and say what to change), then writes its outputs into the folder
:func:`staged_folder` yields inside ``--out`` and swaps them in when the block ends without
an error. A failure while reading, computing or writing therefore leaves the earlier outputs
exactly as they were.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

__all__ = [
    "IncompleteWriteError",
    "OutputError",
    "prepare_output",
    "protect_inputs",
    "remove_stale_stages",
    "require_writable",
    "staged_folder",
    "write_staged",
]


logger = logging.getLogger(__name__)

PARTIAL_PREFIX = ".gvsl-partial-"
"""Name start of the staging folder inside ``--out`` (one a killed call left is not an output)."""


class OutputError(ValueError):
    """An ``--out`` that cannot be used as given; the message names the path and what to do."""


class IncompleteWriteError(OSError):
    """A file that did not reach the disk whole (a full disk: ITK's writers only print
    "NWAD: wrote only ..." and raise nothing); the earlier file at its name is unchanged.
    """


STAGE_PREFIX = ".gvsl-writing-"
"""Name start of the folder :func:`write_staged` writes in, beside the target."""

_STAGE_NAME = re.compile(r"^(?:\.gvsl-partial-|\.gvsl-writing-)(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
"""A staging folder's name: the prefix, the host and PID of the process writing it, a random part."""


def _host() -> str:
    """This machine's name as a staging folder carries it (a shared network folder may be
    written from several machines: only this one's processes can be checked).
    """
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def _stage_name(prefix: str) -> str:
    return f"{prefix}{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_stages(folder: str | os.PathLike) -> list[Path]:
    """Delete the staging folders a killed call left in ``folder`` (``kill -9`` or a power cut
    between staging and the swap: a whole set of outputs, never cleaned otherwise).

    A staging folder's name carries the host and PID of the process that made it; only this
    host's whose process is gone are removed (a call still writing there keeps its own), and each removal
    is logged. Returns the folders removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        found = _STAGE_NAME.match(entry.name)
        if found is None or not entry.is_dir() or found["host"] != _host() or _alive(int(found["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    if removed:
        logger.warning(
            "removed %d unfinished output folder(s) that an interrupted call (process gone) left in %s: %s",
            len(removed),
            folder,
            ", ".join(p.name for p in removed),
        )
    return removed


def write_staged(
    path: str | os.PathLike, write: Callable[[Path], None], verify: Callable[[Path], None] | None = None
) -> Path:
    """Write ``path`` without ever leaving it half-written or replacing a good file by a bad one.

    ``write(staged)`` writes the file under its own name in a fresh folder beside ``path``
    (:data:`STAGE_PREFIX`; the same file system, so the final rename is atomic), with any
    companion files it makes there (the ``.raw`` of an ``.mhd``, the ``.img`` of an ``.hdr``);
    ``verify(staged)`` then checks what reached the disk and raises when it is incomplete.
    Only then are the files renamed onto their targets, the companions first and ``path``
    last. On any failure the staging folder is removed and the targets are as they were: no
    temporary file is left behind. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_stages(path.parent)
    stage = path.parent / _stage_name(STAGE_PREFIX)
    stage.mkdir()
    try:
        staged = stage / path.name
        write(staged)
        if not staged.is_file():
            raise IncompleteWriteError(f"cannot write {path}: the writer produced no file")
        if verify is not None:
            verify(staged)
        companions = sorted(f for f in stage.iterdir() if f.name != path.name)
        for f in [*companions, staged]:
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return path


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def require_writable(path: str | os.PathLike) -> None:
    """Refuse a file or folder path that could not be created or written.

    The nearest existing folder on the way to ``path`` (``path`` itself when it is a folder)
    is probed by creating and removing a hidden file: permission bits alone do not tell
    (root ignores them, a read-only mount or an ACL overrides them), and nothing is created
    on the way, so a refused or failed command leaves no empty folders behind.
    """
    path = Path(path)
    folder = _nearest_existing(path if not path.exists() or path.is_dir() else path.parent)
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: {folder} is a file, not a folder; choose another --out")
    probe = folder / f".gvsl-write-check-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch(exist_ok=False)
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: {folder} is not writable ({exc.strerror or exc}); choose another --out"
        ) from None
    probe.unlink(missing_ok=True)


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(item: Path, folder: Path) -> bool:
    """True when ``item`` lies inside ``folder`` (both resolved: links and ``..`` followed)."""
    try:
        return folder.exists() and item.resolve().is_relative_to(folder.resolve()) and not _same(item, folder)
    except OSError:
        return False


def protect_inputs(
    path: Path, ours: tuple[str, ...] | None, inputs: Iterable[tuple[str, Path]], option: str = "--out"
) -> None:
    """Refuse an output that is, or would replace, one of the command's inputs.

    ``inputs`` are ``(what, path)`` pairs (``"input image"``, ``"reference labels folder"``...).
    A one-file output must not be an input; a folder output must not be an input folder, nor
    hold an input anywhere inside it, links followed (writing there would mix the outputs
    with, say, the images or the reference label maps, with ``--overwrite`` too), and none of
    the files it writes may be an input.
    """
    inputs = [(what, Path(given)) for what, given in inputs]
    for what, given in inputs:
        if _same(path, given):
            raise OutputError(
                f"{option} {path} is the {what}: writing there would "
                + ("overwrite it" if ours is None else "replace or mix with the inputs")
                + f"; choose another {option}"
            )
        for name in ours or ():
            if _same(path / name, given):
                raise OutputError(
                    f"{option} {path} would replace the {what} {given} (this command writes {name} there); "
                    f"choose another {option}"
                )
    for what, given in inputs:
        if ours is not None and _inside(given, path):
            raise OutputError(
                f"{option} {path} holds the {what} {given}: the outputs would be mixed with the inputs "
                f"(also with --overwrite); choose another {option}, outside the inputs' folders"
            )


def prepare_output(
    path: str | os.PathLike,
    ours: tuple[str, ...] | None,
    overwrite: bool,
    inputs: Iterable[tuple[str, Path]] = (),
    option: str = "--out",
) -> Path:
    """Check, before any work, that a command may write its outputs at ``path``; nothing is changed.

    ``ours`` lists the files (or sub-folders) a folder-writing command writes (``None``:
    ``path`` is one file). A non-empty folder, or an existing file, is refused unless
    ``overwrite``; an output that is, or would replace, one of ``inputs`` is refused always
    (:func:`protect_inputs`), as is a path that cannot be written (:func:`require_writable`).
    ``option`` is how the messages name the path (``--out``, ``--report``).
    With ``overwrite``, the earlier outputs are replaced only when the new ones are complete
    (:func:`staged_folder`), exactly ``ours`` and nothing else of the folder.
    """
    path = Path(path)
    parent = _nearest_existing(path.parent if ours is None else path)
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is a file, not a folder; choose another --out")
    protect_inputs(path, ours, inputs, option)
    if ours is None:
        if path.exists() and not overwrite:
            raise OutputError(f"{path} already exists; choose another {option} or pass --overwrite to replace it")
        if path.is_dir():
            raise OutputError(f"{path} is a folder; {option} names the file to write (e.g. seg.nii.gz)")
        require_writable(path)
        return path
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file; --out names the folder to write the outputs into")
    present = sorted(p.name for p in path.iterdir() if not p.name.startswith(PARTIAL_PREFIX)) if path.is_dir() else []
    if present and not overwrite:
        shown = ", ".join(present[:5]) + (" ..." if len(present) > 5 else "")
        raise OutputError(
            f"{path} is not empty ({shown}); choose another --out or pass --overwrite, which "
            f"replaces this command's outputs there ({', '.join(ours)})"
        )
    require_writable(path)  # the staging folder is made inside it
    return path


@contextmanager
def staged_folder(target: str | os.PathLike, ours: tuple[str, ...]) -> Iterator[Path]:
    """A fresh hidden folder inside ``target`` to write the outputs into; swapped in on success.

    When the block ends without an error, each name of ``ours`` in ``target`` (an earlier
    call's output) is moved aside and every entry written replaces it; other files of
    ``target`` stay. When the block raises, or a move fails (a file held open elsewhere),
    whatever was moved is put back and ``target`` is as it was. The stage lies inside
    ``target``, so every move is a rename on one file system, also where ``target`` is a
    mount point or a link to another disk.
    """
    target = Path(target)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    remove_stale_stages(target)
    stage = target / _stage_name(PARTIAL_PREFIX)
    stage.mkdir()
    ok = False
    try:
        yield stage
        aside = stage / ".replaced"
        aside.mkdir()
        moved: list[str] = []  # earlier outputs moved aside, in order
        placed: list[str] = []  # new outputs moved in, in order
        try:
            for name in ours:
                if (target / name).exists() or (target / name).is_symlink():
                    os.replace(target / name, aside / name)
                    moved.append(name)
            for entry in sorted(stage.iterdir()):
                if entry != aside:
                    os.replace(entry, target / entry.name)
                    placed.append(entry.name)
        except BaseException:
            for name in reversed(placed):  # roll back: the new ones out, the earlier ones in
                with suppress(OSError):
                    os.replace(target / name, stage / name)
            for name in reversed(moved):
                with suppress(OSError):
                    os.replace(aside / name, target / name)
            raise
        ok = True
    finally:
        with suppress(OSError):
            shutil.rmtree(stage)
        if created and not ok:
            with suppress(OSError):
                target.rmdir()  # a failed first call leaves no empty --out behind

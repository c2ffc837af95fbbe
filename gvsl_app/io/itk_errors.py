"""How the engine reports unusable files: one error type and ITK's messages made readable."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

import SimpleITK as sitk


class VolumeReadError(ValueError):
    """A volume or label file that cannot be used; the message names the file and the fix."""


def first_line(exc: BaseException) -> str:
    """The informative part of an ITK exception (they start with a C++ source location)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        m = re.search(r"ERROR:\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?(.+)", ln)
        if m:
            return m.group(1).strip().rstrip(".:")
    return lines[-1] if lines else type(exc).__name__


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """Silence ITK's own stderr warnings while probing files: we report problems ourselves."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


T = TypeVar("T")


def read_quietly(action: Callable[[], T], explain: Callable[[str], str]) -> T:
    """Run an ITK read with ITK's own warnings silenced and return its result.

    An ITK failure (``RuntimeError``) becomes a :class:`VolumeReadError` whose message
    ``explain`` builds from ITK's reason (its :func:`first_line`).
    """
    try:
        with quiet_itk():
            return action()
    except RuntimeError as exc:
        raise VolumeReadError(explain(first_line(exc))) from None

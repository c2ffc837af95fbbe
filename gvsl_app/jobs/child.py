"""Entry point of the training processes the GUI starts: the ``gvsl`` CLI, tied to the GUI.

``python -m gvsl_app.jobs.child pretrain ...`` runs exactly ``gvsl pretrain ...``, after
asking Linux to send it SIGTERM when the GUI process dies (``PR_SET_PDEATHSIG``): the CLI
then stops at the next step and writes ``last.pt``, so even a crashed or killed viewer
leaves no orphan. (Done here rather than in a ``preexec_fn``, which is unsafe in a
multi-threaded GUI process.)
"""

from __future__ import annotations

import os
import signal
import sys

PARENT_ENV = "GVSL_GUI_PID"


def tie_to_parent(parent_pid: int) -> None:
    """Ask Linux for SIGTERM when the parent dies; exit at once if ``parent_pid`` already has."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except Exception:
            pass
    if parent_pid and os.getppid() != parent_pid:  # the GUI died before the request took effect
        sys.exit(1)


def main() -> int:
    """Run the ``gvsl`` CLI on this process's arguments, tied to the GUI process."""
    tie_to_parent(int(os.environ.get(PARENT_ENV, "0") or 0))
    from gvsl_app.cli import main as gvsl_main

    return gvsl_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

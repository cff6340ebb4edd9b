"""Where the `modelplex` command writes: its result on stdout and nothing else.

Progress bars and the chatter of libraries go to stderr, so that
`modelplex jobs submit --wait ... > job.json` or `$(modelplex examples build)`
capture the result alone, whether or not stdout is a terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import Progress


def stderr_progress() -> Progress:
    """A transient progress bar on stderr, drawn only when stderr is a terminal."""
    console = Console(stderr=True)
    return Progress(console=console, transient=True, disable=not console.is_terminal)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send whatever is printed meanwhile to stderr, Python's `print` and native
    code writing to file descriptor 1 alike (model builders print as they load)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)

"""The one way to make a Rich console for the command line, and the one way a service logs.

On a terminal Rich fits text to the window. Without one (a log file, CI, a pipe)
it would wrap at 80 columns and split a file path or an error across lines, so
there lines are never wrapped and tables get room to lay out at their natural width.

>>> make_console(file=__import__("io").StringIO()).soft_wrap   # not a terminal
True
"""

from __future__ import annotations

import logging
import os

from rich.console import Console

UNWRAPPED_WIDTH = 240
"""Width given to tables when no terminal (and no COLUMNS) says how wide the screen is."""


def make_console(*, stderr: bool = False, **options) -> Console:
    """A console on stdout (or stderr) that never wraps a line when it is not a terminal."""
    console = Console(stderr=stderr, **options)
    if not console.is_terminal:
        console.soft_wrap = True
        if "width" not in options and not os.environ.get("COLUMNS"):
            console.width = UNWRAPPED_WIDTH
    return console


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to_stderr(level: str) -> None:
    """How every service logs: plain lines on stderr (a log collector's input) at ``level``."""
    logging.basicConfig(level=level, format=LOG_FORMAT)

"""The ``fedgmi`` command's entry point (console script and ``python -m fedgmi``).

It installs a SIGINT handler before anything heavy is imported: torch, Lightning and the rest
take seconds to import, and a Ctrl-C in that time would otherwise print a long
``KeyboardInterrupt`` traceback. Until :mod:`fedgmi.cli` is loaded a SIGINT ends the process at
once with one line (nothing has been run or written yet) and exit status 130; from then on the
CLI's own handling applies (one line too, see :func:`fedgmi.cli.main`); once the CLI returns,
SIGINT is ignored while the interpreter shuts down.
"""

from __future__ import annotations

import os
import signal

STARTING_LINE = b"fedgmi: SIGINT while starting; nothing was run or written\n"


def _stop_while_starting(signum: int, frame: object) -> None:
    os.write(2, STARTING_LINE)
    os._exit(128 + signum)


def install() -> None:
    """Make a SIGINT end the process with one line (while the CLI is being imported)."""
    signal.signal(signal.SIGINT, _stop_while_starting)


def main() -> int:
    """Import the CLI under :func:`install`'s handler, restore Python's default one, and run
    ``fedgmi.cli.main`` (which turns a KeyboardInterrupt into one line); returns the exit status."""
    install()
    from fedgmi.cli import main as cli_main  # the slow imports

    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return cli_main()
    finally:  # the run is over: a late Ctrl-C must not interrupt the interpreter's clean-up
        signal.signal(signal.SIGINT, signal.SIG_IGN)

"""Expected errors at every entry point (a missing file, a refused overwrite, a bad value, a computation that
went non-finite): one line for the person who ran the command and exit status 2, the traceback in a debug log
for whoever debugs it, or on the terminal with --debug.

    if __name__ == "__main__":
        run_main(main)  # main's parser has add_debug_argument(parser)
"""

import logging
import os
import sys
import tempfile
import traceback
from datetime import datetime
from pathlib import Path


class NonFiniteError(RuntimeError):
    """A generation produced NaN or infinity; the message names the part, the step and what to try."""


# What a person's input or files cause; anything else is a bug and keeps its traceback on the terminal.
# (SettingError, RecordError, CheckpointError, ImageError and PoseError are ValueErrors.)
EXPECTED = (ValueError, OSError, NonFiniteError)
DEBUG_FLAG = "--debug"
DEBUG_LOG = Path(os.environ.get("CONTROLNET_DEBUG_LOG") or Path(tempfile.gettempdir()) / "controlnet-debug.log")


def one_line(error):
    """The error's message on one line (what a terminal, a page or a JSON field shows)."""
    return " ".join(str(error).split()) or type(error).__name__


def log_traceback(error):
    """Append the error's traceback to the debug log; returns the log's path (None if it cannot be written)."""
    try:
        DEBUG_LOG.parent.mkdir(parents=True, exist_ok=True)
        with open(DEBUG_LOG, "a") as log:
            log.write(f"--- {datetime.now().isoformat(timespec='seconds')} {' '.join(sys.argv)}\n")
            log.write("".join(traceback.format_exception(error)))
        return DEBUG_LOG
    except OSError:
        return None


def add_debug_argument(parser):
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="on an error, show its traceback, not one line (also: CONTROLNET_DEBUG=1)")


def run_main(main, argv=None):
    """Run a command's main(argv); an expected error ends it with one line on stderr and exit status 2 (with
    --debug or CONTROLNET_DEBUG=1, with its traceback as well)."""
    debug = DEBUG_FLAG in (sys.argv[1:] if argv is None else argv) or os.environ.get("CONTROLNET_DEBUG")
    try:
        return main(argv)
    except EXPECTED as error:
        if debug:
            raise
        log_traceback(error)
        print(f"error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None


class DebugLogHandler(logging.Handler):
    """A server's logged exceptions: one line on the terminal, the traceback in the debug log."""

    def emit(self, record):
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            log_traceback(record.exc_info[1])
            message = f"{message}: {one_line(record.exc_info[1])} (traceback in {DEBUG_LOG})"
        print(f"{record.levelname.lower()}: {message}", file=sys.stderr)

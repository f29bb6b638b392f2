"""Expected errors at every entry point (a missing file, a refused overwrite, a bad value): one line for the
person who ran the command, the traceback in a debug log for whoever debugs it.

    if __name__ == "__main__":
        run_main(main)
"""

import logging
import os
import sys
import tempfile
import traceback
from datetime import datetime
from pathlib import Path

# What a person's input or files cause; anything else is a bug and keeps its traceback on the terminal.
# (CheckpointError and ImageError are ValueErrors.)
EXPECTED = (ValueError, OSError)
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


def run_main(main, argv=None):
    """Run a command's main(); an expected error ends it with one line on stderr and exit status 2 (with
    CONTROLNET_DEBUG=1 set, with its traceback as well)."""
    try:
        return main(argv)
    except EXPECTED as error:
        if os.environ.get("CONTROLNET_DEBUG"):
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

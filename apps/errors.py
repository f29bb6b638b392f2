"""Errors in the apps: the page shows the message; the server's terminal gets one line per error; a traceback
goes only to the debug log (Gradio would print one for every refused upload)."""

import logging

import gradio as gr

from ldm.errors import DebugLogHandler, one_line

log = logging.getLogger("apps")


def page_error(message):
    """The gr.Error to raise for an input the app refuses (a bad picture, a missing file, a wrong value)."""
    log.info("refused: %s", one_line(message))
    return gr.Error(str(message), print_exception=False)


def failure(error, doing="generation"):
    """The gr.Error to raise for an unexpected error: its type and message on the page, its traceback logged."""
    log.error("%s failed", doing, exc_info=error)
    return gr.Error(f"{doing} failed: {type(error).__name__}: {error}", print_exception=False)


def log_to_terminal():
    """Send the apps' log to the terminal, one line each (tracebacks to the debug log); once per process."""
    if not any(isinstance(h, DebugLogHandler) for h in log.handlers):
        log.addHandler(DebugLogHandler())
        log.setLevel(logging.INFO)
        log.propagate = False

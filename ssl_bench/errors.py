"""The one exception type for bad user input (exit code 2, one line, no traceback), and the
conversion of any failure into the one line the command line prints."""

from __future__ import annotations

import re

#: terminal control sequences (colours, cursor moves) some libraries put into exception texts
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
#: how torch's DataLoader re-raises an exception of a worker process: its traceback text, then the
#: original ``module.Type: message`` as the last line
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown name, a wrong type.

    The message must name the offending file or key and say what would be valid;
    the CLI prints it on one line and exits with code 2.
    """

    exit_code = 2


class NotApplicable(UserError):
    """The protocol does not apply to this checkpoint (e.g. a ViT-only protocol on a ConvNet)."""


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line: escapes removed, whitespace collapsed, and for an error
    re-raised from a DataLoader worker only the original message (not the worker's traceback)."""
    text = str(err)
    if _WORKER_TRACEBACK in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(_ESCAPES.sub("", text).split())

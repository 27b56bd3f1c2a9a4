"""Errors a user can fix: the command line prints their message as one line, without a traceback.

The message must name what is wrong and, where there is one, the fix. Library code raises subclasses
that are also the builtin type callers already catch (`class CheckpointError(UserError, ValueError)`),
so code that handles a ValueError keeps working.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input, a missing file, a wrong setting: not a bug in this package."""


class StopRequested(KeyboardInterrupt):
    """SIGINT or SIGTERM asked a command to stop; every `except KeyboardInterrupt` handles it.

    A subclass, not KeyboardInterrupt itself: CPython marks a KeyboardInterrupt (the exact type) that
    unwinds through C-level `PyRun_*` code, which some extension modules call, as unhandled, and then
    ends the process by SIGINT (exit -2) even after the command caught it and returned 0.
    """

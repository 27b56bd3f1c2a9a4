"""Errors a user can fix (the command line prints their message as one line, without a traceback),
and the stop request SIGINT/SIGTERM raise in every executable.

The message must name what is wrong and, where there is one, the fix. Library code raises subclasses
that are also the builtin type callers already catch (`class CheckpointError(UserError, ValueError)`),
so code that handles a ValueError keeps working.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Sequence

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # a terminal's Ctrl-C; systemd, supervisors and `kill`
_received_stop_signal: str | None = None


class UserError(Exception):
    """Bad input, a missing file, a wrong setting: not a bug in this package."""


class StopRequested(KeyboardInterrupt):
    """SIGINT or SIGTERM asked a command to stop; every `except KeyboardInterrupt` handles it.

    A subclass, not KeyboardInterrupt itself: CPython marks a KeyboardInterrupt (the exact type) that
    unwinds through C-level `PyRun_*` code, which some extension modules call, as unhandled, and then
    ends the process by SIGINT (exit -2) even after the command caught it and returned 0.
    """


def ignore_stop_signals() -> None:
    """Once stopping, a second SIGINT/SIGTERM must not cut the clean-up short (nodes deactivating,
    bag writers closing): a terminal's Ctrl-C reaches every process of the group, and a parent that
    stops its children sends its own."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


# Where a node process's stop signal must not raise: rclpy's own Python code and the generated message
# classes it calls from C. An exception raised there at an arbitrary bytecode left a half-built rclpy
# Task whose __del__ printed a traceback (CI, 2026-12-03), or came out as pybind11's RuntimeError.
ROS_CODE = (f'{os.sep}rclpy{os.sep}', f'{os.sep}msg{os.sep}_', f'{os.sep}srv{os.sep}_', f'{os.sep}action{os.sep}_')


def stop_on_signals(defer_inside: Sequence[str] = ()) -> dict[int, object]:
    """Make SIGINT and SIGTERM raise StopRequested in the main thread, once (further ones are ignored
    while it stops). Returns the handlers it replaced.

    `defer_inside`: path fragments of code the exception must not land in; when the signal arrives
    there, the handler only records it, and the loop that called into that code stops on
    `received_stop_signal()` (nodes.lifecycle.spin_until_stopped)."""
    def interrupt(signum: int, frame: object) -> None:
        global _received_stop_signal
        _received_stop_signal = signal.Signals(signum).name
        ignore_stop_signals()
        filename = getattr(getattr(frame, 'f_code', None), 'co_filename', '')
        if any(part in filename for part in defer_inside):
            return
        raise StopRequested(_received_stop_signal)
    return {signum: signal.signal(signum, interrupt) for signum in STOP_SIGNALS}


def received_stop_signal() -> str | None:
    """The name of the stop signal `stop_on_signals` turned into StopRequested, if one came. The
    StopRequested itself can arrive disguised: raised inside a C extension's call back into Python
    (rclpy converting a taken message), pybind11 reports it as a RuntimeError."""
    return _received_stop_signal

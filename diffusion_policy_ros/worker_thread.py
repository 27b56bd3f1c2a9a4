"""Threads for the work a node must keep off its executor thread: the newest job wins.

The guard's fallback plans run on one (a plan may take the whole 0.1 s budget; on the executor it
would delay the check of the next, free chunk), and so do the policy node's camera takes (a 4000x3000
frame takes ~110 ms to copy out of DDS; on the executor it would delay the control tick). The
executor thread only calls `submit()` (a pointer swap under a lock); a job that arrives while another
runs replaces any job still waiting, since the newer one makes the older pointless (a newer blocked
chunk, a newer tick). `LatestDeadline` is the same idea for a timeout: the newest deadline wins.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from diffusion_policy_ros.scheduling import use_normal_scheduling

Job = Callable[[], None]


@dataclass
class JobStats:
    submitted: int = 0
    replaced: int = 0  # waiting jobs superseded by a newer one before they started
    finished: int = 0
    errors: int = 0


class LatestJobThread:
    """Runs the newest job submitted (a job delivers its own result); `on_error` gets what a job raised."""

    def __init__(self, name: str, on_error: Callable[[BaseException], None] | None = None, nice: int = 0) -> None:
        """`nice` > 0 runs the thread that many nice steps below the thread that starts it (Linux); it is
        normally scheduled even when started from a real-time thread (`scheduling`)."""
        self._on_error = on_error
        self._nice = nice
        self.stats = JobStats()
        self._lock = threading.Lock()
        self._pending: Job | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._pending is not None:
                self.stats.replaced += 1
            self._pending = job
            self.stats.submitted += 1
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being planned."""
        with self._lock:
            return self._pending is None and not self._busy

    def stop(self, timeout: float = 5.0) -> bool:
        """Let the job in progress finish, drop any waiting one, and join the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        use_normal_scheduling(self._nice)
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stop.is_set():
                with self._lock:
                    job, self._pending = self._pending, None
                    self._busy = job is not None
                if job is None:
                    break
                try:
                    job()
                except Exception as err:  # noqa: BLE001 - the thread must outlive a failing job
                    self.stats.errors += 1
                    if self._on_error is not None:
                        self._on_error(err)
                finally:
                    with self._lock:
                        self._busy = False
                        self.stats.finished += 1


class LatestDeadline:
    """Calls the action given to `arm` once its delay has passed, unless a newer `arm` replaced it or
    `stop` came first. One thread serves every deadline, where a threading.Timer starts a thread per
    deadline (the guard arms one per fallback plan: thousands an hour, each a thread start and a stack).

    The thread starts at the first `arm`, so it is scheduled like the thread that arms it (real-time
    when that is the node's executor thread under `realtime_priority`): a deadline must fire on time
    when the work it bounds is starved. `on_error` gets what an action raised."""

    def __init__(self, name: str, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._name = name
        self._on_error = on_error
        self._changed = threading.Condition()
        self._due: float | None = None  # time.monotonic() when `_action` runs
        self._action: Job | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None

    def arm(self, delay_s: float, action: Job) -> None:
        with self._changed:
            if self._stopped:
                return
            self._due, self._action = time.monotonic() + delay_s, action
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._changed.notify()

    def stop(self, timeout: float = 5.0) -> bool:
        """Drop the waiting deadline and join the thread (an action already running finishes)."""
        with self._changed:
            self._stopped = True
            self._changed.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopped and (self._due is None or time.monotonic() < self._due):
                    self._changed.wait(None if self._due is None else self._due - time.monotonic())
                if self._stopped:
                    return
                action, self._due, self._action = self._action, None, None
            try:
                action()
            except Exception as err:  # noqa: BLE001 - the thread must outlive a failing action
                if self._on_error is not None:
                    self._on_error(err)

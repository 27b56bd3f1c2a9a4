"""The guard's planning thread: fallback plans run here, never on the node's executor thread.

A plan may take the whole planning budget (0.1 s by default); on the executor it would delay joint
states, scene updates and the check of the next (free) chunk. The executor thread only calls
`submit()` (a pointer swap under a lock); a job that arrives while another runs replaces any job
still waiting, since a newer blocked chunk makes an older one's plan pointless. A job is a plan
(`CollisionGuard.plan`), or a whole review where the checker itself waits on services answered by
the executor (the MoveIt backend), which must then not be blocked by it.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

Job = Callable[[], None]


@dataclass
class PlanningStats:
    submitted: int = 0
    replaced: int = 0  # waiting requests superseded by a newer one before planning started
    finished: int = 0
    errors: int = 0


class PlanningWorker:
    """Runs the newest job (which publishes its own decision); `on_error` gets what a job raised."""

    def __init__(self, on_error: Callable[[BaseException], None] | None = None,
                 name: str = 'guard-planner') -> None:
        self._on_error = on_error
        self.stats = PlanningStats()
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
        """Finish the plan in progress (bounded by the planning budget) and join the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
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
                except Exception as err:  # noqa: BLE001 - the thread must outlive a failing plan
                    self.stats.errors += 1
                    if self._on_error is not None:
                        self._on_error(err)
                finally:
                    with self._lock:
                        self._busy = False
                        self.stats.finished += 1

"""The inference thread: newest observation window in, stamped action chunk out, never in the way.

The 10 Hz timer only ever calls `notify()` (an Event.set) and `take_chunk()` (a lock held for a pointer
swap), so a slow or failing policy can never delay a published trajectory. Old windows are never
queued: when inference is slower than the tick, the worker simply takes whatever is newest when it is
free again.
"""
from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffusion_policy_ros.control.chunks import ActionChunk
from diffusion_policy_ros.control.health import HoldCode, HoldReason
from diffusion_policy_ros.control.observation import ObservationWindow
from diffusion_policy_ros.control.stats import RollingPercentiles
from diffusion_policy_ros.scheduling import use_normal_scheduling

PolicyFn = Callable[[dict[str, np.ndarray]], np.ndarray]
WindowFn = Callable[[], 'ObservationWindow | HoldReason | None']


@dataclass
class WorkerStats:
    chunks_produced: int = 0
    errors: int = 0
    windows_skipped: int = 0  # woken but no new observation (or the window was not usable)
    wakeups: int = 0  # wake-ups fully handled (whatever the outcome): lets tests run in lockstep


class InferenceWorker:
    """A daemon thread running `policy_fn(window_fn().as_policy_input())` whenever notified.

    - `policy_fn(obs) -> (horizon, A)` is the policy (row `n_obs_steps - 1` = newest observation).
    - `window_fn()` returns the newest ObservationWindow, or a HoldReason / None when there is none.
      It is called on the worker thread, so building the window costs the timer nothing.
    - `on_chunk(chunk)` (optional) is called on the worker thread after each chunk is in the slot.
    A window whose `obs_time` is not newer than the last one used is skipped: the same observation
    twice would only produce a second chunk for the same moment.
    """

    def __init__(self, policy_fn: PolicyFn, window_fn: WindowFn,
                 on_chunk: Callable[[ActionChunk], None] | None = None, *,
                 n_obs_steps: int, dt: float, latency_window: int = 1000,
                 on_error: Callable[[HoldReason], None] | None = None,
                 name: str = 'inference-worker', idle_poll_s: float = 0.5) -> None:
        self._policy_fn = policy_fn
        self._window_fn = window_fn
        self._on_chunk = on_chunk
        self._on_error = on_error
        self.n_obs_steps = int(n_obs_steps)
        self.dt = float(dt)
        self.latency = RollingPercentiles(latency_window)  # seconds, window -> chunk
        self.stats = WorkerStats()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._slot_lock = threading.Lock()
        self._slot: ActionChunk | None = None
        self._latest: ActionChunk | None = None
        self._last_error: HoldReason | None = None
        self._bad_frame: HoldReason | None = None
        self._last_obs_time = -np.inf
        self._clock_went_back = threading.Event()
        self._idle_poll_s = idle_poll_s
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # --- called from the timer / node (never blocks) ---
    def notify(self) -> None:
        """New data may be there: wake the worker (call on message arrival or every tick)."""
        self._wake.set()

    def take_chunk(self) -> ActionChunk | None:
        """The newest chunk not taken yet (then the slot is empty), or None."""
        with self._slot_lock:
            chunk, self._slot = self._slot, None
        return chunk

    def clock_went_back(self) -> None:
        """Observations are stamped earlier than the last one used from now on: accept them (the next
        step starts afresh; a chunk still being computed is from before the jump and its caller drops it)."""
        self._clock_went_back.set()

    def latest_chunk(self) -> ActionChunk | None:
        """The newest chunk produced, taken or not."""
        with self._slot_lock:
            return self._latest

    @property
    def last_error(self) -> HoldReason | None:
        """INFERENCE_ERROR reason of the last attempt if it failed; None after a success."""
        return self._last_error

    @property
    def bad_frame(self) -> HoldReason | None:
        """BAD_IMAGE reason when the last window could not be built because a frame it needed did not
        decode (frames are decoded here, so only the worker can tell); None once a window builds."""
        return self._bad_frame

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    # --- lifecycle ---
    def warmup(self, example_obs: dict[str, np.ndarray], iterations: int = 2) -> list[float]:
        """Run the policy on `example_obs` in the caller's thread before `start` (first-call allocations,
        kernel selection, CUDA graphs), so the first real chunk is not late. Returns the latencies."""
        if self._thread.is_alive():
            raise RuntimeError('warmup() must run before start(): it calls the policy in this thread')
        latencies = []
        for _ in range(iterations):
            begin = time.perf_counter()
            self._policy_fn(example_obs)
            latencies.append(time.perf_counter() - begin)
        return latencies

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Ask the thread to finish and join it. Returns False if it is still inside the policy call
        after `timeout` (it is a daemon thread, so it cannot keep the process alive)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- worker thread ---
    def _run(self) -> None:
        use_normal_scheduling()  # the node's executor thread that starts this one may be real-time
        while not self._stop.is_set():
            if not self._wake.wait(self._idle_poll_s):
                continue
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._step()
            finally:
                self.stats.wakeups += 1

    def _step(self) -> None:
        begin = time.perf_counter()
        if self._clock_went_back.is_set():
            self._clock_went_back.clear()
            self._last_obs_time = -np.inf
        try:
            window = self._window_fn()
        except Exception as exc:  # noqa: BLE001 - the worker must survive anything a callback does
            self._fail('building the observation window', exc)
            return
        if isinstance(window, HoldReason) and window.code is HoldCode.BAD_IMAGE:
            self._bad_frame = window
        elif isinstance(window, ObservationWindow):
            self._bad_frame = None
        if not isinstance(window, ObservationWindow) or window.obs_time <= self._last_obs_time:
            self.stats.windows_skipped += 1
            return
        try:
            actions = np.asarray(self._policy_fn(window.as_policy_input()), dtype=np.float64)
            if actions.ndim != 2 or actions.shape[0] < self.n_obs_steps:
                raise ValueError(f'policy returned shape {actions.shape}, expected (horizon >= '
                                 f'{self.n_obs_steps}, action_dim)')
            chunk = ActionChunk.from_policy_output(actions, window.obs_time, self.n_obs_steps, self.dt)
        except Exception as exc:  # noqa: BLE001
            self._fail(f'inference on the observation at t={window.obs_time:.3f}', exc)
            return
        self.latency.add(time.perf_counter() - begin)
        self._last_obs_time = window.obs_time
        with self._slot_lock:
            self._slot = chunk
            self._latest = chunk
        self._last_error = None
        self.stats.chunks_produced += 1
        if self._on_chunk is not None:
            try:
                self._on_chunk(chunk)
            except Exception as exc:  # noqa: BLE001
                self._fail('the on_chunk callback', exc)

    def _fail(self, what: str, exc: BaseException) -> None:
        self.stats.errors += 1
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        location = f' at {where.filename}:{where.lineno}' if where else ''
        reason = HoldReason(HoldCode.INFERENCE_ERROR,
                            f'{what} failed: {type(exc).__name__}: {exc}{location}', 'inference')
        self._last_error = reason
        if self._on_error is not None:
            try:
                self._on_error(reason)
            except Exception:  # noqa: BLE001 - a broken error handler must not kill the worker
                pass

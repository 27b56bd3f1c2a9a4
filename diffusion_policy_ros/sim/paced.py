"""The simulator run as a robot (ROS-free; `sim_robot_node` is its ROS adapter).

Physics paced to wall time x `real_time_factor`; an episode clock; commands gated the way a
joint_trajectory_controller and a real arm would take them; resets served on the sim thread.

Threads: physics, rendering and every output run on one sim thread. MuJoCo's offscreen GL context is
bound to the thread that renders, so resets (which may rebuild the model and its renderer) are handed
to that thread as well; other threads only hand over commands and requests under a lock.

Time: the published clock never goes backwards. A reset starts the new episode's physics at 0 (the
task's time limit counts from there) but the clock continues from where it was: `episode_time` in the
status restarts, `sim_time` (the clock) does not, and `episode` counts up from 1.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffusion_policy_ros.jsonio import json_safe
from diffusion_policy_ros.sim.arm import SimArm

LAG_RESYNC_S = 0.25  # behind wall time by more than this: drop the backlog instead of bursting


@dataclass
class PacingConfig:
    """How the sim thread paces and gates (fixed while it runs, except `real_time_factor`)."""

    rates_hz: dict[str, float]  # sim-time rate of each output: joint_state, image, scene and (optional) clock
    real_time_factor: float = 1.0  # sim seconds per wall second; 0 = as fast as possible
    status_rate_hz: float = 2.0  # wall-time rate of status reports
    reset_settle_s: float = 0.2  # commands are ignored this long (sim time) after a reset
    max_command_lead_s: float = 10.0  # commands stamped further ahead of sim time are refused


@dataclass
class SimOutputs:
    """What is due at one physics instant; `None`/False: not due."""

    stamp_ns: int  # clock time of this instant
    clock: bool = False
    joint_state: tuple[Sequence[str], np.ndarray, np.ndarray] | None = None  # names, positions, velocities
    images: dict[str, np.ndarray] | None = None  # camera -> rgb
    scene: bool = False  # a moving obstacle: the scene changed
    became_done: bool = False  # the episode ended at this instant (success or time limit)


@dataclass
class _ResetRequest:
    task: str
    seed: int
    episode_seconds: float
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


def period_ns(hz: float) -> int:
    return max(1, int(round(1e9 / hz)))


class PacedSim:
    """A SimArm on its own thread, paced and gated like a robot. The adapter gives it callbacks:
    `on_outputs(SimOutputs)` after each due instant, `on_scene()` / `on_status()` when those changed,
    `log(level, text)` with level 'info' | 'error' | 'fatal'; all run on the sim thread.
    `adapter_alive()` False: the adapter is shutting down, and an output failing then is no error."""

    def __init__(self, arm: SimArm, cameras: Sequence[str], pacing: PacingConfig, *,
                 on_outputs: Callable[[SimOutputs], None], on_scene: Callable[[], None],
                 on_status: Callable[[], None], log: Callable[[str, str], None],
                 adapter_alive: Callable[[], bool] = lambda: True) -> None:
        self.arm = arm
        self.cameras = tuple(cameras)
        self.pacing = pacing
        self._on_outputs, self._on_scene, self._on_status, self._log = on_outputs, on_scene, on_status, log
        self._adapter_alive = adapter_alive
        self._lock = threading.Lock()  # guards the arm and the episode bookkeeping below
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reset_request: _ResetRequest | None = None
        self.episode = 1
        self._offset_ns = 0  # clock time of this episode's sim time 0
        self._clock_ns = 0  # clock time of the latest physics state
        self._done_holding = False
        self._counts = {'commands_accepted': 0, 'commands_rejected': 0, 'commands_ignored_done': 0,
                        'commands_ignored_settling': 0}
        self._last_rejection = ''
        self._measured_rtf: float | None = None
        self._lag_resyncs = 0
        self._periods_ns = {name: period_ns(hz) for name, hz in pacing.rates_hz.items()}
        self._next_due_ns = dict.fromkeys(self._periods_ns, 0)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name='sim_physics', daemon=True)

    def start(self) -> None:
        """Start the sim thread; raises RuntimeError if the simulator cannot render."""
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self.stop()
            raise RuntimeError(f'the simulator could not start: {self._start_error}') from self._start_error

    def stop(self) -> None:
        """Stop the sim thread, which frees the renderer on its way out (idempotent)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    # ------------------------------------------------------------------ from other threads
    def setpoint(self) -> tuple[np.ndarray, float]:
        """(the arm's current setpoint, the physics time step): what a command is parsed against."""
        with self._lock:
            setpoint, _ = self.arm.setpoint()
            return setpoint, self.arm.timestep

    def command(self, joint_names: Sequence[str], points: np.ndarray, time_from_start: np.ndarray,
                stamp: float) -> tuple[str, str]:
        """Hand a parsed trajectory (`stamp` seconds of clock time, 0 = now) to the arm.

        Returns (outcome, why): ('accepted', ''), ('ignored', why) while the episode is done or
        settling after a reset, or ('rejected', why)."""
        with self._lock:
            if self._done_holding:
                self._counts['commands_ignored_done'] += 1
                return 'ignored', f'episode {self.episode} is done: holding until a reset'
            if self.episode > 1 and self.arm.sim_time < self.pacing.reset_settle_s:
                self._counts['commands_ignored_settling'] += 1
                return 'ignored', (f'episode {self.episode} was reset {self.arm.sim_time:.3f} s ago '
                                   f'(reset_settle_s {self.pacing.reset_settle_s:g})')
            reason = self._start_trajectory(joint_names, points, time_from_start, stamp)
            if not reason:
                self._counts['commands_accepted'] += 1
                return 'accepted', ''
        self.reject(reason)
        return 'rejected', reason

    def reject(self, reason: str) -> None:
        """Count a command refused before it reached the arm (malformed, or refused by `command`)."""
        with self._lock:
            self._counts['commands_rejected'] += 1
            self._last_rejection = reason

    def request_reset(self, task: str, seed: int, episode_seconds: float, timeout: float = 60.0) -> tuple[bool, str]:
        """Start a new episode on the sim thread; (success, message)."""
        request = _ResetRequest(task, seed, episode_seconds)
        self._reset_request = request
        self._wake.set()
        if not request.done.wait(timeout=timeout):
            return False, f'reset timed out: the sim thread did not answer in {timeout:g} s'
        if request.error:
            return False, request.error
        return True, f'episode {self.episode}: task {request.task} seed {request.seed}'

    def set_real_time_factor(self, factor: float) -> None:
        self.pacing.real_time_factor = float(factor)
        self._wake.set()  # the sim thread re-anchors its pacing on the new factor

    def status(self) -> dict[str, Any]:
        """Progress of the episode and the command counters (JSON-safe)."""
        with self._lock:
            status = self.arm.task_status()
            return json_safe({
                'task': self.arm.task, 'seed': self.arm.seed, 'episode': self.episode,
                'sim_time': self._clock_ns * 1e-9, 'episode_time': self.arm.sim_time,
                'time_limit': self.arm.cfg.time_limit, 'success': status.success, 'done': status.done,
                'holding': self._done_holding, 'info': status.info, **self._counts,
                'last_rejection': self._last_rejection, 'real_time_factor': self._measured_rtf,
                'lag_resyncs': self._lag_resyncs,
            })

    def scene(self) -> tuple[list[Any], int]:
        """(the scene objects now, the clock time in ns)."""
        with self._lock:
            return self.arm.scene_objects(), self._clock_ns

    # ------------------------------------------------------------------ the sim thread
    def _start_trajectory(self, joint_names: Sequence[str], points: np.ndarray, time_from_start: np.ndarray,
                          stamp: float) -> str:
        """Lock held: start the trajectory on the arm; returns a rejection reason or ''."""
        now = self.arm.sim_time
        start = None
        if stamp != 0.0:
            start = stamp - self._offset_ns * 1e-9
            if start < 0:
                return (f'stamped {stamp:.3f} s, before this episode started at '
                        f'{self._offset_ns * 1e-9:.3f} s (a command for the previous episode?)')
            if start - now > self.pacing.max_command_lead_s:
                return (f'stamped {stamp:.3f} s, {start - now:.1f} s ahead of sim time '
                        f'{self._clock_ns * 1e-9:.3f} s: does the publisher run with use_sim_time?')
        try:
            self.arm.command_trajectory(joint_names, points, start_time=start, time_from_start=time_from_start)
        except ValueError as err:
            return str(err)
        return ''

    def _serve_reset(self) -> None:
        request, self._reset_request = self._reset_request, None
        if request is None:
            return
        with self._lock:
            previous = (self.arm.task, self.arm.seed, self.arm.cfg.episode_seconds)
            try:
                self.arm.cfg.episode_seconds = request.episode_seconds or None
                self.arm.reset(request.task, request.seed)
            except Exception as err:  # noqa: BLE001 - e.g. no IK solution for a seed's start pose
                request.error = f'reset to {request.task} seed {request.seed} failed: {err}'
                self.arm.cfg.episode_seconds = previous[2]
                self.arm.reset(previous[0], previous[1])
            self._offset_ns = self._clock_ns + max(1, int(round(self.arm.timestep * 1e9)))  # one physics step on
            self._clock_ns = self._offset_ns
            self.episode += 1
            self._done_holding = False
            self._next_due_ns = dict.fromkeys(self._periods_ns, 0)
            self._last_rejection = ''
        if request.error:
            self._log('error', request.error + f'; restarted {previous[0]} seed {previous[1]} instead')
        else:
            self._log('info', f'reset: episode {self.episode}, task {request.task}, seed {request.seed}')
        self._on_scene()
        self._on_status()
        request.done.set()

    def _run(self) -> None:
        try:
            for camera in self.cameras:
                self.arm.render(camera)  # the GL context is created (and stays) on this thread
        except BaseException as err:  # noqa: BLE001 - reported by start()
            self._start_error = err
            self.arm.close()
            self._started.set()
            return
        self._started.set()
        self._on_scene()
        self._on_status()
        try:
            self._loop()
        except Exception as err:  # noqa: BLE001
            if not self._stop.is_set() and self._adapter_alive():
                self._log('fatal', f'sim thread stopped: {type(err).__name__}: {err}')
                raise
        finally:
            self.arm.close()  # the GL context can only be released on the thread it is current on

    def _loop(self) -> None:
        rtf = self.pacing.real_time_factor
        wall_anchor, sim_anchor = time.monotonic(), 0.0
        status_due = time.monotonic() + 1.0 / self.pacing.status_rate_hz
        rtf_window = (time.monotonic(), self._clock_ns)
        while not self._stop.is_set():
            self._wake.clear()
            if self._reset_request is not None:
                self._serve_reset()
                wall_anchor, sim_anchor = time.monotonic(), 0.0
                continue
            if self.pacing.real_time_factor != rtf:
                wall_anchor, sim_anchor, rtf = time.monotonic(), self.arm.sim_time, self.pacing.real_time_factor
            now = time.monotonic()
            if now >= status_due:
                status_due = now + 1.0 / self.pacing.status_rate_hz
                wall0, clock0 = rtf_window
                rtf_window = (now, self._clock_ns)
                self._measured_rtf = (self._clock_ns - clock0) * 1e-9 / max(now - wall0, 1e-9)
                self._on_status()
            due_ns = min(self._next_due_ns.values())
            target = due_ns * 1e-9
            deadline = wall_anchor + (target - sim_anchor) / rtf if rtf > 0 else now
            if deadline > now:
                self._wake.wait(min(deadline, status_due) - now)
                continue
            if now - deadline > LAG_RESYNC_S:
                wall_anchor, sim_anchor = now, target
                self._lag_resyncs += 1
            self._advance(due_ns)

    def _advance(self, due_ns: int) -> None:
        """Step physics to `due_ns` of episode time and hand over whatever is due there."""
        with self._lock:
            self.arm.step_until(due_ns * 1e-9)
            outputs = SimOutputs(self._offset_ns + int(round(self.arm.sim_time * 1e9)))
            self._clock_ns = outputs.stamp_ns
            if not self._done_holding and self.arm.task_status().done:
                self.arm.hold()  # like a controller whose goal was cancelled: stay where the setpoint is
                self._done_holding = outputs.became_done = True
            for name, period in self._periods_ns.items():
                if self._next_due_ns[name] != due_ns:
                    continue
                self._next_due_ns[name] += period
                if name == 'joint_state':
                    outputs.joint_state = self.arm.joint_state()
                elif name == 'image':
                    outputs.images = {camera: self.arm.render(camera) for camera in self.cameras}
                elif name == 'scene':
                    outputs.scene = self.arm.moving_obstacle is not None
                elif name == 'clock':
                    outputs.clock = True
        self._on_outputs(outputs)
        if outputs.became_done:
            status = self.arm.task_status()
            self._log('info', f'episode {self.episode} done: '
                              f'{"success" if status.success else "time limit"}; holding until ~/reset')
            self._on_status()

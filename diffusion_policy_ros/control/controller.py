"""One timer tick of the policy node, without ROS: the composition the node adapts to topics.

Keeping the composition here (not in the node) means the order that matters for safety (take chunk,
plan, decide health, clamp or hold) is unit-tested on a fake clock, and the node only converts
messages and publishes.
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffusion_policy_ros.control.chunks import ChunkExecutor, ExecutorConfig
from diffusion_policy_ros.core.config import REPLAN_MODES, ExecutionConfig
from diffusion_policy_ros.control.health import HealthMonitor, HealthState, HoldCode, HoldReason
from diffusion_policy_ros.control.inference_worker import InferenceWorker, PolicyFn
from diffusion_policy_ros.control.limits import JointLimits, clamp_trajectory
from diffusion_policy_ros.control.measurement import MeasurementRules, check_joint_state, check_stamp
from diffusion_policy_ros.control.observation import JOINT_STATE_STREAM, ImageDecoder, ObservationHistory
from diffusion_policy_ros.diagnostics import PolicyStatus




@dataclass
class ControllerConfig:
    n_obs_steps: int = 2
    max_obs_age_s: float = 0.5
    history_capacity: int = 64  # messages kept per stream: > n_obs_steps * (stream rate / policy rate)
    log_throttle_s: float = 10.0
    measurement: MeasurementRules = field(default_factory=MeasurementRules)  # which inputs are trusted
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    # When to ask for the next chunk. 'chunk_end': once the executed chunk has less left than the
    # expected inference latency plus one period, so each chunk runs its n_action_steps (Chi et al.'s
    # receding horizon: a multimodal policy commits to one mode per chunk instead of flipping between
    # modes every tick). 'every_tick': as soon as the worker is free (what temporal ensembling wants).
    # 'auto': every_tick with temporal_ensemble blending, chunk_end otherwise.
    replan: str = 'auto'

    @classmethod
    def from_execution(cls, execution: ExecutionConfig, n_obs_steps: int, **settings: Any) -> ControllerConfig:
        """The controller for a policy's resolved `ExecutionConfig` (`PolicyConfig.execution_config`)."""
        executor = ExecutorConfig(control_period=execution.control_period_s, n_action_steps=execution.n_action_steps,
                                  blending=execution.blending, crossfade_steps=execution.crossfade_steps,
                                  ensemble_decay=execution.ensemble_decay)
        return cls(n_obs_steps=n_obs_steps, executor=executor, replan=execution.replan, **settings)

    def __post_init__(self) -> None:
        if self.replan not in REPLAN_MODES:
            raise ValueError(f'replan must be one of {REPLAN_MODES}, got {self.replan!r}')

    @property
    def replan_every_tick(self) -> bool:
        if self.replan == 'auto':
            return self.executor.blending == 'temporal_ensemble'
        return self.replan == 'every_tick'

    @property
    def control_period(self) -> float:
        return self.executor.control_period


@dataclass(frozen=True)
class TickResult:
    """What to publish this tick: `points[k]` is due at now + (k + 1) * period (`time_from_start`).

    In HOLD, `points` is the measured position as a single point, or None when no joint state has been
    received yet (nothing safe to publish)."""

    state: HealthState
    reason: HoldReason | None
    points: np.ndarray | None
    log_message: str | None
    wants_chunk: bool = False  # time to ask the worker for the next chunk (see `tick(wake_worker=...)`)


class PolicyController:
    """Observation history + inference worker + chunk executor + health + limits, ticked by a timer.

    `clock()` must be the clock the message stamps use (ROS time, sim time under use_sim_time); the
    worker calls it to build the newest window.
    """

    def __init__(self, policy_fn: PolicyFn, camera_keys: Sequence[str], limits: JointLimits,
                 cfg: ControllerConfig, clock: Callable[[], float],
                 stream_names: dict[str, str] | None = None, decode_image: ImageDecoder | None = None,
                 camera_span_s: float | None = None) -> None:
        """`decode_image` and `camera_span_s`: see ObservationHistory (raw frames, decoded by the worker)."""
        self.cfg = cfg
        self.limits = limits
        self.clock = clock
        self.history = ObservationHistory(camera_keys, limits.names, cfg.history_capacity, stream_names,
                                          decode_image, camera_span_s)
        # Inputs rejected on arrival, by stream (held until that stream's next good message), and how many.
        self._faults: dict[str, HoldReason] = {}
        self._faults_lock = threading.Lock()
        self.rejected: Counter[HoldCode] = Counter()
        self.executor = ChunkExecutor(cfg.executor)
        self.health = HealthMonitor(cfg.max_obs_age_s, cfg.log_throttle_s)
        self._policy_fn = policy_fn
        self.worker = self._new_worker()
        self._worker_used = False
        self._latest_now: float | None = None  # the newest `now` seen, to notice the clock going back
        self._clock_message: str | None = None  # set when it did, logged by the next tick
        self._clock_lock = threading.Lock()

    def _new_worker(self) -> InferenceWorker:
        return InferenceWorker(self._policy_fn, self._newest_window, n_obs_steps=self.cfg.n_obs_steps,
                               dt=self.cfg.control_period)

    def _newest_window(self):
        return self.history.build_window(self.clock(), self.cfg.n_obs_steps, self.cfg.control_period,
                                         self.cfg.max_obs_age_s)

    # --- lifecycle ---
    def start(self, example_obs: dict[str, np.ndarray] | None = None, warmup_iterations: int = 2) -> list[float]:
        """Warm the policy up on `example_obs` (returns those latencies, seconds) and start the worker."""
        if self._worker_used:  # a thread runs once: after shutdown (lifecycle deactivate) take a new one
            self.worker = self._new_worker()
        latencies = self.worker.warmup(example_obs, warmup_iterations) if example_obs is not None else []
        self.worker.start()
        self._worker_used = True
        return latencies

    def shutdown(self, timeout: float = 5.0) -> bool:
        return self.worker.stop(timeout)

    # --- services ---
    def set_estop(self, text: str = 'emergency stop requested') -> None:
        self.health.set_estop(text)

    def clear_estop(self) -> None:
        self.health.clear_estop()

    def request_stop(self) -> None:
        self.health.stop()

    def request_start(self) -> None:
        self.health.start()

    # --- inputs (any thread) ---
    def push_joint_state(self, stamp: float, names: Sequence[str], positions: Sequence[float],
                         now: float) -> HoldReason | None:
        """Store a joint state if it can be trusted (control.measurement's rules), else reject it with
        its reason: it is not stored, and the node holds until a good one arrives."""
        self._forget_the_future(now)
        stream = self.history.stream_name(JOINT_STATE_STREAM)
        checked = check_joint_state(names, positions, stamp, now, self.limits, stream, self.cfg.measurement)
        if isinstance(checked, HoldReason):
            return self._reject(stream, checked)
        self.history.push_joint_state(stamp, *checked)
        self._accept(stream)
        return None

    def push_frame(self, camera_key: str, stamp: float, frame: Any, now: float) -> HoldReason | None:
        """Store a camera frame (an image, or a raw frame for the history's decoder) unless its stamp is
        in the future; see `reject_frame` for frames the caller found malformed."""
        self._forget_the_future(now)
        stream = self.history.stream_name(camera_key)
        fault = check_stamp(stamp, now, stream, self.cfg.measurement)
        if fault is not None:
            return self._reject(stream, fault)
        self.history.push_image(camera_key, stamp, frame)
        self._accept(stream)
        return None

    def reject_frame(self, camera_key: str, reason: HoldReason) -> HoldReason:
        return self._reject(self.history.stream_name(camera_key), reason)

    def _reject(self, stream: str, reason: HoldReason) -> HoldReason:
        with self._faults_lock:
            self._faults[stream] = reason
            self.rejected[reason.code] += 1
        return reason

    def _accept(self, stream: str) -> None:
        if stream in self._faults:
            with self._faults_lock:
                self._faults.pop(stream, None)

    # --- the timer ---
    def tick(self, now: float, input_faults: Sequence[HoldReason] = (), wake_worker: bool = True) -> TickResult:
        """Never blocks on inference: takes a finished chunk if there is one and wakes the worker.

        Inputs rejected on arrival (`push_joint_state`, `push_frame`, `reject_frame`) and `input_faults`
        (problems the caller found itself) hold the arm like any other fault. With
        `wake_worker=False` the caller wakes it (`request_chunk()`) when `result.wants_chunk`, e.g.
        after publishing this tick's points and pushing the frames the worker's window should see."""
        self._forget_the_future(now)
        with self._clock_lock:
            clock_message, self._clock_message = self._clock_message, None
        if clock_message is not None:
            self.executor.reset()  # only the timer's thread touches the executor
        chunk = self.worker.take_chunk()
        if chunk is not None and chunk.obs_time <= now + self.cfg.max_obs_age_s:
            self.executor.submit(chunk)
        wants_chunk = self._time_to_replan(now) and not (self.health.stopped or self.health.estopped)
        if wants_chunk and wake_worker:
            self.worker.notify()
        latest = self.history.latest_joint_state()
        measured = latest if isinstance(latest, HoldReason) else latest[1]
        points = self.executor.plan(now)
        no_chunk = None if points is not None else HoldReason(
            HoldCode.NO_CHUNK, 'no executable action chunk (waiting for inference, or the last chunk '
            'is used up or too old)', 'chunk')
        with self._faults_lock:
            rejected = list(self._faults.values())
        faults = [*input_faults, *rejected, measured if isinstance(measured, HoldReason) else None,
                  self.worker.bad_frame, self.worker.last_error, no_chunk]
        verdict = self.health.update(now, self.history.latest_stamps(), faults)
        if verdict.running:
            # A demonstration's action at t is the target the operator commanded at t, due one period
            # later (see data/convert.py): so row k, planned for now + k * period, is due at
            # now + (k + 1) * period, and the first point is limited from the measured position.
            points = clamp_trajectory(points, measured, self.cfg.control_period, self.limits)
        else:
            # The old plan no longer starts where the arm is; resume from fresh chunks only.
            self.executor.reset()
            points = self._hold_point(now, latest)
        log_message = '; '.join(m for m in (clock_message, verdict.log_message) if m) or None
        return TickResult(verdict.state, verdict.reason, points, log_message, wants_chunk)

    def _forget_the_future(self, now: float) -> None:
        """After the clock goes back (a looped bag under use_sim_time, an NTP step), everything stored
        is stamped in the future: health would hold for as long as the jump and the executor would
        ignore every new chunk as older than its own. Start again from the next messages instead.
        Called with every input's and tick's `now`, so the first message after the jump is kept."""
        with self._clock_lock:
            last = self._latest_now
            self._latest_now = now
            if last is None or now >= last - self.cfg.max_obs_age_s:
                return
            self.history.clear()
            self.worker.clock_went_back()
            self._clock_message = (f'the clock went back {last - now:.3f} s (a looped bag or a clock '
                                   'step): observations and chunks from before the jump dropped')

    def _hold_point(self, now: float, latest: tuple[float, np.ndarray] | HoldReason) -> np.ndarray | None:
        """HOLD's single point: the last trusted measurement, clamped into the position limits, or None
        when there is none no older than max_obs_age_s (then nothing safe can be commanded)."""
        if isinstance(latest, HoldReason) or now - latest[0] > self.cfg.max_obs_age_s:
            return None
        return np.clip(latest[1], self.limits.lower, self.limits.upper)[None]

    def request_chunk(self) -> None:
        """Wake the worker to build the newest window and infer (never blocks)."""
        self.worker.notify()

    def _time_to_replan(self, now: float) -> bool:
        remaining = self.executor.remaining(now)
        if remaining is None or self.cfg.replan_every_tick:
            return True
        return remaining <= self.expected_latency() + self.cfg.control_period

    def expected_latency(self) -> float:
        """Seconds from asking for a chunk to having it: the worker's own estimate when it has one
        (the evaluator's simulated latency), else the p90 of measured inference times."""
        estimate = getattr(self.worker, 'expected_latency_s', None)
        if estimate is not None:
            return float(estimate)
        latency = self.worker.latency
        return latency.percentile(90) if len(latency) else self.cfg.control_period

    def status(self, now: float) -> PolicyStatus:
        """The control part of the node's /diagnostics (the node adds its own fields)."""
        latency = self.worker.latency.summary()
        stats = self.executor.stats
        with self._faults_lock:
            rejected = {code.name: count for code, count in self.rejected.items()}
        return PolicyStatus(
            state=self.health.state.value, reason=str(self.health.reason) if self.health.reason else '',
            inference_latency_p50_ms=latency['p50'] * 1e3, inference_latency_p99_ms=latency['p99'] * 1e3,
            inference_count=self.worker.stats.chunks_produced, inference_errors=self.worker.stats.errors,
            chunk_age_s=stats.chunk_age, dropped_actions=stats.dropped_actions, chunks_used=stats.chunks_used,
            chunks_skipped=stats.chunks_skipped, max_boundary_step=stats.max_boundary_step,
            obs_age_s={stream: None if stamp is None else now - stamp
                       for stream, stamp in self.history.latest_stamps().items()},
            hold_s={code.name: seconds for code, seconds in self.health.hold_seconds.items()},
            rejected=rejected)

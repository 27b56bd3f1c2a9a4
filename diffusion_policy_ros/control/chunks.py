"""Turning asynchronously arriving action chunks into the points the 10 Hz timer publishes.

A chunk is predicted from an observation taken at `obs_time`, but arrives one inference latency
later. By then some of its actions are already in the past: they are dropped, never replayed
(latency compensation, as Chi et al.'s real-robot runner does). Only `n_action_steps` actions,
counted from the row of the newest observation, are executed (receding horizon). Where a new chunk
replaces an older one the two disagree a little; blending the overlap keeps the commanded path from
jumping at the boundary.

Times are seconds on one clock (ROS time or sim time); the executor never reads a clock itself, so it
runs identically in tests, in simulation and on the robot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from diffusion_policy_ros.core.config import BLENDING_MODES, ExecutionSettings

Blending = Literal['none', 'temporal_ensemble', 'crossfade']
DEFAULT_BLENDING: Blending = ExecutionSettings.blending  # see core.config.ExecutionSettings

# Query times come from a float clock; a row due "now" must not be dropped because of rounding.
_TIME_EPS = 1e-6


@dataclass(frozen=True)
class ActionChunk:
    """A policy's prediction: `actions[i]` is the command for time `t0 + i * dt` (robot units)."""

    actions: np.ndarray  # (horizon, action_dim)
    t0: float  # time of row 0, seconds
    dt: float  # time between rows, seconds
    obs_time: float  # stamp of the newest observation the chunk was predicted from

    def __post_init__(self) -> None:
        actions = np.asarray(self.actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] < 1:
            raise ValueError(f'ActionChunk.actions must be (horizon, action_dim), got shape {actions.shape}')
        if not np.all(np.isfinite(actions)):
            bad_row = int(np.argwhere(~np.isfinite(actions))[0, 0])
            raise ValueError(f'ActionChunk.actions has non-finite values (first in row {bad_row})')
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f'ActionChunk.dt must be a positive number of seconds, got {self.dt}')
        for name in ('t0', 'obs_time'):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f'ActionChunk.{name} must be finite, got {getattr(self, name)}')
        row = (self.obs_time - self.t0) / self.dt
        if not (-_TIME_EPS <= row <= actions.shape[0] - 1 + _TIME_EPS):
            raise ValueError(f'ActionChunk.obs_time {self.obs_time} lies outside the chunk '
                             f'[{self.t0}, {self.t0 + (actions.shape[0] - 1) * self.dt}]')
        actions.setflags(write=False)
        object.__setattr__(self, 'actions', actions)

    @classmethod
    def from_policy_output(cls, actions: np.ndarray, obs_time: float, n_obs_steps: int,
                           dt: float) -> ActionChunk:
        """Stamp a policy output whose row `n_obs_steps - 1` is the action for the newest observation."""
        if n_obs_steps < 1:
            raise ValueError(f'n_obs_steps must be >= 1, got {n_obs_steps}')
        return cls(actions=actions, t0=obs_time - (n_obs_steps - 1) * dt, dt=dt, obs_time=obs_time)

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def obs_row(self) -> int:
        """Row of the action for the newest observation: the first row that may be executed."""
        return int(round((self.obs_time - self.t0) / self.dt))

    def time_of_row(self, row: int) -> float:
        return self.t0 + row * self.dt

    def sample(self, t: float | np.ndarray) -> np.ndarray:
        """Actions at time(s) `t`, linear between rows, held at the ends.

        Linear interpolation because the timer's ticks jitter around the chunk's grid; snapping to the
        nearest row would add a 1-row jump whenever a tick lands near a half period.
        """
        pos = (np.atleast_1d(np.asarray(t, dtype=np.float64)) - self.t0) / self.dt
        pos = np.clip(pos, 0.0, self.horizon - 1)
        lo = np.minimum(np.floor(pos + _TIME_EPS).astype(np.int64), self.horizon - 1)
        hi = np.minimum(lo + 1, self.horizon - 1)
        frac = np.clip(pos - lo, 0.0, 1.0)[:, None]
        out = self.actions[lo] * (1.0 - frac) + self.actions[hi] * frac
        return out[0] if np.ndim(t) == 0 else out


@dataclass
class ExecutorConfig:
    """How chunks become commands. Defaults follow Chi et al.: 10 Hz, 8 executed actions."""

    control_period: float = 0.1  # seconds between published points (and between chunk rows)
    n_action_steps: int = 8  # actions executed per chunk, from its newest-observation row
    blending: Blending = DEFAULT_BLENDING
    crossfade_steps: int = ExecutionSettings.crossfade_steps  # periods over which the old chunk fades in the new
    # ACT's exponential weights w_i = exp(-k * i), i = 0 for the oldest chunk covering a time:
    # k > 0 trusts earlier chunks more (smoother), k < 0 reacts faster to new ones.
    ensemble_decay: float = ExecutionSettings.ensemble_decay  # ACT's default
    max_chunk_age: float = 1.0  # seconds after its observation a chunk may still be executed

    def __post_init__(self) -> None:
        if not (math.isfinite(self.control_period) and self.control_period > 0):
            raise ValueError(f'control_period must be > 0 seconds, got {self.control_period}')
        if self.n_action_steps < 1:
            raise ValueError(f'n_action_steps must be >= 1, got {self.n_action_steps}')
        if self.blending not in BLENDING_MODES:
            raise ValueError(f'blending must be one of {BLENDING_MODES}, got {self.blending!r}')
        if self.crossfade_steps < 0:
            raise ValueError(f'crossfade_steps must be >= 0, got {self.crossfade_steps}')
        if not math.isfinite(self.ensemble_decay):
            raise ValueError(f'ensemble_decay must be finite, got {self.ensemble_decay}')
        if not (self.max_chunk_age > 0):
            raise ValueError(f'max_chunk_age must be > 0 seconds, got {self.max_chunk_age}')


@dataclass
class ExecutorStats:
    """What diagnostics report about execution."""

    chunks_submitted: int = 0
    chunks_used: int = 0  # chunks that became the executed one
    chunks_skipped: int = 0  # superseded before any plan used them, or older than the current one
    dropped_actions: int = 0  # executable actions already in the past when their chunk was first used
    chunk_age: float = math.nan  # now - obs_time of the executed chunk at the last plan
    last_boundary_step: float = math.nan  # max |joint step| between the last points of old and new chunk
    max_boundary_step: float = 0.0
    empty_plans: int = 0  # plans that returned None (no chunk, exhausted or too old)


@dataclass
class _Segment:
    """A chunk as executed: when it took over, and (while fading) what it took over from."""

    chunk: ActionChunk
    start: float  # time of the first point planned from it
    exec_end: float  # time of its last executable row
    previous: _Segment | None = None


def _last_row_time(chunk: ActionChunk) -> float:
    return chunk.time_of_row(chunk.horizon - 1)


class ChunkExecutor:
    """Keeps the executed chunk(s) and answers `plan(now)` each timer tick.

    Not thread-safe by design: the timer thread owns it; the inference worker hands chunks over through
    its own lock-protected slot and the timer calls `submit` with whatever it took.
    """

    def __init__(self, cfg: ExecutorConfig) -> None:
        self.cfg = cfg
        self.stats = ExecutorStats()
        self._pending: ActionChunk | None = None
        self._current: _Segment | None = None
        self._ensemble: list[_Segment] = []  # oldest first; for temporal_ensemble
        self._last_point: np.ndarray | None = None

    @property
    def current_chunk(self) -> ActionChunk | None:
        return self._current.chunk if self._current else None

    def remaining(self, now: float) -> float | None:
        """Seconds of executable actions left after `now` (a chunk waiting to take over counts), or
        None when there is nothing to execute."""
        ends = [self._exec_end(self._pending)] if self._pending is not None else []
        if self._current is not None:
            ends.append(self._current.exec_end)
        return max(ends) - now if ends else None

    def reset(self) -> None:
        """Forget every chunk (after HOLD/estop: the old plan no longer starts where the arm is)."""
        if self._pending is not None:
            self.stats.chunks_skipped += 1
        self._pending = None
        self._current = None
        self._ensemble = []
        self._last_point = None

    def submit(self, chunk: ActionChunk) -> bool:
        """Offer a new chunk; it takes over at the next `plan`. Returns False if it was ignored.

        A chunk predicted from an observation no newer than the executed one's is ignored: executing it
        would replay the past.
        """
        newest = self._pending or (self._current.chunk if self._current else None)
        if newest is not None and chunk.action_dim != newest.action_dim:
            raise ValueError(f'chunk action_dim {chunk.action_dim} differs from the executed '
                             f'chunk\'s {newest.action_dim}')
        self.stats.chunks_submitted += 1
        if newest is not None and chunk.obs_time <= newest.obs_time:
            self.stats.chunks_skipped += 1
            return False
        if self._pending is not None:
            self.stats.chunks_skipped += 1  # superseded before any tick used it
        self._pending = chunk
        return True

    def _exec_end(self, chunk: ActionChunk) -> float:
        last_row = min(chunk.horizon - 1, chunk.obs_row + self.cfg.n_action_steps - 1)
        return chunk.time_of_row(last_row)

    def _executable(self, seg: _Segment, now: float) -> bool:
        return now <= seg.exec_end + _TIME_EPS and now - seg.chunk.obs_time <= self.cfg.max_chunk_age

    def _activate_pending(self, now: float) -> None:
        chunk = self._pending
        self._pending = None
        assert chunk is not None
        rows = np.arange(chunk.obs_row, min(chunk.horizon, chunk.obs_row + self.cfg.n_action_steps))
        self.stats.dropped_actions += int(np.sum(chunk.t0 + rows * chunk.dt < now - _TIME_EPS))
        self.stats.chunks_used += 1
        if self._current is not None and not self._executable(self._current, now):
            # The old chunk ran out (the node held meanwhile): there is nothing to blend from.
            self._current = None
            self._ensemble = []
        previous = self._current if self.cfg.blending == 'crossfade' else None
        segment = _Segment(chunk=chunk, start=now, exec_end=self._exec_end(chunk), previous=previous)
        self._current = segment
        if self.cfg.blending == 'temporal_ensemble':
            self._ensemble.append(segment)

    def _prune(self, now: float) -> None:
        fade = self.cfg.crossfade_steps * self.cfg.control_period
        seg = self._current
        while seg is not None and seg.previous is not None:
            if now >= seg.start + fade - _TIME_EPS:
                seg.previous = None  # its fade is over: nothing older can matter again
            seg = seg.previous
        self._ensemble = [s for s in self._ensemble if _last_row_time(s.chunk) >= now - _TIME_EPS]

    def _crossfaded(self, seg: _Segment, times: np.ndarray) -> np.ndarray:
        values = seg.chunk.sample(times)
        if seg.previous is None or self.cfg.crossfade_steps == 0:
            return values
        fade = self.cfg.crossfade_steps * self.cfg.control_period
        alpha = np.clip((times - seg.start) / fade, 0.0, 1.0)[:, None]
        older = self._crossfaded(seg.previous, times)
        return (1.0 - alpha) * older + alpha * values

    def _ensembled(self, times: np.ndarray) -> np.ndarray:
        """ACT-style average of every chunk's prediction for each time, over its whole horizon.

        Older chunks keep voting with the rows past their `n_action_steps` (as in ACT, where every
        prediction for a time counts); restricting them to their executed rows made a chunk's exit a
        visible step. Only the newest chunk decides how far ahead the plan reaches.
        """
        weighted = np.zeros((times.size, self._current.chunk.action_dim))
        total = np.zeros((times.size, 1))
        for i, seg in enumerate(self._ensemble):
            covers = ((times >= seg.chunk.t0 - _TIME_EPS)
                      & (times <= _last_row_time(seg.chunk) + _TIME_EPS))[:, None]
            weight = math.exp(-self.cfg.ensemble_decay * i) * covers
            weighted += weight * seg.chunk.sample(times)
            total += weight
        # The newest chunk covers every planned time unless its stamps are ahead of the clock.
        newest = self._current.chunk.sample(times)
        return np.where(total > 0, weighted / np.maximum(total, 1e-300), newest)

    def plan(self, now: float) -> np.ndarray | None:
        """Points for times `now + k * control_period`, k = 0..K-1, that the executed chunk still covers.

        Row 0 is the point due now. Returns None when there is nothing safe to execute: no chunk yet,
        its executable actions are used up, or its observation is older than `max_chunk_age`.
        """
        if self._pending is not None:
            previous_point = self._last_point
            self._activate_pending(now)
            boundary_pending = previous_point is not None
        else:
            boundary_pending = False
        seg = self._current
        if seg is None:
            self.stats.empty_plans += 1
            return None
        self.stats.chunk_age = now - seg.chunk.obs_time
        if not self._executable(seg, now):
            self._last_point = None  # the node holds; a later boundary step would span the hold
            self.stats.empty_plans += 1
            return None
        self._prune(now)
        count = int(math.floor((seg.exec_end - now) / self.cfg.control_period + _TIME_EPS)) + 1
        times = now + self.cfg.control_period * np.arange(count)
        if self.cfg.blending == 'crossfade':
            points = self._crossfaded(seg, times)
        elif self.cfg.blending == 'temporal_ensemble':
            points = self._ensembled(times)
        else:
            points = seg.chunk.sample(times)
        if boundary_pending:
            step = float(np.max(np.abs(points[0] - self._last_point)))
            self.stats.last_boundary_step = step
            self.stats.max_boundary_step = max(self.stats.max_boundary_step, step)
        self._last_point = points[0].copy()
        return points

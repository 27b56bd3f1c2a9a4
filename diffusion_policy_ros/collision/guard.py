"""The collision guard's decisions, free of ROS: what to send the arm for each proposed chunk.

The node converts messages to `TrajectoryChunk`s and a {joint: position} measured state, calls
`check` on its executor thread (sub-millisecond: free chunks are forwarded at once) and hands a
`PlanRequest` to a planning thread that calls `plan`; `review` does both in one call. Keeping the
logic here makes it testable without DDS and identical for the embedded and the MoveIt backends.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .checker import DEFAULT_MAX_JOINT_STEP, PathResult, StateResult
from .evasion import Evader
from .planner import Plan, PlanningFailed

ACTIONS = ('pass', 'replace', 'hold', 'reject', 'plan')


class StateChecker(Protocol):
    """What the guard needs from a checker (embedded CollisionChecker or MoveItChecker)."""

    joint_names: tuple[str, ...]

    def check_state(self, q: Mapping[str, float] | np.ndarray) -> StateResult: ...

    def check_path(self, start: np.ndarray, waypoints: np.ndarray,
                   max_joint_step: float = DEFAULT_MAX_JOINT_STEP) -> PathResult: ...


class MotionPlanner(Protocol):
    def plan_fallback(self, start: np.ndarray, waypoints: np.ndarray, path_result: PathResult,
                      planned_joints: Sequence[str] | None = None) -> Plan | PlanningFailed: ...


@dataclass(frozen=True)
class TrajectoryChunk:
    """A joint trajectory: positions (K, J) for `joint_names`, reached at `time_from_start` (K,) s."""

    joint_names: tuple[str, ...]
    positions: np.ndarray
    time_from_start: np.ndarray


@dataclass(frozen=True)
class ReviewStats:
    check_time_s: float = 0.0
    checked_states: int = 0
    first_colliding_index: int | None = None
    colliding_pair: tuple[str, str] | None = None
    planning_time_s: float | None = None
    goal_kind: str | None = None


@dataclass(frozen=True)
class PlanRequest:
    """A blocked chunk waiting for its fallback plan (what `plan` needs, taken when it was checked)."""

    sequence: int  # the check that asked for it
    measured: Mapping[str, float]
    start: np.ndarray  # (J,) in the checker's joint order
    waypoints: np.ndarray  # (K, J) the chunk in the checker's joint order
    names: tuple[str, ...]  # the chunk's joints
    columns: np.ndarray  # their columns in the checker's order
    result: PathResult
    stats: ReviewStats
    requested_s: float


@dataclass(frozen=True)
class GuardDecision:
    action: str  # pass | replace | hold | reject | plan (nothing to publish yet: see plan_request)
    trajectory: TrajectoryChunk | None  # what to publish; None for 'plan' or when no measured state is known
    reason: str
    stats: ReviewStats = field(default_factory=ReviewStats)
    plan_request: PlanRequest | None = None


# Largest first step a chunk may take out of an invalid measured state (see CollisionGuard._escape).
ESCAPE_STEP_RAD = 0.1


@dataclass
class GuardCounters:
    """Running totals for /diagnostics."""

    chunks_reviewed: int = 0
    chunks_passed: int = 0
    chunks_blocked: int = 0
    chunks_rejected: int = 0
    fallbacks_planned: int = 0
    planning_failures: int = 0
    plans_superseded: int = 0  # plans finished after a newer decision had been sent: not sent
    holds: int = 0
    executing_blocked: int = 0  # trajectories cut while executing, because the scene changed
    evasions: int = 0  # motions out of a moving object's way, sent instead of a hold
    check_latency_s: deque = field(default_factory=lambda: deque(maxlen=1000))
    planning_time_s: deque = field(default_factory=lambda: deque(maxlen=200))

    @staticmethod
    def percentile(values: deque, q: float) -> float | None:
        return float(np.percentile(np.fromiter(values, float), q)) if values else None


@dataclass
class _ActiveFallback:
    chunk: TrajectoryChunk  # the plan, as sent
    started_s: float


@dataclass
class _ActiveEvasion:
    chunk: TrajectoryChunk  # the evasive motion, as sent
    started_s: float
    threat: str


@dataclass(frozen=True)
class _Executing:
    chunk: TrajectoryChunk  # the last trajectory sent to the arm
    started_s: float  # when its time_from_start counts from (its header stamp, or when it was sent)


class CollisionGuard:
    """Passes free chunks unchanged, replaces colliding ones with a fallback plan, holds otherwise.

    While a fallback runs, each new chunk is checked: a free one takes over at once; a colliding one
    lets the running fallback continue (its remainder re-checked against the current scene). When the
    scene changes, `recheck` looks at what the arm is still executing (`record_sent`) and cuts it at
    its last safe point the moment it collides, before any new chunk is proposed. With an `evader`, an
    arm whose measured state lies in a moving object's way is moved out of it instead of held there.
    """

    def __init__(self, checker: StateChecker, planner: MotionPlanner, *,
                 max_joint_step: float = DEFAULT_MAX_JOINT_STEP, hold_time_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic, evader: Evader | None = None) -> None:
        self.checker = checker
        self.planner = planner
        self.evader = evader
        self._evasion: _ActiveEvasion | None = None
        self.max_joint_step = max_joint_step
        self.hold_time_s = hold_time_s
        self.clock = clock
        self.counters = GuardCounters()
        self._fallback: _ActiveFallback | None = None
        # check() runs on the node's executor thread and plan() on its planning thread: the lock covers
        # the fallback, the counters and the sequence numbers, never a collision check or a plan.
        self._lock = threading.RLock()
        self._sequence = 0  # checks so far
        self._sent_sequence = 0  # the newest check whose decision was sent to the arm
        self._executing: _Executing | None = None

    @property
    def fallback_active(self) -> bool:
        return self._fallback is not None

    def review(self, measured: Mapping[str, float], chunk: TrajectoryChunk,
               now_s: float | None = None) -> GuardDecision:
        """`check`, then `plan` in the same thread when the chunk is blocked."""
        decision = self.check(measured, chunk, now_s)
        if decision.plan_request is None:
            return decision
        return self.plan(decision.plan_request)

    def check(self, measured: Mapping[str, float], chunk: TrajectoryChunk,
              now_s: float | None = None) -> GuardDecision:
        """The fast part of a review: pass a free chunk, hold or reject what cannot be used, let a
        running fallback continue; a blocked chunk that needs a new plan comes back as action 'plan'
        with a `plan_request` (the arm meanwhile goes on with what it was last sent, which was
        checked)."""
        now_s = self.clock() if now_s is None else now_s
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
            self.counters.chunks_reviewed += 1
        problem = _malformed(chunk, self.checker.joint_names)
        start = None
        if problem is None:
            start, problem = self._measured_configuration(measured)
        if problem is not None:
            return self.reject(measured, chunk.joint_names, problem)

        names = tuple(chunk.joint_names)
        columns = _joint_columns(self.checker.joint_names, names)
        waypoints = _full_configuration(start, columns, chunk.positions)
        began = time.perf_counter()
        result = self.checker.check_path(start, waypoints, self.max_joint_step)
        check_time = time.perf_counter() - began
        stats = ReviewStats(check_time, result.checked_states, result.first_colliding_index,
                            result.colliding_pair)
        with self._lock:
            self.counters.check_latency_s.append(check_time)
            if result.valid:
                took_over = self._fallback is not None
                self._fallback = None
                self._evasion = None
                self.counters.chunks_passed += 1
                self._sent_sequence = sequence
                return GuardDecision('pass', chunk, 'free; takes over from the fallback' if took_over else 'free',
                                     stats)
            self.counters.chunks_blocked += 1
        continued = self._continue_fallback(start, columns, names, now_s)
        if continued is not None:
            return self._sent(sequence, GuardDecision('replace', continued, f'{result.reason}; fallback continues',
                                                      stats))
        if result.first_colliding_index == -1:
            escape = self._escape(start, waypoints)
            if escape is not None:
                with self._lock:
                    self._fallback = None
                    self._evasion = None
                    self.counters.chunks_passed += 1
                return self._sent(sequence, GuardDecision(
                    'pass', chunk, f'measured state is invalid ({result.reason}); the chunk leaves it with a '
                    f'{escape:.3f} rad first step and is free after it', stats))
            evasion = self._evade(start, names, columns, now_s)
            if evasion is not None:
                return self._sent(sequence, GuardDecision(
                    'replace', evasion, f'measured state is invalid ({result.reason}); {self._evasion_text()}', stats))
            with self._lock:
                self.counters.holds += 1
            return self._sent(sequence, GuardDecision('hold', self._hold(measured, names),
                                                      f'measured state is invalid ({result.reason}); holding', stats))
        request = PlanRequest(sequence, dict(measured), start, waypoints, names, columns, result, stats, now_s)
        return GuardDecision('plan', None, f'{result.reason}; planning a fallback', stats, plan_request=request)

    def plan(self, request: PlanRequest) -> GuardDecision | None:
        """The fallback for a blocked chunk (any thread, one at a time), or None when a newer decision
        was sent while it planned: the plan starts from an older state than what the arm now runs.
        A fallback that started while this request waited continues instead, when it is still free."""
        continued = self._continue_fallback(request.start, request.columns, request.names, self.clock())
        if continued is not None:
            with self._lock:
                if self._sent_sequence >= request.sequence:
                    self.counters.plans_superseded += 1
                    return None
                self._sent_sequence = request.sequence
            return GuardDecision('replace', continued, f'{request.result.reason}; fallback continues',
                                 request.stats)
        plan = self.planner.plan_fallback(request.start, request.waypoints, request.result,
                                          planned_joints=request.names)
        result = request.result
        stats = dataclasses.replace(request.stats, planning_time_s=plan.planning_time_s, goal_kind=plan.goal_kind)
        with self._lock:
            self.counters.planning_time_s.append(plan.planning_time_s)
            if self._sent_sequence >= request.sequence:
                self.counters.plans_superseded += 1
                return None
            if isinstance(plan, PlanningFailed):
                self.counters.planning_failures += 1
                self.counters.holds += 1
                decision = GuardDecision('hold', self._hold(request.measured, request.names),
                                         f'{result.reason}; no fallback: {plan.reason}; holding', stats)
            elif len(plan.points) < 2:
                self.counters.holds += 1
                decision = GuardDecision('hold', self._hold(request.measured, request.names),
                                         f'{result.reason}; the last safe point is the current state; holding',
                                         stats)
            else:
                self.counters.fallbacks_planned += 1
                times = plan.times.copy()
                times[0] = 0.0
                replacement = TrajectoryChunk(request.names, plan.points[:, request.columns], times)
                self._fallback = _ActiveFallback(replacement, request.requested_s)
                decision = GuardDecision(
                    'replace', replacement,
                    f'{result.reason}; replaced by a fallback to the {plan.goal_kind.replace("_", " ")}', stats)
            self._sent_sequence = request.sequence
        return decision

    def confirm(self, measured: Mapping[str, float], decision: GuardDecision) -> GuardDecision:
        """A decision made on the planning thread, re-checked just before it is sent: from the arm's
        state now and against the scene now (either may have changed while it planned). A trajectory
        that is no longer free becomes a hold."""
        if decision.action not in ('pass', 'replace') or decision.trajectory is None:
            return decision
        chunk = decision.trajectory
        start, problem = self._measured_configuration(measured)
        if problem is not None:
            return self.reject(measured, chunk.joint_names, problem)
        columns = _joint_columns(self.checker.joint_names, chunk.joint_names)
        waypoints = _full_configuration(start, columns, chunk.positions)
        result = self.checker.check_path(start, waypoints, self.max_joint_step)
        if result.valid:
            return decision
        with self._lock:
            self.counters.holds += 1
        return GuardDecision('hold', self._hold(measured, chunk.joint_names),
                             f'{result.reason}: the arm or the scene moved while planning; holding', decision.stats)

    def expire(self, request: PlanRequest) -> GuardDecision | None:
        """The planning budget of `request` ran out before its plan was sent: hold now (the plan, if it
        still comes, is dropped). None when a decision for it, or a newer one, was sent already."""
        with self._lock:
            if self._sent_sequence >= request.sequence:
                return None
            self._sent_sequence = request.sequence
            self.counters.planning_failures += 1
            self.counters.holds += 1
        return GuardDecision('hold', self._hold(request.measured, request.names),
                             f'{request.result.reason}; no fallback within the planning budget; holding',
                             request.stats)

    def within_limits(self, chunk: TrajectoryChunk) -> TrajectoryChunk:
        """`chunk` with every position clipped into the exact joint limits (the same object when it is
        already inside). The last step before anything is published: the checks accept a measured start
        up to `limit_tolerance` outside a limit (sensor noise, a gripper reading 0.0409 m against 0.04),
        and a plan or a chunk that starts there would command that position."""
        columns = _joint_columns(self.checker.joint_names, chunk.joint_names)
        lower, upper = self.checker.lower[columns], self.checker.upper[columns]
        positions = np.asarray(chunk.positions, dtype=float)
        if np.all((positions >= lower) & (positions <= upper)):
            return chunk
        return dataclasses.replace(chunk, positions=np.clip(positions, lower, upper))

    def record_sent(self, chunk: TrajectoryChunk, started_s: float) -> None:
        """What the arm executes now: `chunk`, its times counted from `started_s` (guard clock)."""
        with self._lock:
            self._executing = _Executing(chunk, started_s)

    def recheck(self, measured: Mapping[str, float], now_s: float | None = None,
                untrusted: str | None = None) -> GuardDecision | None:
        """After a scene change: None while the rest of what the arm executes is still free (or it has
        finished). Otherwise a 'replace' with the executing trajectory cut at its last safe waypoint
        (a hold at the measured position when even the next one is unsafe), to send at once, carrying
        a `plan_request` for the fallback that continues from there, exactly as for a blocked chunk.

        `untrusted`: why the measurement cannot be trusted now (stale, a joint missing). The arm is then
        taken to be where the executing trajectory commands it at this time; if the rest collides it
        holds there (neither a hold at an old measurement, which would move it back, nor a plan or an
        evasion from a state that is not known)."""
        now_s = self.clock() if now_s is None else now_s
        with self._lock:
            executing = self._executing
        if executing is None:
            return None
        chunk, elapsed = executing.chunk, now_s - executing.started_s
        times = np.asarray(chunk.time_from_start, dtype=float)
        remaining = times > elapsed
        start, problem = self._measured_configuration(measured)
        if problem is not None:
            return None  # unmeasurable, which the next check rejects
        names = tuple(chunk.joint_names)
        columns = _joint_columns(self.checker.joint_names, names)
        if untrusted is not None:  # where the trajectory has taken the arm by now stands in for it
            positions = np.asarray(chunk.positions, dtype=float)
            start[columns] = [np.interp(elapsed, times, positions[:, j]) for j in range(len(columns))]
        elif self.evader is not None and not self.checker.check_state(start).valid:
            return self._evade_now(measured, start, names, columns, now_s)
        if not remaining.any():
            return None  # at rest at its last point, which is free
        waypoints = _full_configuration(start, columns, chunk.positions[remaining])
        began = time.perf_counter()
        result = self.checker.check_path(start, waypoints, self.max_joint_step)
        stats = ReviewStats(time.perf_counter() - began, result.checked_states, result.first_colliding_index,
                            result.colliding_pair)
        if result.valid:
            return None
        if untrusted is not None:
            return self._hold_commanded(names, start[columns], result.reason, untrusted, stats)
        with self._lock:
            self.counters.executing_blocked += 1
            self._sequence += 2  # one for the cut sent now, one for the plan that may follow it
            cut_sequence, plan_sequence = self._sequence - 1, self._sequence
            self._sent_sequence = max(self._sent_sequence, cut_sequence)
            self._fallback = None
        safe = result.last_safe_index if result.last_safe_index is not None else -1
        if safe < 0:
            with self._lock:
                self.counters.holds += 1
            cut, how = self._hold(measured, names), 'holding at the measured position'
        else:
            cut = TrajectoryChunk(names, chunk.positions[remaining][:safe + 1],
                                  times[remaining][:safe + 1] - elapsed)
            how = f'cut after {safe + 1} of its {int(remaining.sum())} remaining points'
        reason = f'scene changed: the executing trajectory now collides ({result.reason}); {how}'
        if result.first_colliding_index == -1:
            return GuardDecision('hold', cut, reason, stats)
        request = PlanRequest(plan_sequence, dict(measured), start, waypoints, names, columns, result, stats,
                              now_s)
        return GuardDecision('replace', cut, f'{reason}; planning a fallback', stats, plan_request=request)

    def _hold_commanded(self, names: tuple[str, ...], commanded: np.ndarray, collision: str, untrusted: str,
                        stats: ReviewStats) -> GuardDecision:
        """`recheck` without a trusted measurement, when the rest collides: hold where the trajectory
        commands the arm now (no cut to plan on from a state that is not known)."""
        with self._lock:
            self.counters.executing_blocked += 1
            self.counters.holds += 1
            self._sequence += 1
            self._sent_sequence = max(self._sent_sequence, self._sequence)
        hold = self._hold(dict(zip(names, commanded)), names)
        return GuardDecision('hold', hold, f'scene changed: the executing trajectory now collides ({collision}) '
                                           f'and the joint state cannot be trusted ({untrusted}); holding at the '
                                           'position it commands now', stats)

    def _evade_now(self, measured: Mapping[str, float], start: np.ndarray, names: tuple[str, ...],
                   columns: np.ndarray, now_s: float) -> GuardDecision:
        """`recheck` when the arm stands where the scene now holds an object: the rest of the running
        evasion while it stays clear (sent again: the arm may have been sent something else since), a new
        one when it does not, else a hold at the measured state."""
        evasion = self._evade(start, names, columns, now_s)
        with self._lock:
            self._sequence += 1
            self._sent_sequence = max(self._sent_sequence, self._sequence)
            self._fallback = None
            if evasion is None:
                self.counters.holds += 1
        if evasion is not None:
            return GuardDecision('replace', evasion, f'scene changed: the arm stands in the way; {self._evasion_text()}')
        return GuardDecision('hold', self._hold(measured, names),
                             'scene changed: the arm stands in the way and no evasion is clear; holding')

    def _evade(self, start: np.ndarray, names: tuple[str, ...], columns: np.ndarray,
               now_s: float) -> TrajectoryChunk | None:
        """The rest of the running evasion while it stays clear, else a new one (None: none is clear)."""
        if self.evader is None:
            return None
        active = self._evasion
        if active is not None and active.chunk.joint_names == names:
            times = active.chunk.time_from_start
            remaining = times > now_s - active.started_s
            if remaining.any():
                rest = active.chunk.positions[remaining]
                if self.evader.clear(start, _full_configuration(start, columns, rest)):
                    return TrajectoryChunk(names, rest, times[remaining] - (now_s - active.started_s))
        found = self.evader.escape(start, names)
        if found is None:
            self._evasion = None
            return None
        chunk = TrajectoryChunk(names, found.points[:, columns], found.times)
        self._evasion = _ActiveEvasion(chunk, now_s, f'{found.threat} ({found.direction}, '
                                                     f'{found.duration_s:.1f} s)')
        with self._lock:
            self._fallback = None
            self.counters.evasions += 1
        return chunk

    def _evasion_text(self) -> str:
        active = self._evasion
        return f'evading {active.threat}' if active is not None else 'evading'

    def _sent(self, sequence: int, decision: GuardDecision) -> GuardDecision:
        with self._lock:
            self._sent_sequence = max(self._sent_sequence, sequence)
        return decision

    def _escape(self, start: np.ndarray, waypoints: np.ndarray) -> float | None:
        """The first step's size if a chunk starting in an invalid state (in contact, inside the padding)
        gets out: its first waypoint is at most ESCAPE_STEP_RAD away and everything from there on is free.
        Holding instead would keep the arm stuck in contact forever; the short first step is the only
        motion not checked, and it is the one that leaves the contact."""
        step = float(np.max(np.abs(waypoints[0] - start)))
        if step > ESCAPE_STEP_RAD:
            return None
        rest = self.checker.check_path(waypoints[0], waypoints[1:] if len(waypoints) > 1 else waypoints[:1],
                                       self.max_joint_step)
        return step if rest.valid else None

    def reject(self, measured: Mapping[str, float], joint_names: Sequence[str], problem: str) -> GuardDecision:
        """Refuse a chunk that cannot be checked (also for messages the node cannot even unpack):
        the arm holds where it is measured, and the running fallback ends."""
        with self._lock:
            self.counters.chunks_rejected += 1
            self._sequence += 1
            self._sent_sequence = self._sequence
        return GuardDecision('reject', self._hold(measured, joint_names), f'rejected: {problem}')

    # --- internals --------------------------------------------------------------------------

    def _measured_configuration(self, measured: Mapping[str, float]) -> tuple[np.ndarray | None, str | None]:
        missing = [n for n in self.checker.joint_names if n not in measured]
        if missing:
            return None, f'measured joint state lacks {missing}'
        q = np.array([float(measured[n]) for n in self.checker.joint_names])
        if not np.isfinite(q).all():
            return None, 'measured joint state has NaN or infinite positions'
        return q, None

    def _continue_fallback(self, start: np.ndarray, columns: np.ndarray, names: tuple[str, ...],
                           now_s: float) -> TrajectoryChunk | None:
        """The running fallback's remainder from now, when one runs for the same joints and is still free."""
        active = self._fallback
        if active is None:
            return None
        elapsed = now_s - active.started_s
        times = active.chunk.time_from_start
        if active.chunk.joint_names != names or elapsed >= times[-1]:
            self._clear_fallback(active)
            return None
        remaining = times > elapsed
        waypoints = _full_configuration(start, columns, active.chunk.positions[remaining])
        if not self.checker.check_path(start, waypoints, self.max_joint_step).valid:
            self._clear_fallback(active)
            return None
        return TrajectoryChunk(names, active.chunk.positions[remaining], times[remaining] - elapsed)

    def _clear_fallback(self, active: _ActiveFallback) -> None:
        with self._lock:
            if self._fallback is active:
                self._fallback = None

    def _hold(self, measured: Mapping[str, float], names: Sequence[str]) -> TrajectoryChunk | None:
        """One point at the measured position of the commanded joints: the controller stops there.

        When the chunk's names are unusable (unknown, repeated, none), the model's measured joints hold.
        """
        with self._lock:
            self._fallback = None
            self._evasion = None
        names = tuple(names)
        if not names or len(set(names)) != len(names) or not set(names) <= set(self.checker.joint_names):
            names = tuple(n for n in self.checker.joint_names if n in measured)
            if not names:
                return None
        try:
            position = np.array([[float(measured[n]) for n in names]])
        except (KeyError, TypeError, ValueError):
            return None
        if not np.isfinite(position).all():
            return None
        # A measurement may sit a little outside a limit (sensor noise within the measurement rules'
        # tolerance, a gripper reading -0.002 m): the hold commands the nearest position within them.
        return self.within_limits(TrajectoryChunk(tuple(names), position, np.array([self.hold_time_s])))


def _full_configuration(start: np.ndarray, columns: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rows of `positions` (the chunk's joints) completed to the checker's joints from `start`: joints a
    chunk leaves out stay where they are measured."""
    full = np.repeat(start[None], len(positions), axis=0)
    full[:, columns] = positions
    return full


def _joint_columns(model_names: Sequence[str], chunk_names: Sequence[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(model_names)}
    return np.array([index[n] for n in chunk_names], dtype=int)


def _malformed(chunk: TrajectoryChunk, model_names: Sequence[str]) -> str | None:
    """Why the chunk cannot be checked, or None when it is well formed."""
    names = list(chunk.joint_names)
    if not names:
        return 'trajectory names no joints'
    unknown = [n for n in names if n not in model_names]
    if unknown:
        return f'joint(s) {unknown} are not in the robot model {list(model_names)}'
    if len(set(names)) != len(names):
        return f'duplicate joint names {names}'
    try:
        positions = np.asarray(chunk.positions, dtype=float)
        times = np.asarray(chunk.time_from_start, dtype=float)
    except (TypeError, ValueError) as err:
        return f'positions/time_from_start are not numeric: {err}'
    if positions.ndim != 2 or positions.shape[0] == 0:
        return f'trajectory is empty (positions shape {positions.shape})'
    if positions.shape[1] != len(names):
        return f'points have {positions.shape[1]} positions for {len(names)} joint names'
    if times.shape != (positions.shape[0],):
        return f'{times.size} time_from_start values for {positions.shape[0]} points'
    if not np.isfinite(positions).all():
        row, col = np.argwhere(~np.isfinite(positions))[0]
        return f'point {row} has a non-finite position for {names[col]}'
    if not np.isfinite(times).all() or (times < 0).any():
        return 'time_from_start has negative or non-finite values'
    if len(times) > 1 and not (np.diff(times) > 0).all():
        k = int(np.flatnonzero(np.diff(times) <= 0)[0]) + 1
        return (f'time_from_start is not strictly increasing at point {k} '
                f'({times[k - 1]:.3f} s then {times[k]:.3f} s)')
    return None

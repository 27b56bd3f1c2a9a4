"""The fallback planner: a collision-free, time-parameterised replacement for a blocked chunk.

OMPL's RRTConnect searches joint space; OMPL's PathSimplifier shortcuts the result; ruckig times
each straight segment rest-to-rest, so the arm moves exactly along the validated straight segments
(a spline through the vertices, e.g. TOPP-RA's, would cut corners that were never checked). Motions are
validated by the same swept check as the guard's chunks (`CollisionChecker.segment_valid`), in C++
batch calls per motion rather than one Python call per state.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ompl import base as ob
from ompl import geometric as og
from ompl import util as ou
from ruckig import InputParameter, Result, Ruckig, Trajectory

from .checker import DEFAULT_MAX_JOINT_STEP, CollisionChecker, PathResult
from .robot_model import RobotModel

GOAL_KINDS = ('policy_goal', 'last_safe_point')

ou.setLogLevel(ou.LOG_WARN)


@dataclass(frozen=True)
class MotionLimits:
    """Per-joint limits of the fallback motion (RobotModel.joint_names order)."""

    velocity: np.ndarray
    acceleration: np.ndarray
    jerk: np.ndarray

    def __post_init__(self) -> None:
        for name in ('velocity', 'acceleration', 'jerk'):
            values = np.asarray(getattr(self, name), dtype=float)
            if values.ndim != 1 or not (values > 0).all():
                raise ValueError(f'{name} limits must be positive, one per joint, got {values}')
            object.__setattr__(self, name, values)
        if not (len(self.velocity) == len(self.acceleration) == len(self.jerk)):
            raise ValueError('velocity, acceleration and jerk limits need one value per joint each')

    @classmethod
    def from_model(cls, model: RobotModel, velocity_scaling: float = 0.5,
                   acceleration: float | Sequence[float] = 3.0,
                   jerk: float | Sequence[float] = 30.0) -> MotionLimits:
        """Velocity = URDF velocity limit x scaling (URDFs carry no acceleration limits, so those and
        jerk come from configuration: one value for all joints or one per joint)."""
        if not 0 < velocity_scaling <= 1:
            raise ValueError(f'velocity_scaling must be in (0, 1], got {velocity_scaling}')
        n = model.nq
        return cls(velocity=model.limits.velocity * velocity_scaling,
                   acceleration=_per_joint(acceleration, n, 'acceleration'),
                   jerk=_per_joint(jerk, n, 'jerk'))


def _per_joint(value: float | Sequence[float], n: int, what: str) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, dtype=float))
    if values.size == 1:
        return np.full(n, float(values[0]))
    if values.size != n:
        raise ValueError(f'{what} limits: expected 1 or {n} values, got {values.size}')
    return values


@dataclass(frozen=True)
class Plan:
    points: np.ndarray  # (K, J) in checker.joint_names order; points[0] is the start
    dt: float  # seconds between points
    planning_time_s: float
    goal_kind: str  # 'policy_goal' | 'last_safe_point'
    vertices: np.ndarray | None = None  # the simplified geometric path the points follow

    @property
    def times(self) -> np.ndarray:
        return np.arange(len(self.points)) * self.dt

    @property
    def duration_s(self) -> float:
        return (len(self.points) - 1) * self.dt


@dataclass(frozen=True)
class PlanningFailed:
    reason: str
    planning_time_s: float
    goal_kind: str | None = None


class GoalChoosingPlanner:
    """What every fallback planner shares: where to plan to, given the failed check of a chunk.
    Subclasses provide `checker` and `plan(start, goal, goal_kind, planned_joints)`."""

    checker: CollisionChecker

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.checker.joint_names

    def plan_fallback(self, start: np.ndarray, waypoints: np.ndarray, path_result: PathResult,
                      planned_joints: Sequence[str] | None = None) -> Plan | PlanningFailed:
        """To the chunk's final waypoint when it is valid, otherwise to the path's last safe point."""
        goal_kind, goal = choose_goal(self.checker, waypoints, path_result)
        if goal is None:
            return PlanningFailed('the start state is invalid: nothing can be planned from it', 0.0, goal_kind)
        return self.plan(start, goal, goal_kind, planned_joints)


class FallbackPlanner(GoalChoosingPlanner):
    """RRTConnect + shortcut + ruckig, within `time_budget_s`, sampled every `control_period` s.

    `seed` makes plans reproducible (OMPL's random generator is process-wide: each plan reseeds it).
    Not thread-safe: one planner serves one caller (the guard plans from a single callback).
    The budget bounds the whole fallback: search, shortcutting, timing and the final check; a plan
    that is not ready within it is a failure (the guard then holds).
    """

    def __init__(self, checker: CollisionChecker, limits: MotionLimits, time_budget_s: float = 0.1,
                 control_period: float = 0.1, *, max_joint_step: float = DEFAULT_MAX_JOINT_STEP,
                 seed: int | None = None, shortcut_steps: int = 60,
                 validation_step_fraction: float = 0.5, rrt_range: float | None = None) -> None:
        if len(limits.velocity) != len(checker.joint_names):
            raise ValueError(f'limits have {len(limits.velocity)} joints, the model has '
                             f'{len(checker.joint_names)}')
        for name, value in (('time_budget_s', time_budget_s), ('control_period', control_period),
                            ('max_joint_step', max_joint_step)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f'{name} must be positive and finite, got {value}')
        if seed is not None and seed <= 0:
            raise ValueError(f'seed must be a positive integer (OMPL ignores 0), got {seed}')
        self.checker = checker
        self.limits = limits
        self.time_budget_s = time_budget_s
        self.control_period = control_period
        self.max_joint_step = max_joint_step
        self.seed = seed
        self.shortcut_steps = shortcut_steps
        if not 0 < validation_step_fraction <= 1:
            raise ValueError(f'validation_step_fraction must be in (0, 1], got {validation_step_fraction}')
        self.validation_step_fraction = validation_step_fraction
        self.rrt_range = rrt_range
        self._search_spaces: dict[tuple[int, ...], _SearchSpace] = {}

    def plan(self, start: np.ndarray, goal: np.ndarray, goal_kind: str = 'policy_goal',
             planned_joints: Sequence[str] | None = None) -> Plan | PlanningFailed:
        """Collision-free plan start -> goal; joints outside `planned_joints` stay where they start."""
        began = time.perf_counter()
        if goal_kind not in GOAL_KINDS:
            raise ValueError(f'goal_kind must be one of {GOAL_KINDS}, got {goal_kind!r}')
        start = np.asarray(start, dtype=float).copy()
        goal = np.asarray(goal, dtype=float).copy()
        active = (np.arange(len(start)) if planned_joints is None
                  else np.sort(self.checker.model.joint_indices(list(planned_joints))))
        for name, q in (('start', start), ('goal', goal)):
            if q.shape != (len(self.joint_names),) or not np.isfinite(q).all():
                raise ValueError(f'{name} must be {len(self.joint_names)} finite values, got {q}')
        # Sensor noise can put the start a hair outside a limit; the bounds of the search cannot.
        tol = self.checker.limit_tolerance
        start = np.clip(start, self.checker.lower - tol, self.checker.upper + tol)
        fixed = np.setdiff1d(np.arange(len(start)), active)
        goal[fixed] = start[fixed]

        def failed(reason: str) -> PlanningFailed:
            return PlanningFailed(reason, time.perf_counter() - began, goal_kind)

        for name, q in (('start', start), ('goal', goal)):
            state = self.checker.check_state(q)
            if not state.valid:
                return failed(f'{name} state is invalid: {state.reason}')
        if np.abs(goal - start).max() < 1e-9:
            return Plan(start[None].copy(), self.control_period, time.perf_counter() - began, goal_kind,
                        vertices=start[None].copy())
        fine_step = self.max_joint_step * self.validation_step_fraction
        if self.checker.segment_valid(start, goal, fine_step):
            vertices = np.vstack([start, goal])
        else:
            vertices = self._search(start, goal, active, began)
            if isinstance(vertices, str):
                return failed(vertices)
        points = self._time_parameterise(vertices)
        if points is None:
            return failed('time parameterisation failed (ruckig could not reach a waypoint)')
        final = self.checker.check_path(start, points[1:], self.max_joint_step)
        if not final.valid:  # should not happen: samples lie on validated segments
            return failed(f'time-parameterised plan is not collision-free: {final.reason}')
        if time.perf_counter() - began > self.time_budget_s:
            # The budget bounds the whole fallback: a plan that comes late starts from a stale state.
            return failed(f'the fallback took longer than its planning time budget of {self.time_budget_s:.3f} s')
        return Plan(points, self.control_period, time.perf_counter() - began, goal_kind, vertices=vertices)

    def warm_up(self, seed: int = 0, attempts: int = 200) -> float | None:
        """Run the whole fallback pipeline once (OMPL search, shortcutting, ruckig, final check) between
        two valid states drawn at random, so that the first fallback a robot needs does not pay OMPL's
        set-up and the first-use allocations (Panda: first plan 14.8 ms, later ones 2.5 ms, and 2.3 MB
        allocated once). Seconds it took, or None when `attempts` draws found no two valid states."""
        rng = np.random.default_rng(seed)
        valid = []
        for _ in range(attempts):
            q = rng.uniform(self.checker.lower, self.checker.upper)
            if self.checker.is_valid(q):
                valid.append(q)
                if len(valid) == 2:
                    break
        else:
            return None
        began = time.perf_counter()
        start, goal = valid
        # The search runs even when the straight segment is free: that is the part to warm.
        vertices = self._search(start, goal, np.arange(len(start)), began)
        if not isinstance(vertices, str):
            points = self._time_parameterise(vertices)
            if points is not None:
                self.checker.check_path(start, points[1:], self.max_joint_step)
        return time.perf_counter() - began

    # --- internals --------------------------------------------------------------------------

    def _search(self, start: np.ndarray, goal: np.ndarray, active: np.ndarray,
                began: float) -> np.ndarray | str:
        """RRTConnect in the space of the active joints, then shortcut; a str is a failure reason."""
        search = self._search_space(active)
        search.template[:] = start
        setup, space = search.setup, search.space
        setup.clear()  # drop the previous query's trees
        ompl_start, ompl_goal = space.allocState(), space.allocState()
        for i, j in enumerate(active):
            ompl_start[i] = float(start[j])
            ompl_goal[i] = float(goal[j])
        setup.setStartAndGoalStates(ompl_start, ompl_goal)
        if self.seed is not None:
            _reseed_ompl(self.seed)
        remaining = self.time_budget_s - (time.perf_counter() - began)
        if remaining <= 0:
            return f'planning time budget of {self.time_budget_s:.3f} s spent before the search'
        setup.solve(remaining)
        if not setup.haveExactSolutionPath():
            setup.clear()
            return f'no collision-free path found within {self.time_budget_s:.3f} s (RRTConnect)'
        path = setup.getSolutionPath()
        simplifier = og.PathSimplifier(search.info)
        # Shortcutting, not B-spline smoothing: few vertices keep the rest-to-rest timing short. Each
        # pass runs only while half the budget is left (timing and the final check need the rest).
        for simplify in (lambda: simplifier.reduceVertices(path, self.shortcut_steps),
                         lambda: simplifier.partialShortcutPath(path, self.shortcut_steps),
                         lambda: simplifier.reduceVertices(path, self.shortcut_steps),
                         lambda: simplifier.collapseCloseVertices(path)):
            if time.perf_counter() - began > 0.5 * self.time_budget_s:
                break
            simplify()
        vertices = np.array([search.full(s) for s in path.getStates()])
        setup.clear()
        vertices[0], vertices[-1] = start, goal
        return vertices

    def _search_space(self, active: np.ndarray) -> _SearchSpace:
        """The OMPL problem for this set of planned joints, built once and reused.

        Reuse saves OMPL's set-up (state space, validators, planner) on every plan.
        """
        key = tuple(int(j) for j in active)
        search = self._search_spaces.get(key)
        if search is None:
            search = _SearchSpace(self.checker, np.asarray(key), self.max_joint_step * self.validation_step_fraction,
                                  self.rrt_range)
            self._search_spaces[key] = search
        return search

    def _time_parameterise(self, vertices: np.ndarray) -> np.ndarray | None:
        return time_parameterise(vertices, self.limits, self.control_period)


def time_parameterise(vertices: np.ndarray, limits: MotionLimits, dt: float) -> np.ndarray | None:
    """Rest-to-rest, time-optimal along each straight segment, sampled every control period.

    ruckig times the path parameter s in [0, 1] of q = a + s (b - a), with the tightest joint's
    limits divided by its share of the segment: the arm stays exactly on the validated line
    (multi-DoF phase synchronisation is not guaranteed once jerk limits or a minimum duration
    apply). Each segment is stretched to a whole number of periods so every vertex is a sample,
    and the controller's straight interpolation between samples never cuts a corner.
    """
    otg = Ruckig(1)
    request = InputParameter(1)
    request.current_velocity = request.current_acceleration = [0.0]
    request.target_velocity = request.target_acceleration = [0.0]
    request.current_position, request.target_position = [0.0], [1.0]
    samples = [vertices[0]]
    for a, b in zip(vertices[:-1], vertices[1:]):
        delta = b - a
        span = np.abs(delta)
        if span.max() < 1e-12:
            continue
        moving = span > 0
        request.max_velocity = [float(np.min(limits.velocity[moving] / span[moving]))]
        request.max_acceleration = [float(np.min(limits.acceleration[moving] / span[moving]))]
        request.max_jerk = [float(np.min(limits.jerk[moving] / span[moving]))]
        request.minimum_duration = None
        trajectory = Trajectory(1)
        if otg.calculate(request, trajectory) not in (Result.Working, Result.Finished):
            return None
        periods = max(1, math.ceil(trajectory.duration / dt - 1e-9))
        if periods * dt > trajectory.duration + 1e-12:
            request.minimum_duration = periods * dt
            trajectory = Trajectory(1)
            if otg.calculate(request, trajectory) not in (Result.Working, Result.Finished):
                return None
        for k in range(1, periods):
            samples.append(a + trajectory.at_time(k * dt)[0][0] * delta)
        samples.append(b.copy())
    return np.array(samples)


def choose_goal(checker, waypoints: np.ndarray, path_result: PathResult) -> tuple[str, np.ndarray | None]:
    """The policy's final waypoint when it is valid, else the last safe point of the checked path."""
    final = np.asarray(waypoints, dtype=float)[-1]
    if np.isfinite(final).all() and checker.check_state(final).valid:
        return 'policy_goal', final.copy()
    return 'last_safe_point', path_result.last_safe_point


class _SearchSpace:
    """RRTConnect set up in the space of the planned joints; the others stay at `template`.

    The callbacks OMPL holds capture only the checker and the arrays, never this object: a Python
    reference cycle through C++ callbacks could not be collected.
    """

    def __init__(self, checker: CollisionChecker, active: np.ndarray, step: float,
                 rrt_range: float | None) -> None:
        self.active = active
        self.template = template = np.zeros(len(checker.joint_names))
        dims = len(active)

        def full(state: ob.State) -> np.ndarray:
            q = template.copy()
            q[active] = [state[i] for i in range(dims)]
            return q

        self.full = full
        self.space = ob.RealVectorStateSpace(dims)
        bounds = ob.RealVectorBounds(dims)
        tol = checker.limit_tolerance
        for i, j in enumerate(active):
            bounds.setLow(i, float(checker.lower[j] - tol))
            bounds.setHigh(i, float(checker.upper[j] + tol))
        self.space.setBounds(bounds)
        self.setup = og.SimpleSetup(self.space)
        self.setup.setStateValidityChecker(lambda state: checker.is_valid(full(state)))
        self.info = self.setup.getSpaceInformation()
        # Motions are validated with a joint step half the guard's: both checks sample the same lines,
        # and the finer one keeps the final check (at other points along them) from finding a graze.
        self.validator = _SegmentValidator(ob.SpaceInformation(self.space),
                                           lambda a, b: checker.segment_valid(full(a), full(b), step))
        self.info.setMotionValidator(self.validator)
        planner = og.RRTConnect(self.info)
        if rrt_range is not None:
            planner.setRange(rrt_range)
        self.setup.setPlanner(planner)
        # Set up now, not inside the first solve: every plan then draws the same random seeds after
        # a reseed, so seeded plans repeat whether this search space is fresh or reused.
        self.setup.setup()


class _SegmentValidator(ob.MotionValidator):
    """OMPL motion validator backed by one batched check of the interpolated segment."""

    def __init__(self, info: ob.SpaceInformation, segment_is_valid) -> None:
        super().__init__(info)
        self._segment_is_valid = segment_is_valid

    def checkMotion(self, a: ob.State, b: ob.State, *last_valid) -> bool:  # noqa: N802 (OMPL's name)
        return bool(self._segment_is_valid(a, b))


def _reseed_ompl(seed: int) -> None:
    # OMPL complains when reseeded after its first random number, but reseeding still makes the
    # next plan reproducible, which is all tests and benchmarks need.
    level = ou.getLogLevel()
    ou.setLogLevel(ou.LOG_NONE)
    try:
        ou.RNG.setSeed(seed)
    finally:
        ou.setLogLevel(level)

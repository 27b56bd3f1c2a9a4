"""MoveIt2 backend: the same checker/planner interface, answered by move_group's services.

`moveit_msgs` is on no registry this machine reaches, so every import of it happens inside a
function and `select_backend('auto', ...)` falls back to the embedded pinocchio/OMPL backend when
it is missing. No rclpy here either: the node injects a `client_factory(srv_type, service_name)`
that returns a `ServiceClient` (ready/call), its own thin wrapper around an rclpy client.
"""
from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .checker import DEFAULT_MAX_JOINT_STEP, CollisionChecker, PathResult, StateResult, interpolate_path
from .config import CollisionGuardConfig
from .planner import FallbackPlanner, GoalChoosingPlanner, MotionLimits, Plan, PlanningFailed
from .robot_model import RobotModel
from .scene import Scene, SceneObject

CHECK_STATE_SERVICE = '/check_state_validity'
PLAN_SERVICE = '/plan_kinematic_path'
MOVEIT_SUCCESS = 1  # moveit_msgs/MoveItErrorCodes.SUCCESS


class ServiceClient(Protocol):
    def ready(self, timeout_s: float) -> bool: ...

    def call(self, request: Any, timeout_s: float) -> Any | None: ...


ClientFactory = Callable[[Any, str], ServiceClient]


def moveit_available() -> bool:
    """True when the moveit_msgs Python package can be imported."""
    return importlib.util.find_spec('moveit_msgs') is not None


class MoveItChecker:
    """check_state / check_path through /check_state_validity (one call per interpolated state)."""

    def __init__(self, model: RobotModel, client_factory: ClientFactory, *, group_name: str = 'arm',
                 timeout_s: float = 0.5) -> None:
        from moveit_msgs.srv import GetStateValidity

        self.model = model
        self.group_name = group_name
        self.timeout_s = timeout_s
        self._srv = GetStateValidity
        self.client = client_factory(GetStateValidity, CHECK_STATE_SERVICE)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.model.joint_names

    def check_state(self, q: Mapping[str, float] | np.ndarray) -> StateResult:
        q = self.model.configuration(q) if isinstance(q, Mapping) else np.asarray(q, dtype=float)
        request = self._srv.Request()
        request.group_name = self.group_name
        request.robot_state.joint_state.name = list(self.joint_names)
        request.robot_state.joint_state.position = [float(v) for v in q]
        response = self.client.call(request, self.timeout_s)
        if response is None:
            # No answer is not a "free": the guard must not pass what nobody checked.
            return StateResult(False, None, f'{CHECK_STATE_SERVICE} did not answer within {self.timeout_s} s',
                               'unchecked')
        if response.valid:
            return StateResult(True, None, 'free', 'free')
        if response.contacts:
            contact = response.contacts[0]
            pair = (contact.contact_body_1, contact.contact_body_2)
            return StateResult(False, pair, f'collision between {pair[0]} and {pair[1]} (MoveIt)', 'collision')
        return StateResult(False, None, 'invalid state (MoveIt: joint limits or constraints)', 'invalid')

    def check_path(self, start: Mapping[str, float] | np.ndarray, waypoints: np.ndarray,
                   max_joint_step: float = DEFAULT_MAX_JOINT_STEP) -> PathResult:
        start = self.model.configuration(start) if isinstance(start, Mapping) else np.asarray(start, dtype=float)
        waypoints = np.asarray(waypoints, dtype=float)
        states, waypoint_of = interpolate_path(start, waypoints, max_joint_step)
        for k, q in enumerate(states):
            state = self.check_state(q)
            if not state.valid:
                index = int(waypoint_of[k])
                return PathResult(False, index, state.pair, None if k == 0 else states[k - 1].copy(),
                                  None if k == 0 else index - 1, k + 1, state.reason, state.kind, states)
        return PathResult(True, None, None, waypoints[-1].copy(), len(waypoints) - 1, len(states), states=states)


class MoveItPlanner(GoalChoosingPlanner):
    """plan / plan_fallback through /plan_kinematic_path, resampled at the control period."""

    def __init__(self, checker: MoveItChecker, client_factory: ClientFactory, *, control_period: float,
                 time_budget_s: float, velocity_scaling: float = 0.5, acceleration_scaling: float = 0.5,
                 planner_id: str = 'RRTConnectkConfigDefault', goal_tolerance: float = 1e-3) -> None:
        from moveit_msgs.srv import GetMotionPlan

        self.checker = checker
        self.control_period = control_period
        self.time_budget_s = time_budget_s
        self.velocity_scaling = velocity_scaling
        self.acceleration_scaling = acceleration_scaling
        self.planner_id = planner_id
        self.goal_tolerance = goal_tolerance
        self._srv = GetMotionPlan
        self.client = client_factory(GetMotionPlan, PLAN_SERVICE)

    def plan(self, start: np.ndarray, goal: np.ndarray, goal_kind: str = 'policy_goal',
             planned_joints: Sequence[str] | None = None) -> Plan | PlanningFailed:
        from moveit_msgs.msg import Constraints, JointConstraint

        began = time.perf_counter()
        names = list(planned_joints) if planned_joints is not None else list(self.joint_names)
        index = {n: i for i, n in enumerate(self.joint_names)}
        request = self._srv.Request()
        motion = request.motion_plan_request
        motion.group_name = self.checker.group_name
        motion.planner_id = self.planner_id
        motion.allowed_planning_time = float(self.time_budget_s)
        motion.num_planning_attempts = 1
        motion.max_velocity_scaling_factor = float(self.velocity_scaling)
        motion.max_acceleration_scaling_factor = float(self.acceleration_scaling)
        motion.start_state.joint_state.name = list(self.joint_names)
        motion.start_state.joint_state.position = [float(v) for v in start]
        constraints = Constraints()
        for name in names:
            joint = JointConstraint()
            joint.joint_name = name
            joint.position = float(goal[index[name]])
            joint.tolerance_above = joint.tolerance_below = self.goal_tolerance
            joint.weight = 1.0
            constraints.joint_constraints.append(joint)
        motion.goal_constraints = [constraints]
        response = self.client.call(request, self.time_budget_s + self.checker.timeout_s)
        elapsed = time.perf_counter() - began
        if response is None:
            return PlanningFailed(f'{PLAN_SERVICE} did not answer in time', elapsed, goal_kind)
        result = response.motion_plan_response
        if result.error_code.val != MOVEIT_SUCCESS:
            return PlanningFailed(f'MoveIt planning failed (error code {result.error_code.val})', elapsed, goal_kind)
        trajectory = result.trajectory.joint_trajectory
        points = _resample(trajectory, self.joint_names, np.asarray(start, dtype=float), self.control_period)
        return Plan(points, self.control_period, elapsed, goal_kind)


def _resample(trajectory: Any, joint_names: Sequence[str], start: np.ndarray, dt: float) -> np.ndarray:
    """Positions of a trajectory_msgs/JointTrajectory at multiples of dt (linear in between)."""
    columns = [list(trajectory.joint_names).index(n) if n in trajectory.joint_names else None
               for n in joint_names]
    times = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in trajectory.points])
    positions = np.array([list(p.positions) for p in trajectory.points], dtype=float)
    samples = np.arange(0.0, times[-1] + dt - 1e-9, dt)
    samples[-1] = min(samples[-1], times[-1])
    points = np.repeat(start[None], len(samples), axis=0)
    for j, column in enumerate(columns):
        if column is not None:
            points[:, j] = np.interp(samples, times, positions[:, column])
    return points


WARM_UP_PROBE = SceneObject('__guard_warm_up_probe__', 'box', (0.01, 0.01, 0.01), (1e3, 1e3, 1e3))


@dataclass(frozen=True)
class CollisionBackend:
    name: str  # 'embedded' | 'moveit'
    checker: Any  # CollisionChecker | MoveItChecker
    planner: Any  # FallbackPlanner | MoveItPlanner

    def warm_up(self, on_planning_thread: Callable[[Callable[[], Any]], Any] = lambda work: work()) -> str:
        """Before the first chunk (at configure, nothing subscribed yet): one scene rebuild in each
        checker and one fallback plan, each on the thread that will do it in service (the planner's
        work through `on_planning_thread`): the first real ones are then as fast as the later ones, and
        what they allocate once (glibc keeps a heap per thread) is allocated before the node reports
        itself configured. Returns a log line.

        Without it the guard's RSS grew 8.5 MB in the first three minutes of a soak, as its first plans
        and scene updates came (issue 12), and the first fallback plan took 6x longer than later ones."""
        if self.name != 'embedded':
            return 'warm-up: none (move_group plans)'
        scene, planner = self.checker.scene, self.planner
        home = (self.checker.lower + self.checker.upper) / 2
        scene.add(WARM_UP_PROBE)  # far away: nothing collides with it; removed before anything reads
        try:
            self.checker.check_state(home)
            on_planning_thread(lambda: planner.checker.check_state(home))
        finally:
            scene.remove(WARM_UP_PROBE.name)
        self.checker.check_state(home)

        def plan_once() -> float | None:
            planner.checker.check_state(home)
            return planner.warm_up()
        took = on_planning_thread(plan_once)
        if took is None:
            return 'warm-up: no two collision-free states found for a trial plan; the first fallback pays its set-up'
        return f'warm-up: trial fallback plan {took * 1e3:.1f} ms'


def select_backend(requested: str, model: RobotModel, config: CollisionGuardConfig,
                   scene: Scene | None = None,
                   client_factory: ClientFactory | None = None) -> tuple[CollisionBackend, str]:
    """The backend to run and a log line saying which one and why.

    'auto' uses MoveIt when moveit_msgs imports and move_group answers, the embedded backend
    otherwise; 'moveit' insists (an error if it cannot run); 'embedded' never asks.
    """
    if requested not in ('auto', 'embedded', 'moveit'):
        raise ValueError(f"backend must be 'auto', 'embedded' or 'moveit', got {requested!r}")
    why = ''
    if requested in ('auto', 'moveit'):
        if not moveit_available():
            why = 'moveit_msgs is not installed'
        elif client_factory is None:
            why = 'no service client factory was given'
        else:
            checker = MoveItChecker(model, client_factory, group_name=config.moveit_group,
                                    timeout_s=config.moveit_timeout_s)
            planner = MoveItPlanner(checker, client_factory, control_period=config.control_period_s,
                                    time_budget_s=config.planning_time_budget_s,
                                    velocity_scaling=config.velocity_scaling)
            if checker.client.ready(config.moveit_timeout_s) and planner.client.ready(config.moveit_timeout_s):
                return (CollisionBackend('moveit', checker, planner),
                        f'collision backend: moveit (move_group services {CHECK_STATE_SERVICE}, {PLAN_SERVICE})')
            why = f'move_group does not offer {CHECK_STATE_SERVICE} and {PLAN_SERVICE}'
        if requested == 'moveit':
            raise RuntimeError(f'backend moveit requested but unavailable: {why}')
    scene = scene if scene is not None else config.scene()
    checker = CollisionChecker(model, scene, config.padding, limit_tolerance=config.limit_tolerance)
    limits = MotionLimits.from_model(model, config.velocity_scaling, config.acceleration_limits,
                                     config.jerk_limits)
    # The planner checks with a checker of its own (same scene, own pinocchio data): the guard plans on
    # one thread while it checks the next chunks on another, and one shared checker would serialise them.
    planner_checker = CollisionChecker(model, scene, config.padding, limit_tolerance=config.limit_tolerance)
    planner = FallbackPlanner(planner_checker, limits, config.planning_time_budget_s, config.control_period_s,
                              max_joint_step=config.max_joint_step, seed=config.seed)
    message = 'collision backend: embedded (pinocchio + coal, OMPL RRTConnect)'
    if why:
        message += f'; {requested} could not use MoveIt: {why}'
    return CollisionBackend('embedded', checker, planner), message

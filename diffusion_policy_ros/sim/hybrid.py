"""The collision guard and a classical planning pipeline in the sim's closed loop (sim time, no ROS).

Both act through `rollout`'s `act(t)` contract (points due one control period apart from t + dt), so
the benchmark compares three arms on the same seeds and the same physics:

- `GuardFilter`: what `collision_guard_node` does between `policy_node` and the controller, with the
  same `CollisionGuard`, checker and planner (built from `config/collision_guard.yaml`), fed the sim's
  scene as markers (a moving box gets its velocity measured and is swept over the look-ahead) and
  re-checking what the arm executes whenever no new chunk comes.
- `ClassicalController`: a MoveIt-style pipeline with known object poses: the scripted expert's task
  waypoints (IK of the privileged layout), each leg planned start -> goal by the same OMPL + timing
  stack through the same checker, re-planned when the scene blocks the rest of the plan, the same
  gripper logic (close and open in place).

The loop is synchronous: planning and inference take wall time while sim time stands still. Their
cost is reported per cycle beside the outcome rather than charged to the episode.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from ..collision.config import CollisionGuardConfig
from ..collision.evasion import Evader
from ..collision.guard import CollisionGuard, GuardDecision, TrajectoryChunk
from ..collision.moveit_backend import select_backend
from ..collision.planner import Plan
from ..collision.robot_model import RobotModel
from ..collision.scene import Scene
from ..collision.scene_overlay import CUBE, MarkerScene
from ..paths import share_dir
from ..robot_description import PANDA_JOINTS, panda_description
from .arm import SimArm
from .experts import ExpertConfig, ScriptedExpert

ARM = 7  # the arm joints of PANDA_JOINTS; the eighth is the gripper


def guard_config(**overrides: object) -> CollisionGuardConfig:
    """The shipped guard configuration (config/collision_guard.yaml), the one the node runs with."""
    config = CollisionGuardConfig.from_params_file(share_dir() / 'config' / 'collision_guard.yaml')
    return dataclasses.replace(config, **overrides)


def _panda_model() -> RobotModel:
    description = panda_description()
    return RobotModel.from_urdf(description.urdf_text(), description.srdf_text())


def scene_as_markers(arm: SimArm, stamp_s: float) -> list[SimpleNamespace]:
    """The sim's obstacles as the Marker fields MarkerScene reads (boxes; the node publishes the same)."""
    sec = int(stamp_s)
    header = SimpleNamespace(frame_id='panda_link0', stamp=SimpleNamespace(sec=sec, nanosec=int((stamp_s - sec) * 1e9)))
    markers = []
    for index, obj in enumerate(arm.scene_objects()):
        x, y, z, qx, qy, qz, qw = obj.pose
        markers.append(SimpleNamespace(
            ns='sim_scene', id=index, action=0, type=CUBE, text=obj.name, header=header,
            scale=SimpleNamespace(x=obj.size[0], y=obj.size[1], z=obj.size[2]),
            pose=SimpleNamespace(position=SimpleNamespace(x=x, y=y, z=z),
                                 orientation=SimpleNamespace(x=qx, y=qy, z=qz, w=qw))))
    return markers


def on_control_grid(start: np.ndarray, positions: np.ndarray, times: np.ndarray, dt: float) -> np.ndarray:
    """A trajectory (times from now) resampled at dt, 2 dt, ... until its end: what `rollout` sends."""
    times = np.concatenate([[0.0], np.asarray(times, dtype=float)])
    positions = np.vstack([start[None], positions])
    grid = dt * np.arange(1, max(1, int(np.ceil(times[-1] / dt - 1e-9))) + 1)
    return np.stack([np.interp(grid, times, positions[:, j]) for j in range(positions.shape[1])], axis=1)


@dataclass
class CycleCosts:
    """Wall seconds per control cycle spent checking and planning (inference is the policy's own)."""

    check_s: list[float] = field(default_factory=list)
    plan_s: list[float] = field(default_factory=list)
    fallbacks: int = 0  # plans sent (guard fallbacks, classical plans and re-plans)
    replans: int = 0  # of those, caused by the scene blocking what was being executed
    holds: int = 0
    evasions: int = 0  # guard: motions out of a moving object's way instead of a hold


class _SceneTracker:
    """The checker's scene kept up to date from the sim, as the node's marker subscription does."""

    def __init__(self, scene: Scene, config: CollisionGuardConfig) -> None:
        self.markers = MarkerScene(scene, config.scene_objects, ['panda_link0'],
                                   lookahead_s=config.moving_object_lookahead_s)

    def update(self, arm: SimArm, t: float) -> bool:
        return self.markers.apply(scene_as_markers(arm, t)).changed


class GuardFilter:
    """`collision_guard_node` in the loop: every chunk the policy sends is reviewed (checked, planned
    around when blocked) and replaced by the decision; when no chunk comes, what executes is re-checked."""

    def __init__(self, arm: SimArm, config: CollisionGuardConfig | None = None) -> None:
        self.arm = arm
        self.config = config or guard_config()
        model = _panda_model()
        backend, _ = select_backend('embedded', model, self.config)
        # One scene object for checker and planner: the loop is single-threaded.
        backend.planner.checker = backend.checker
        self.scene = _SceneTracker(backend.checker.scene, self.config)
        self.guard = CollisionGuard(backend.checker, backend.planner, max_joint_step=self.config.max_joint_step,
                                    hold_time_s=self.config.control_period_s, clock=lambda: arm.sim_time,
                                    evader=Evader.from_config(model, self.scene.markers, self.config))
        self.costs = CycleCosts()

    def __call__(self, t: float, points: np.ndarray | None, dt: float) -> np.ndarray | None:
        _, q, _ = self.arm.joint_state()
        measured = dict(zip(PANDA_JOINTS, q))
        changed = self.scene.update(self.arm, t)
        began = time.perf_counter()
        if points is None:
            if not changed:
                return None
            decision = self.guard.recheck(measured, t)
            if decision is None:
                return None
            self.costs.replans += decision.plan_request is not None
        else:
            chunk = TrajectoryChunk(PANDA_JOINTS, np.asarray(points), dt * np.arange(1, len(points) + 1))
            decision = self.guard.check(measured, chunk, t)
        self.costs.check_s.append(time.perf_counter() - began)
        if decision.plan_request is not None:
            began = time.perf_counter()
            planned = self.guard.plan(decision.plan_request)
            self.costs.plan_s.append(time.perf_counter() - began)
            if planned is not None and planned.trajectory is not None:
                decision = planned
                self.costs.fallbacks += planned.action == 'replace'
        return self._send(decision, q, t, dt)

    def _send(self, decision: GuardDecision, q: np.ndarray, t: float, dt: float) -> np.ndarray | None:
        chunk = decision.trajectory
        if chunk is None:
            return None
        self.costs.holds += decision.action == 'hold'
        times = np.asarray(chunk.time_from_start, dtype=float)
        positions = np.asarray(chunk.positions, dtype=float)
        if decision.action == 'replace' and times[0] == 0.0 and len(times) > 1:
            positions, times = positions[1:], times[1:]  # a fallback starts at the measured state
        self.guard.record_sent(TrajectoryChunk(chunk.joint_names, positions, times), t)
        columns = [PANDA_JOINTS.index(n) for n in chunk.joint_names]
        full = np.repeat(q[None], len(positions), axis=0)
        full[:, columns] = positions
        return on_control_grid(q, full, times, dt)


@dataclass(frozen=True)
class _Leg:
    goal: np.ndarray  # (8,) joint target at the leg's end
    dwell_s: float  # > 0: stay in place this long while the gripper moves to goal[7]


class ClassicalController:
    """The task's waypoints (from the privileged layout, as the scripted expert computes them), each
    leg planned collision-free and time-parameterised, re-planned when the scene blocks the rest."""

    GOAL_TOLERANCE = 0.02  # rad: a leg is done when every arm joint is this close to its goal
    SETTLE_S = 1.0  # after a plan ends, this long to reach the goal before re-planning from where it is

    def __init__(self, arm: SimArm, config: CollisionGuardConfig | None = None, planning_budget_s: float = 1.0) -> None:
        self.arm = arm
        self.config = guard_config(planning_time_budget_s=planning_budget_s) if config is None else config
        backend, _ = select_backend('embedded', _panda_model(), self.config)
        self.checker, self.planner = backend.checker, backend.planner
        self.planner.checker = self.checker
        self.scene = _SceneTracker(self.checker.scene, self.config)
        self.costs = CycleCosts()
        expert = ScriptedExpert(arm, ExpertConfig(waypoint_noise=0.0, speed_jitter=0.0))
        self.legs = []
        for segment, end in zip(expert.segments, expert.segment_end_times):
            goal = expert.joint_target(float(end))
            still = np.allclose(segment.path[0], segment.path[-1])
            self.legs.append(_Leg(goal, segment.duration if still else 0.0))
        self.leg = 0
        self.gripper = float(expert.joint_target(0.0)[ARM])
        self._plan: Plan | None = None
        self._plan_start = 0.0
        self._dwell_until: float | None = None

    def finished(self) -> bool:
        return self.leg >= len(self.legs)

    def __call__(self, t: float) -> np.ndarray | None:
        self.scene.update(self.arm, t)
        if self.finished():
            return None
        _, q, _ = self.arm.joint_state()
        leg = self.legs[self.leg]
        dt = 1.0 / self.arm.cfg.control_hz
        if leg.dwell_s > 0:  # close or open the gripper in place
            if self._dwell_until is None:
                self._dwell_until = t + leg.dwell_s
                self.gripper = float(leg.goal[ARM])
            if t >= self._dwell_until:
                self._dwell_until = None
                self._next_leg()
            return np.append(q[:ARM], self.gripper)[None]
        start = np.append(q[:ARM], self.gripper)
        goal = np.append(leg.goal[:ARM], self.gripper)
        if self._plan is not None:
            elapsed = t - self._plan_start
            remaining = self._plan.points[self._plan.times > elapsed]
            if not len(remaining):
                if np.max(np.abs(q[:ARM] - goal[:ARM])) <= self.GOAL_TOLERANCE:
                    self._next_leg()
                    return self(t)
                if elapsed < self._plan.duration_s + self.SETTLE_S:
                    return goal[None]
                self._plan = None  # it did not get there: plan again from where it is
            else:
                began = time.perf_counter()
                blocked = not self.checker.check_path(start, remaining, self.config.max_joint_step).valid
                self.costs.check_s.append(time.perf_counter() - began)
                if not blocked:
                    return on_control_grid(start, remaining, self._plan.times[self._plan.times > elapsed] - elapsed, dt)
                self.costs.replans += 1
                self._plan = None
        began = time.perf_counter()
        plan = self.planner.plan(start, goal, planned_joints=PANDA_JOINTS[:ARM])
        self.costs.plan_s.append(time.perf_counter() - began)
        if not isinstance(plan, Plan) or len(plan.points) < 2:
            self.costs.holds += 1
            return start[None]  # the goal is blocked (a box passing through it): hold and try again
        self.costs.fallbacks += 1
        self._plan, self._plan_start = plan, t
        return on_control_grid(start, plan.points[1:], plan.times[1:], dt)

    def _next_leg(self) -> None:
        self.leg += 1
        self._plan = None


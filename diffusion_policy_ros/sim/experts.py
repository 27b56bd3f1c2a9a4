"""Scripted experts: Cartesian waypoints -> IK -> joint targets streamed at the control rate.

An expert plans its TCP path once from the episode's (privileged) layout, then at each control
tick solves IK for the pose one control period ahead and sends that as a short JointTrajectory,
exactly the stream a teleoperator or a policy would produce. So the recorded commands are the
actions a policy must learn. Small per-seed noise on the waypoints, timing and grasp offsets
keeps the demonstrations from being copies of each other; `reach_around` goes left on even seeds
and right on odd ones, a 50/50 split over any run of consecutive seeds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..robot_description import PANDA_JOINTS
from .arm import SimArm
from .kinematics import tcp_down_rotation
from .model import CUBE_SIZE, OBSTACLE_SIZE, base_task
from .tasks import PickPlaceLayout, ReachAroundLayout

GRIPPER_OPEN = 0.04
TASK_SPEED = {'reach_around': 0.3, 'pick_place': 0.45}  # m/s, leaves >= 25 % of the time limit spare
HAND_HALF_LENGTH = 0.12  # m, half the hand's long side (0.1) plus margin
GRIPPER_CLOSED = 0.0  # commanded; the fingers stop on the cube at half its width


@dataclass
class ExpertConfig:
    speed: float | None = None  # m/s peak TCP speed; None: the task's default (TASK_SPEED)
    waypoint_noise: float = 0.01  # m, std of via-point perturbations
    speed_jitter: float = 0.15  # relative, uniform +-
    lookahead_points: int = 1  # points per command (the first is due one control period ahead)
    side_clearance: float = 0.12  # m between the obstacle's side and the reach_around path


@dataclass(frozen=True)
class _Segment:
    """TCP moves along ``path`` (N, 3) with a minimum-jerk time law while yaw and gripper blend."""
    path: np.ndarray
    yaw: tuple[float, float]
    gripper: tuple[float, float]
    duration: float


def _min_jerk(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s * s * s * (10.0 - 15.0 * s + 6.0 * s * s)


def _chaikin(points: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Round the corners of a polyline (it stays inside the hull of the waypoints)."""
    for _ in range(iterations):
        q = 0.75 * points[:-1] + 0.25 * points[1:]
        r = 0.25 * points[:-1] + 0.75 * points[1:]
        points = np.vstack([points[:1], np.column_stack([q, r]).reshape(-1, points.shape[1]), points[-1:]])
    return points


def _along(path: np.ndarray, fraction: float) -> np.ndarray:
    lengths = np.linalg.norm(np.diff(path, axis=0), axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(lengths)])
    if cumulative[-1] <= 0:
        return path[-1].copy()
    s = fraction * cumulative[-1]
    k = min(int(np.searchsorted(cumulative, s, side='right')) - 1, len(lengths) - 1)
    alpha = (s - cumulative[k]) / lengths[k] if lengths[k] > 0 else 0.0
    return path[k] + alpha * (path[k + 1] - path[k])


def _yaw_of(rotation: np.ndarray) -> float:
    return float(np.arctan2(rotation[1, 0], rotation[0, 0]))


class ScriptedExpert:
    """The demonstrator for the episode ``arm`` was just reset to (call right after `arm.reset`).

    Plan time is sim time since the reset, so `act(t)` takes the arm's `sim_time`.
    """

    joint_names = PANDA_JOINTS  # the column order of `act`'s points

    def __init__(self, arm: SimArm, cfg: ExpertConfig | None = None) -> None:
        self.arm = arm
        self.cfg = cfg or ExpertConfig()
        self.rng = np.random.default_rng([arm.seed, 104729])
        self.control_dt = 1.0 / arm.cfg.control_hz
        speed = TASK_SPEED[base_task(arm.task)] if self.cfg.speed is None else self.cfg.speed
        self.speed = speed * (1.0 + self.rng.uniform(-self.cfg.speed_jitter, self.cfg.speed_jitter))
        _, q, _ = arm.joint_state()
        self._q = q[:7].copy()
        self._solutions: dict[int, np.ndarray] = {}
        self.side: str | None = None
        position, rotation = arm.tcp_pose()
        layout = arm.layout
        if isinstance(layout, ReachAroundLayout):
            self.segments = self._plan_reach_around(layout, position, _yaw_of(rotation))
        elif isinstance(layout, PickPlaceLayout):
            self.segments = self._plan_pick_place(layout, position, _yaw_of(rotation))
        else:  # pragma: no cover - tasks.py defines the layouts
            raise TypeError(f'no expert for layout {type(layout).__name__}')
        self._starts = np.concatenate([[0.0], np.cumsum([s.duration for s in self.segments])])
        self.duration = float(self._starts[-1])

    # ----------------------------------------------------------------- plans
    def _move(self, waypoints: list[np.ndarray], yaw: tuple[float, float], gripper: float,
              speed_scale: float = 1.0) -> _Segment:
        path = _chaikin(np.array(waypoints)) if len(waypoints) > 2 else np.array(waypoints)
        length = float(np.sum(np.linalg.norm(np.diff(path, axis=0), axis=1)))
        # A min-jerk profile peaks at 1.875x its mean speed; size the time so the peak is the cruise speed.
        duration = max(0.4, 1.875 * length / (self.speed * speed_scale), 0.6 * abs(yaw[1] - yaw[0]))
        return _Segment(path, yaw, (gripper, gripper), duration)

    def _noise(self, size: int = 2, scale: float | None = None) -> np.ndarray:
        scale = self.cfg.waypoint_noise if scale is None else scale
        return np.clip(self.rng.normal(0.0, scale, size), -2 * scale, 2 * scale)

    def _plan_reach_around(self, layout: ReachAroundLayout, start: np.ndarray, yaw: float) -> list[_Segment]:
        self.side = 'left' if self.arm.seed % 2 == 0 else 'right'
        sign = 1.0 if self.side == 'left' else -1.0
        center = layout.obstacle_center
        y_side = center[1] + sign * (OBSTACLE_SIZE[1] / 2 + self.cfg.side_clearance)
        height = layout.target[2]
        # The hand is 0.2 m long along x here (yaw pi/2): turn the corners clear of the box faces.
        front = np.array([center[0] - OBSTACLE_SIZE[0] / 2 - HAND_HALF_LENGTH, y_side, height])
        back = np.array([center[0] + OBSTACLE_SIZE[0] / 2 + HAND_HALF_LENGTH, y_side, height])
        front[:2] += self._noise()
        back[:2] += self._noise()
        back[1] = y_side + sign * abs(back[1] - y_side)  # noise never moves the path towards the box
        front[1] = y_side + sign * abs(front[1] - y_side)
        path = [start, front, back, layout.target.copy()]
        hold = _Segment(np.array([layout.target, layout.target]), (yaw, yaw), (GRIPPER_OPEN,) * 2, 0.5)
        return [self._move(path, (yaw, yaw), GRIPPER_OPEN), hold]

    def _plan_pick_place(self, layout: PickPlaceLayout, start: np.ndarray, yaw: float) -> list[_Segment]:
        # The cube looks the same every quarter turn: grasp at the equivalent yaw nearest the current one.
        grasp_yaw = layout.cube_yaw + np.pi / 2 * np.round((yaw - layout.cube_yaw) / (np.pi / 2))
        cube = layout.cube_position + np.append(self._noise(scale=0.003), 0.0)
        grasp = cube + np.array([0.0, 0.0, 0.0])
        above_cube = cube + np.array([0.0, 0.0, 0.12])
        zone = np.append(layout.zone_center + self._noise(scale=0.008), CUBE_SIZE / 2 + 0.006)
        above_zone = zone + np.array([0.0, 0.0, 0.14])
        lifted = grasp + np.array([0.0, 0.0, 0.14])
        hold = lambda p, y, g0, g1, d: _Segment(np.array([p, p]), (y, y), (g0, g1), d)  # noqa: E731
        return [
            self._move([start, above_cube], (yaw, grasp_yaw), GRIPPER_OPEN),
            self._move([above_cube, grasp], (grasp_yaw, grasp_yaw), GRIPPER_OPEN, 0.6),
            hold(grasp, grasp_yaw, GRIPPER_OPEN, GRIPPER_CLOSED, 0.5),
            hold(grasp, grasp_yaw, GRIPPER_CLOSED, GRIPPER_CLOSED, 0.3),
            self._move([grasp, lifted], (grasp_yaw, grasp_yaw), GRIPPER_CLOSED, 0.6),
            self._move([lifted, above_zone], (grasp_yaw, grasp_yaw), GRIPPER_CLOSED),
            self._move([above_zone, zone], (grasp_yaw, grasp_yaw), GRIPPER_CLOSED, 0.6),
            hold(zone, grasp_yaw, GRIPPER_CLOSED, GRIPPER_OPEN, 0.4),
            self._move([zone, zone + np.array([0.0, 0.0, 0.10])], (grasp_yaw, grasp_yaw), GRIPPER_OPEN, 0.6),
        ]

    # ----------------------------------------------------------------- execution
    def tcp_target(self, t: float) -> tuple[np.ndarray, float, float]:
        """Planned TCP position, yaw and gripper opening at plan time ``t``."""
        t = min(max(t, 0.0), self.duration)
        k = min(int(np.searchsorted(self._starts, t, side='right')) - 1, len(self.segments) - 1)
        segment = self.segments[k]
        s = _min_jerk((t - self._starts[k]) / segment.duration)
        yaw = segment.yaw[0] + s * (segment.yaw[1] - segment.yaw[0])
        gripper = segment.gripper[0] + s * (segment.gripper[1] - segment.gripper[0])
        return _along(segment.path, s), yaw, gripper

    def joint_target(self, t: float) -> np.ndarray:
        """(8,) joint target in `PANDA_JOINTS` order for plan time ``t`` (IK warm-started in time order)."""
        key = int(round(t * 1e6))
        if key not in self._solutions:
            position, yaw, gripper = self.tcp_target(t)
            result = self.arm.ik.solve(self._q, position, tcp_down_rotation(yaw), iterations=50)
            self._q = result.q
            self._solutions[key] = np.append(result.q, gripper)
        return self._solutions[key]

    def act(self, t: float) -> np.ndarray:
        """Points (K, 8) due at ``t + dt, t + 2 dt, ...``: what to send with `command_trajectory` at ``t``."""
        return np.stack([self.joint_target(t + k * self.control_dt)
                         for k in range(1, self.cfg.lookahead_points + 1)])

    def finished(self, t: float) -> bool:
        return t >= self.duration

    @property
    def segment_end_times(self) -> np.ndarray:
        """Plan time at which each segment ends (the classical pipeline plans to these poses)."""
        return self._starts[1:].copy()

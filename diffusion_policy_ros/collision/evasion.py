"""Getting the arm out of a moving object's way when standing still would be hit.

The guard holds a moving object swept over its look-ahead (`MarkerScene`): a chunk is blocked by where
the object is going. That is enough while the arm moves, but an arm that stops (a hold, a cut, a chunk
that ended) can stand where the object is going, and holding there waits for the hit. When the measured
state itself lies in a moving object's way, the `Evader` looks for a short straight joint motion that
moves the arm's last link away (up, sideways away from the object's line, back towards the base, and
their mixes, 5-30 cm, by damped least squares on the link's Jacobian) and accepts the quickest one that
is clear by a rule that accounts for time, one control period at a time:

- the states between the motion's points k and k + 1 (due k and k + 1 periods from now) meet no object
  where it can be during that period (a moving object swept over it, plus SCENE_AGE_S for the age of
  the sighting; a static one as it is);
- where it stops, T from now, it is free of where each object can be during [T, T + look-ahead].

The straight motion is timed by the fallback's own ruckig parameterisation, so what is checked is what
is sent. Not a planner: when no such motion exists (the object is already there, or every way out is
blocked) the guard holds as before.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pinocchio as pin

from .checker import DEFAULT_MAX_JOINT_STEP, CollisionChecker
from .planner import MotionLimits, time_parameterise
from .robot_model import RobotModel
from .scene import Scene
from .scene_overlay import MarkerScene

# How far the link is moved, metres, tried in this order for each direction (the quickest clear wins).
EVASION_DISTANCES_M = (0.05, 0.1, 0.15, 0.2, 0.3)
_DAMPING = 0.05  # damped least squares: bounded joint steps near a singularity
# s added to the end of every time window: how old the last sighting of an object can be when the
# evader uses it (a scene topic at 30 Hz, plus transport)
SCENE_AGE_S = 0.1
_IK_ITERATIONS = 3


@dataclass(frozen=True)
class Evasion:
    points: np.ndarray  # (K, nq) configurations after the start, one control period apart
    times: np.ndarray  # (K,) s from now
    threat: str  # the moving object it gets away from
    direction: str  # how: 'up', 'aside', 'back' or a mix

    @property
    def duration_s(self) -> float:
        return float(self.times[-1])


def evasion_frame(model: RobotModel, link: str = '') -> int:
    """The frame moved away: `link`, or the body attached to the last revolute joint (a wrist or hand)."""
    if link:
        if not model.model.existFrame(link):
            raise ValueError(f'evasion_link {link!r} is not a link of the robot model')
        return model.model.getFrameId(link)
    revolute = [j for j in range(1, model.model.njoints) if _is_revolute(model.model.joints[j])]
    if not revolute:
        raise ValueError('the robot model has no revolute joint to evade with')
    last = revolute[-1]
    for index, frame in enumerate(model.model.frames):
        if frame.parentJoint == last and str(frame.type).endswith('BODY'):
            return index
    raise ValueError(f'no link is attached to joint {model.model.names[last]!r}')


def _is_revolute(joint: pin.JointModel) -> bool:
    name = joint.shortname()
    return name.startswith('JointModelR') and 'Mimic' not in name


class Evader:
    """Finds and re-checks evasive motions (see the module docstring). One caller thread at a time."""

    def __init__(self, model: RobotModel, markers: MarkerScene, limits: MotionLimits, *, padding: float,
                 limit_tolerance: float, control_period: float, max_duration_s: float = 1.0,
                 max_joint_step: float = DEFAULT_MAX_JOINT_STEP, link: str = '') -> None:
        self.model = model
        self.markers = markers
        self.limits = limits
        self.control_period = control_period
        self.max_duration_s = max_duration_s
        self.max_joint_step = max_joint_step
        self.frame = evasion_frame(model, link)
        self.padding = padding
        self.limit_tolerance = limit_tolerance
        self._data = model.model.createData()
        self._revolute_q = np.array([model.model.joints[j].idx_q for j in range(1, model.model.njoints)
                                     if _is_revolute(model.model.joints[j])], dtype=int)
        # One checker per time window, each with a scene of its own (a scene change rebuilds its coal
        # geometry, ~3 ms for the Panda): within one call every candidate reuses the same windows. Made
        # here, at configure: making them on the first evasion cost it 100 ms more.
        periods = int(np.ceil(max_duration_s / control_period - 1e-9)) + 1
        self._pool = [self._new_checker() for _ in range(2 * periods)]
        self._windows: dict[tuple[str, int], CollisionChecker] = {}
        q = np.clip(np.zeros(model.nq), model.limits.lower, model.limits.upper)
        objects = markers.objects_over(0.0, 0.0)
        for checker in self._pool:  # their first scene build and check, paid here too
            checker.scene.set_objects(objects)
            checker.check_state(q)

    def _new_checker(self) -> CollisionChecker:
        return CollisionChecker(self.model, Scene(), self.padding, limit_tolerance=self.limit_tolerance)

    def escape(self, start: np.ndarray, joints: Sequence[str]) -> Evasion | None:
        """The quickest clear evasive motion from `start` moving only `joints` (their revolute ones), or
        None (no moving object, or no clear motion within `max_duration_s`)."""
        moving = self.markers.moving()
        if not moving:
            return None
        active = np.intersect1d(self.model.joint_indices(list(joints)), self._revolute_q)
        if not len(active):
            return None
        start = np.asarray(start, dtype=float)
        position = self._link_position(start)
        threat, (obstacle, velocity) = min(
            moving.items(), key=lambda item: float(np.linalg.norm(np.asarray(item[1][0].pose[:3]) - position)))
        candidates = []
        for direction, unit in self._directions(position, np.asarray(obstacle.pose[:3]), velocity):
            for distance in EVASION_DISTANCES_M:
                goal = self._move_link(start, active, position + distance * unit)
                if goal is None:
                    continue
                samples = time_parameterise(np.vstack([start, goal]), self.limits, self.control_period)
                if samples is None or len(samples) < 2:
                    continue
                times = self.control_period * np.arange(1, len(samples))
                if times[-1] <= self.max_duration_s + 1e-9:
                    candidates.append(Evasion(samples[1:], times, threat, direction))
        self._windows = {}
        for evasion in sorted(candidates, key=lambda e: e.duration_s):
            if self._clear(start, evasion.points):
                return evasion
        return None

    def clear(self, start: np.ndarray, points: np.ndarray) -> bool:
        """Whether moving from `start` through `points` (one control period apart, the first due one
        period from now) is safe from every object by the rule in the module docstring."""
        self._windows = {}
        return self._clear(start, points)

    def _clear(self, start: np.ndarray, points: np.ndarray) -> bool:
        # Where it stops first: one state, and what rules out most candidates.
        if not self._window('stopped', len(points)).is_valid(points[-1]):
            return False
        previous = start
        for k, point in enumerate(points):  # from point k - 1 (the start) to point k: period k
            if not self._window('moving', k).check_path(previous, point[None], self.max_joint_step).valid:
                return False
            previous = point
        return True

    def _window(self, kind: str, k: int) -> CollisionChecker:
        """The checker whose scene holds every object where it can be during period k ('moving'), or
        from k periods on for the look-ahead ('stopped'), built once per call."""
        checker = self._windows.get((kind, k))
        if checker is None:
            if len(self._pool) <= len(self._windows):
                self._pool.append(self._new_checker())
            checker = self._pool[len(self._windows)]
            begin = k * self.control_period
            end = begin + (self.control_period if kind == 'moving' else self.markers.lookahead_s) + SCENE_AGE_S
            checker.scene.set_objects(self.markers.objects_over(begin, end))
            self._windows[(kind, k)] = checker
        return checker

    def _directions(self, position: np.ndarray, obstacle: np.ndarray,
                    velocity: np.ndarray) -> list[tuple[str, np.ndarray]]:
        up = np.array([0.0, 0.0, 1.0])
        across = np.cross(up, velocity)  # horizontal, across the object's line
        across = across / np.linalg.norm(across) if np.linalg.norm(across) > 1e-9 else np.zeros(3)
        if across @ (position - obstacle) < 0:
            across = -across  # to the side of the line the link is on
        back = -np.array([position[0], position[1], 0.0])  # towards the base, horizontally
        back = back / np.linalg.norm(back) if np.linalg.norm(back) > 1e-9 else np.zeros(3)
        named = [('up', up), ('aside', across), ('back', back), ('up and aside', up + across),
                 ('up and back', up + back)]
        return [(name, v / np.linalg.norm(v)) for name, v in named if np.linalg.norm(v) > 1e-9]

    def _link_position(self, q: np.ndarray) -> np.ndarray:
        pin.framesForwardKinematics(self.model.model, self._data, q)
        return self._data.oMf[self.frame].translation.copy()

    def _move_link(self, start: np.ndarray, active: np.ndarray, target: np.ndarray) -> np.ndarray | None:
        """A configuration near `start` that puts the link at `target` (damped least squares on the
        joints in `active`, clipped into the limits); None when it does not get within 2 cm."""
        q = start.copy()
        lower, upper = self.model.limits.lower, self.model.limits.upper
        for _ in range(_IK_ITERATIONS):
            error = target - self._link_position(q)
            jacobian = pin.computeFrameJacobian(self.model.model, self._data, q, self.frame,
                                                pin.ReferenceFrame.LOCAL_WORLD_ALIGNED)[:3, active]
            step = jacobian.T @ np.linalg.solve(jacobian @ jacobian.T + _DAMPING ** 2 * np.eye(3), error)
            q[active] = np.clip(q[active] + step, lower[active], upper[active])
        if np.linalg.norm(target - self._link_position(q)) > 0.02:
            return None
        return q

    @classmethod
    def from_config(cls, model: RobotModel, markers: MarkerScene, config) -> Evader | None:
        """The evader a `CollisionGuardConfig` asks for; None when evasion is off (max duration 0)."""
        if config.evasion_max_duration_s <= 0:
            return None
        limits = MotionLimits.from_model(model, config.velocity_scaling, config.acceleration_limits,
                                         config.jerk_limits)
        return cls(model, markers, limits, padding=config.padding, limit_tolerance=config.limit_tolerance,
                   control_period=config.control_period_s, max_duration_s=config.evasion_max_duration_s,
                   max_joint_step=config.max_joint_step, link=config.evasion_link)

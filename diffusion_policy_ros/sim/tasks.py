"""Tasks: per-seed layouts and success checks written in code.

`reach_around`: a green target sits behind a red box; the TCP must get within `REACH_TOLERANCE`
of it. The box is too tall to pass over comfortably, so the demonstrations go left or right: two
equally good solutions, the multimodal case a diffusion policy must handle.
`pick_place`: a cube at a random pose on the table must end at rest inside a green square.
`<task>_dynamic`: the same, with a box that crosses the workspace on a seeded schedule
(`MovingObstacle`: start time, speed 0.05-0.3 m/s, straight path through where the arm works).

A monitor is updated every physics step, so short events (a brush against the obstacle, the side
the TCP passes on) are never missed between status queries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mujoco
import numpy as np

from .model import (CUBE, CUBE_SIZE, FINGER_BODIES, MOVING_OBSTACLE, MOVING_OBSTACLE_SIZE, OBSTACLE,
                    OBSTACLE_SIZE, TARGET, TCP_BODY, ZONE, ZONE_SIZE, base_task, is_dynamic)

EPISODE_SECONDS: dict[str, float] = {'reach_around': 6.0, 'pick_place': 12.0, 'reach_around_dynamic': 8.0,
                                     'pick_place_dynamic': 14.0}
REACH_TOLERANCE = 0.03  # m, TCP to target centre
REACH_HEIGHT = 0.10  # m, height of the start, the target and the demonstrated path
REST_SPEED = 0.02  # m/s: the cube counts as resting below this speed


@dataclass(frozen=True)
class TaskStatus:
    success: bool
    done: bool  # success or time limit reached
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReachAroundLayout:
    obstacle_center: np.ndarray  # (3,) world
    target: np.ndarray  # (3,) world
    start_tcp: np.ndarray  # (3,) world, in front of the obstacle
    start_yaw: float  # TCP yaw at the start: pi/2 turns the hand's long side along x (slim sideways)


@dataclass(frozen=True)
class PickPlaceLayout:
    cube_position: np.ndarray  # (3,) world, resting on the table
    cube_yaw: float
    zone_center: np.ndarray  # (2,) world xy of the target square
    start_noise: np.ndarray  # (7,) rad added to the home pose


Layout = ReachAroundLayout | PickPlaceLayout


def sample_layout(task: str, seed: int) -> Layout:
    """The randomised scene of ``task`` for ``seed`` (a pure function of both)."""
    rng = np.random.default_rng([int(seed), 7919])
    task = base_task(task)  # a dynamic task keeps its static layout
    if task == 'reach_around':
        # Obstacle and target stay put so a policy that sees only joint states knows where to go; the
        # start varies, and the expert's side (left or right) is the multimodality to learn.
        obstacle = np.array([0.535, 0.0, OBSTACLE_SIZE[2] / 2])
        target = np.array([obstacle[0] + 0.185, 0.0, REACH_HEIGHT])
        start = np.array([obstacle[0] - 0.185 + rng.uniform(-0.015, 0.015), rng.uniform(-0.03, 0.03),
                          REACH_HEIGHT + rng.uniform(-0.01, 0.01)])
        return ReachAroundLayout(obstacle, target, start, float(np.pi / 2 + rng.uniform(-0.1, 0.1)))
    if task == 'pick_place':
        # Cube on the right half, zone on the left half: every episode needs a real transport.
        cube = np.array([rng.uniform(0.42, 0.60), rng.uniform(-0.22, -0.06), CUBE_SIZE / 2])
        zone = np.array([rng.uniform(0.42, 0.60), rng.uniform(0.10, 0.22)])
        return PickPlaceLayout(cube, float(rng.uniform(-0.5, 0.5)), zone, rng.uniform(-0.03, 0.03, size=7))
    raise ValueError(f'unknown task {task!r}; expected reach_around or pick_place')


@dataclass(frozen=True)
class MovingObstacle:
    """A box that waits at `start` (outside the arm's reach) until `start_time`, then slides in a straight
    line at `velocity` (m/s) across the workspace for `travel_s`, and stays where it ends."""

    start: np.ndarray  # (3,) world, centre of the box
    velocity: np.ndarray  # (3,) m/s
    start_time: float  # s of episode time
    travel_s: float
    size: tuple[float, float, float] = MOVING_OBSTACLE_SIZE

    @property
    def speed(self) -> float:
        return float(np.linalg.norm(self.velocity))

    def position(self, t: float) -> np.ndarray:
        return self.start + self.velocity * float(np.clip(t - self.start_time, 0.0, self.travel_s))


# The moving box slides along -x, from beyond the table's front towards the robot, through where each
# task's arm works without sweeping through where it starts or ends: beside reach_around's obstacle
# (|y| 0.13-0.16, the side the arm goes round: the other side stays open), and between pick_place's cube
# (y < -0.06) and its square (y > 0.10). It stops 0.25 m in front of the base and stays there.
MOVING_OBSTACLE_PATH_X = (1.0, 0.25)


def sample_moving_obstacle(task: str, seed: int) -> MovingObstacle | None:
    """The moving obstacle of a dynamic task's episode (a pure function of both); None for static tasks."""
    if not is_dynamic(task):
        return None
    rng = np.random.default_rng([int(seed), 104729])
    speed = float(rng.uniform(0.05, 0.3))
    if base_task(task) == 'reach_around':
        y = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.13, 0.16))
    else:
        y = float(rng.uniform(0.0, 0.02))
    (x0, x1), half_height = MOVING_OBSTACLE_PATH_X, MOVING_OBSTACLE_SIZE[2] / 2
    return MovingObstacle(np.array([x0, y, half_height]), np.array([-speed, 0.0, 0.0]),
                          float(rng.uniform(0.5, 3.0)), (x0 - x1) / speed)


class MovingObstacleMonitor:
    """Contacts between the arm and the moving box, counted every physics step (independent of any
    collision checker): onsets, and whether any happened this episode."""

    def __init__(self, model: mujoco.MjModel, inner: Monitor) -> None:
        self.inner = inner
        self.geom = model.geom(MOVING_OBSTACLE).id
        self.arm_geoms = _body_geoms(model, tuple(model.body(b).name for b in range(model.nbody)
                                                  if model.body(b).name.startswith('panda_')))
        self.contacts = 0  # onsets: a contact that was not there the step before
        self._touching = False

    def update(self, data: mujoco.MjData) -> None:
        self.inner.update(data)
        touching = False
        if data.ncon:
            pairs = data.contact.geom[:data.ncon]
            mine = pairs[(pairs == self.geom).any(axis=1)]
            touching = bool(np.isin(mine, self.arm_geoms).any())  # the table or the cube are no contact
        self.contacts += touching and not self._touching
        self._touching = touching

    def status(self, data: mujoco.MjData, time: float) -> TaskStatus:
        status = self.inner.status(data, time)
        return TaskStatus(status.success, status.done, {**status.info, 'moving_obstacle_contacts': self.contacts})


def _body_geoms(model: mujoco.MjModel, body_names: tuple[str, ...]) -> np.ndarray:
    ids = {model.body(n).id for n in body_names}
    return np.array([g for g in range(model.ngeom) if model.geom_bodyid[g] in ids])


class ReachAroundMonitor:
    def __init__(self, model: mujoco.MjModel, layout: ReachAroundLayout, time_limit: float) -> None:
        self.layout = layout
        self.time_limit = time_limit
        self.tcp_id = model.body(TCP_BODY).id
        self.obstacle_geom = model.geom(OBSTACLE).id
        self.success = False
        self.side: str | None = None
        self.crossed = False
        self.obstacle_contact = False
        self.min_distance = np.inf

    def update(self, data: mujoco.MjData) -> None:
        tcp = data.xpos[self.tcp_id]
        distance = float(np.linalg.norm(tcp - self.layout.target))
        self.min_distance = min(self.min_distance, distance)
        if distance < REACH_TOLERANCE:
            self.success = True
        if not self.crossed and tcp[0] >= self.layout.obstacle_center[0]:
            # The side is decided where the TCP passes the obstacle's plane: +y is the robot's left.
            self.crossed = True
            offset = tcp[1] - self.layout.obstacle_center[1]
            if abs(offset) > OBSTACLE_SIZE[1] / 2:
                self.side = 'left' if offset > 0 else 'right'
        if data.ncon and not self.obstacle_contact:
            # Only the arm can touch the obstacle (the table and obstacle are both static).
            self.obstacle_contact = bool(np.any(data.contact.geom[:data.ncon] == self.obstacle_geom))

    def status(self, data: mujoco.MjData, time: float) -> TaskStatus:
        return TaskStatus(self.success, self.success or time >= self.time_limit, {
            'task': 'reach_around', 'side': self.side, 'obstacle_contact': self.obstacle_contact,
            'min_distance': self.min_distance, 'time': time})


class PickPlaceMonitor:
    def __init__(self, model: mujoco.MjModel, layout: PickPlaceLayout, time_limit: float) -> None:
        self.layout = layout
        self.time_limit = time_limit
        joint = model.joint(CUBE)
        self.cube_qpos = int(joint.qposadr[0])
        self.cube_qvel = int(joint.dofadr[0])
        self.cube_geom = model.geom(CUBE).id
        self.finger_geoms = _body_geoms(model, FINGER_BODIES)
        self.zone_id = model.body(ZONE).id
        self.success = False
        self.max_cube_height = 0.0

    def cube_position(self, data: mujoco.MjData) -> np.ndarray:
        return data.qpos[self.cube_qpos:self.cube_qpos + 3]

    def _gripper_touches_cube(self, data: mujoco.MjData) -> bool:
        if not data.ncon:
            return False
        pairs = data.contact.geom[:data.ncon]
        with_cube = (pairs == self.cube_geom).any(axis=1)
        return bool(np.isin(pairs[with_cube], self.finger_geoms).any())

    def update(self, data: mujoco.MjData) -> None:
        cube = self.cube_position(data)
        self.max_cube_height = max(self.max_cube_height, float(cube[2]) - CUBE_SIZE / 2)
        if self.success:
            return
        in_zone = bool(np.all(np.abs(cube[:2] - self.layout.zone_center) < ZONE_SIZE / 2))
        if (in_zone and cube[2] < CUBE_SIZE / 2 + 0.005
                and np.linalg.norm(data.qvel[self.cube_qvel:self.cube_qvel + 3]) < REST_SPEED
                and not self._gripper_touches_cube(data)):
            self.success = True

    def status(self, data: mujoco.MjData, time: float) -> TaskStatus:
        return TaskStatus(self.success, self.success or time >= self.time_limit, {
            'task': 'pick_place', 'cube_position': self.cube_position(data).copy(),
            'max_cube_height': self.max_cube_height, 'time': time})


Monitor = ReachAroundMonitor | PickPlaceMonitor


def apply_layout(model: mujoco.MjModel, data: mujoco.MjData, layout: Layout) -> None:
    """Move the task's objects to ``layout`` (static bodies via the model, the cube via its joint)."""
    if isinstance(layout, ReachAroundLayout):
        model.body(OBSTACLE).pos[:] = layout.obstacle_center
        model.body(TARGET).pos[:] = layout.target
    else:
        model.body(ZONE).pos[:2] = layout.zone_center
        adr = model.joint(CUBE).qposadr[0]
        half = layout.cube_yaw / 2
        data.qpos[adr:adr + 7] = [*layout.cube_position, np.cos(half), 0.0, 0.0, np.sin(half)]


def make_monitor(model: mujoco.MjModel, layout: Layout, time_limit: float) -> Monitor:
    if isinstance(layout, ReachAroundLayout):
        return ReachAroundMonitor(model, layout, time_limit)
    return PickPlaceMonitor(model, layout, time_limit)

"""`SimArm`: the simulated Panda as a robot driver sees it, with no ROS in it.

It takes time-stamped joint trajectories (the semantics of ros2_control's
joint_trajectory_controller), reports joint states in `PANDA_JOINTS` order and renders RGB frames,
so the sim ROS node, the evaluator and the scripted experts all drive it the same way a policy
drives a real arm. Physics is deterministic: the same task and seed give bit-identical runs.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..robot_description import PANDA_HOME, PANDA_JOINTS
from .kinematics import ArmIK, tcp_down_rotation
from .model import (ALL_TASKS, ARM_KP, ARM_KV, GRIPPER_KP, GRIPPER_KV, MOVING_OBSTACLE, OBSTACLE, OBSTACLE_SIZE,
                    TABLE_CENTER, TABLE_SIZE, TCP_BODY, base_task, build_model, mujoco)
from .tasks import (EPISODE_SECONDS, Layout, MovingObstacle, MovingObstacleMonitor, ReachAroundLayout, TaskStatus,
                    apply_layout, make_monitor, sample_layout, sample_moving_obstacle)

__all__ = ['SimConfig', 'SimArm', 'TaskStatus', 'SceneObject']


@dataclass
class SimConfig:
    task: str = 'pick_place'
    seed: int = 0
    physics_hz: float = 500.0
    camera_width: int = 96
    camera_height: int = 96
    wrist_camera: bool = False
    joint_state_hz: float = 100.0  # how often drivers (recorder, ROS node) should sample joint_state()
    camera_hz: float = 10.0
    control_hz: float = 10.0  # the rate experts and policies send trajectories at
    episode_seconds: float | None = None  # None: the task's default limit

    def __post_init__(self) -> None:
        if self.task not in ALL_TASKS:
            raise ValueError(f'SimConfig.task: unknown task {self.task!r}; expected one of {ALL_TASKS}')
        if self.physics_hz < 200:
            raise ValueError(f'SimConfig.physics_hz must be >= 200, got {self.physics_hz}')
        if self.joint_state_hz < 50:
            raise ValueError(f'SimConfig.joint_state_hz must be >= 50, got {self.joint_state_hz}')
        if self.camera_width < 8 or self.camera_height < 8:
            raise ValueError(f'SimConfig camera size too small: {self.camera_width}x{self.camera_height}')
        for name in ('camera_hz', 'control_hz'):
            if getattr(self, name) <= 0:
                raise ValueError(f'SimConfig.{name} must be > 0, got {getattr(self, name)}')

    @property
    def time_limit(self) -> float:
        return self.episode_seconds if self.episode_seconds is not None else EPISODE_SECONDS[self.task]


@dataclass(frozen=True)
class SceneObject:
    """A static collision box in the world frame (== panda_link0, the robot base).

    Same fields as `collision.scene.SceneObject` (shape_msgs/SolidPrimitive conventions):
    ``size`` holds full edge lengths; ``pose`` is (x, y, z, qx, qy, qz, qw), the geometry_msgs/Pose
    order. panda_link0 rests on the table, so a guard must allow that one pair. The pick_place
    cube is not listed: it is meant to be touched.
    """
    name: str
    shape: str
    size: tuple[float, float, float]
    pose: tuple[float, float, float, float, float, float, float]

    def to_dict(self) -> dict[str, object]:
        """The {shape, size, pose} mapping a collision-guard params file / SceneObject.from_dict takes."""
        return {'shape': self.shape, 'size': list(self.size), 'pose': list(self.pose)}

    def transform(self) -> np.ndarray:
        """4x4 homogeneous transform of the box centre."""
        x, y, z, qx, qy, qz, qw = self.pose
        rotation = np.zeros(9)
        mujoco.mju_quat2Mat(rotation, np.array([qw, qx, qy, qz]))
        out = np.eye(4)
        out[:3, :3] = rotation.reshape(3, 3)
        out[:3, 3] = (x, y, z)
        return out


class _Trajectory:
    """Piecewise-linear setpoints through knots (times (K+1,), positions (K+1, 8)); holds the ends."""

    def __init__(self, times: np.ndarray, positions: np.ndarray) -> None:
        self.times = times
        self.positions = positions
        self.velocities = np.diff(positions, axis=0) / np.diff(times)[:, None]
        self._zero = np.zeros(positions.shape[1])

    def setpoint(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        if t <= self.times[0]:
            return self.positions[0], self._zero
        if t >= self.times[-1]:
            return self.positions[-1], self._zero
        k = int(np.searchsorted(self.times, t, side='right')) - 1
        alpha = (t - self.times[k]) / (self.times[k + 1] - self.times[k])
        return self.positions[k] + alpha * (self.positions[k + 1] - self.positions[k]), self.velocities[k]


class SimArm:
    """The Panda on its table, one task at a time (built reset to the config's task and seed).

    Not thread-safe: a ROS node that steps it from a timer and commands it from a subscription
    must serialise the calls (one lock or a single-threaded executor).
    """

    joint_names: tuple[str, ...] = PANDA_JOINTS

    def __init__(self, cfg: SimConfig | None = None) -> None:
        self.cfg = cfg or SimConfig()
        self._task = ''
        self._renderer: mujoco.Renderer | None = None
        self._mover: MovingObstacle | None = None
        self._mover_mocap = -1
        self.reset()

    # ----------------------------------------------------------------- episode
    @property
    def task(self) -> str:
        return self._task

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def layout(self) -> Layout:
        """The randomised scene of this episode (privileged: experts use it, policies must not)."""
        return self._layout

    def reset(self, task: str | None = None, seed: int | None = None) -> None:
        """Start an episode of ``task`` (default: the config's) laid out by ``seed`` (default: the config's)."""
        task = self.cfg.task if task is None else task
        if task not in ALL_TASKS:
            raise ValueError(f'SimArm.reset: unknown task {task!r}; expected one of {ALL_TASKS}')
        if task != self._task:
            self._load(task)
        self._seed = self.cfg.seed if seed is None else int(seed)
        self._layout = sample_layout(task, self._seed)
        mujoco.mj_resetData(self.model, self.data)
        apply_layout(self.model, self.data, self._layout)
        start = self._start_configuration(self._layout)
        self.data.qpos[self._qpos_adr] = start
        self.data.qpos[self._mimic_qpos] = start[-1]
        self.data.ctrl[:] = start
        mujoco.mj_forward(self.model, self.data)
        self._steps = 0
        self._trajectory = _Trajectory(np.array([0.0, 1.0]), np.stack([start, start]))
        self._mover = sample_moving_obstacle(task, self._seed)
        self._monitor = make_monitor(self.model, self._layout, self.cfg.time_limit)
        if self._mover is not None:
            self._mover_mocap = int(self.model.body(MOVING_OBSTACLE).mocapid[0])
            self.data.mocap_pos[self._mover_mocap] = self._mover.position(0.0)
            mujoco.mj_forward(self.model, self.data)
            self._monitor = MovingObstacleMonitor(self.model, self._monitor)
        self._monitor.update(self.data)

    def _load(self, task: str) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.model = build_model(task, wrist_camera=self.cfg.wrist_camera, physics_hz=self.cfg.physics_hz)
        self.data = mujoco.MjData(self.model)
        self._task = task
        self._qpos_adr = np.array([self.model.joint(n).qposadr[0] for n in PANDA_JOINTS])
        self._dof_adr = np.array([self.model.joint(n).dofadr[0] for n in PANDA_JOINTS])
        self._mimic_qpos = self.model.joint('panda_finger_joint2').qposadr[0]
        self._actuator_ids = np.array([self.model.actuator(f'servo_{n}').id for n in PANDA_JOINTS])
        # ctrl = q* + (kv/kp) v* turns the affine servo into PD with velocity feed-forward (see model.py).
        self._feedforward = np.array([kv / kp for kp, kv in zip(ARM_KP, ARM_KV)] + [GRIPPER_KV / GRIPPER_KP])
        self._lower = np.array([self.model.joint(n).range[0] for n in PANDA_JOINTS])
        self._upper = np.array([self.model.joint(n).range[1] for n in PANDA_JOINTS])
        self.ik = ArmIK(self.model)
        self._tcp_id = self.model.body(TCP_BODY).id
        self._camera_names = tuple(self.model.camera(i).name for i in range(self.model.ncam))

    def _start_configuration(self, layout: Layout) -> np.ndarray:
        home = np.array(PANDA_HOME)
        if isinstance(layout, ReachAroundLayout):
            result = self.ik.solve(home[:7], layout.start_tcp, tcp_down_rotation(layout.start_yaw), iterations=300)
            if not result.converged:
                raise RuntimeError(f'reach_around seed {self._seed}: no IK solution for the start pose '
                                   f'(error {result.position_error:.4f} m)')
            return np.append(result.q, home[7])
        return np.append(np.clip(home[:7] + layout.start_noise, self._lower[:7], self._upper[:7]), home[7])

    # ----------------------------------------------------------------- time and control
    @property
    def sim_time(self) -> float:
        """Seconds since reset (an integer count of physics steps, so it never drifts)."""
        return self._steps * self.model.opt.timestep

    @property
    def timestep(self) -> float:
        return float(self.model.opt.timestep)

    def step_until(self, t: float) -> None:
        """Advance physics to the first step boundary at or after ``t`` seconds of sim time."""
        target = int(np.ceil(t / self.model.opt.timestep - 1e-6))
        data, model, ctrl = self.data, self.model, self.data.ctrl
        while self._steps < target:
            q, v = self._trajectory.setpoint(self.sim_time)
            ctrl[self._actuator_ids] = q + self._feedforward * v
            if self._mover is not None:  # where it is at the end of this step
                data.mocap_pos[self._mover_mocap] = self._mover.position((self._steps + 1) * model.opt.timestep)
            mujoco.mj_step(model, data)
            self._steps += 1
            self._monitor.update(data)

    def command_trajectory(self, joint_names: Sequence[str], points: np.ndarray, dt: float | None = None,
                           start_time: float | None = None, *,
                           time_from_start: Sequence[float] | None = None) -> None:
        """Replace the active trajectory, like a joint_trajectory_controller does.

        Point k is due at ``start_time + (k + 1) * dt`` (or ``start_time + time_from_start[k]``);
        the setpoint holds where it is now until ``start_time`` (default: now), moves linearly
        through the points and holds the last one. Points already due when a past-stamped command
        arrives are skipped. ``joint_names`` must name every joint of `PANDA_JOINTS` exactly once,
        in any order; targets are clipped to the joint limits.
        """
        names = list(joint_names)
        unknown = [n for n in names if n not in PANDA_JOINTS]
        missing = [n for n in PANDA_JOINTS if n not in names]
        if unknown or missing or len(names) != len(set(names)):
            duplicated = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f'command_trajectory: unknown joints {unknown}, missing joints {missing}, '
                             f'duplicated joints {duplicated}; expected {list(PANDA_JOINTS)}')
        points = np.asarray(points, dtype=float)
        if points.ndim == 1:
            points = points[None]
        if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] != len(names):
            raise ValueError(f'command_trajectory: points must be (K>=1, {len(names)}), got {points.shape}')
        if not np.all(np.isfinite(points)):
            raise ValueError('command_trajectory: points contain NaN or inf')
        if time_from_start is not None:
            offsets = np.asarray(time_from_start, dtype=float)
            if offsets.shape != (points.shape[0],) or offsets[0] <= 0 or np.any(np.diff(offsets) <= 0):
                raise ValueError(f'command_trajectory: time_from_start must be {points.shape[0]} strictly '
                                 f'increasing positive values, got {offsets.tolist()}')
        elif dt is None or not dt > 0:
            raise ValueError(f'command_trajectory: dt must be > 0, got {dt}')
        else:
            offsets = dt * np.arange(1, points.shape[0] + 1)
        order = [names.index(n) for n in PANDA_JOINTS]
        targets = np.clip(points[:, order], self._lower, self._upper)
        now = self.sim_time
        start = now if start_time is None else float(start_time)
        anchor, _ = self._trajectory.setpoint(now)  # continuous setpoint: no jump at the switch
        times = start + offsets
        if start < now:
            # A trajectory stamped in the past (e.g. at the observation time of a policy): points
            # already due are dropped and the setpoint heads for the next one that is not.
            future = times > now
            if not future.any():
                future[-1] = True
                times = times.copy()
                times[-1] = now + self.timestep
            times, targets, start = times[future], targets[future], now
        self._trajectory = _Trajectory(np.concatenate([[start], times]), np.vstack([anchor, targets]))

    def setpoint(self, t: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Commanded (positions, velocities) at sim time ``t`` (default: now), `PANDA_JOINTS` order."""
        q, v = self._trajectory.setpoint(self.sim_time if t is None else t)
        return q.copy(), v.copy()

    def hold(self) -> None:
        """Stop where the setpoint is now (what a controller does on cancel or stale commands)."""
        q, _ = self._trajectory.setpoint(self.sim_time)
        self._trajectory = _Trajectory(np.array([self.sim_time, self.sim_time + 1.0]), np.stack([q, q]))

    # ----------------------------------------------------------------- observation
    def joint_state(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
        """(names, positions, velocities) in `PANDA_JOINTS` order (gripper: one finger's opening, m)."""
        return PANDA_JOINTS, self.data.qpos[self._qpos_adr].copy(), self.data.qvel[self._dof_adr].copy()

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and rotation (3, 3) in the world frame."""
        return self.data.xpos[self._tcp_id].copy(), self.data.xmat[self._tcp_id].reshape(3, 3).copy()

    @property
    def cameras(self) -> tuple[str, ...]:
        return self._camera_names

    def render(self, camera: str = 'scene') -> np.ndarray:
        """An (H, W, 3) uint8 RGB frame of ``camera`` (offscreen; no shadows or reflections)."""
        if camera not in self._camera_names:
            raise ValueError(f'render: unknown camera {camera!r}; this sim has {list(self._camera_names)}'
                             + ('' if self.cfg.wrist_camera else ' (set SimConfig.wrist_camera for "wrist")'))
        if self._renderer is None:
            try:
                self._renderer = mujoco.Renderer(self.model, self.cfg.camera_height, self.cfg.camera_width)
            except Exception as exc:  # noqa: BLE001 - mujoco raises FatalError/ImportError/RuntimeError
                raise RuntimeError(
                    f'render: no offscreen OpenGL context ({exc}). MuJoCo picks its backend when it is first '
                    f'imported: export MUJOCO_GL=egl (or osmesa), or import diffusion_policy_ros.sim before '
                    f'mujoco (MUJOCO_GL is {os.environ.get("MUJOCO_GL")!r} now)') from exc
            flags = self._renderer.scene.flags
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX, mujoco.mjtRndFlag.mjRND_HAZE):
                flags[flag] = False
        self._renderer.update_scene(self.data, camera)
        return self._renderer.render()

    def task_status(self) -> TaskStatus:
        return self._monitor.status(self.data, self.sim_time)

    def scene_objects(self) -> list[SceneObject]:
        """The static boxes a collision checker should avoid (world frame), for this episode's layout."""
        identity = (0.0, 0.0, 0.0, 1.0)
        objects = [SceneObject('table', 'box', tuple(TABLE_SIZE), (*TABLE_CENTER, *identity))]
        if base_task(self._task) == 'reach_around':
            center = self.model.body(OBSTACLE).pos
            objects.append(SceneObject(OBSTACLE, 'box', tuple(OBSTACLE_SIZE),
                                       (float(center[0]), float(center[1]), float(center[2]), *identity)))
        if self._mover is not None:
            center = self.data.mocap_pos[self._mover_mocap]
            objects.append(SceneObject(MOVING_OBSTACLE, 'box', tuple(self._mover.size),
                                       (float(center[0]), float(center[1]), float(center[2]), *identity)))
        return objects

    @property
    def moving_obstacle(self) -> MovingObstacle | None:
        """This episode's moving obstacle (privileged, like the layout), or None in a static task."""
        return self._mover

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> SimArm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


"""One closed-loop episode: sample observations and send commands on a fixed sim-time schedule.

The expert recorder and the evaluator share this loop, so demonstrations and policy rollouts see
observations and commands at the same instants. Times are integer nanoseconds of sim time: the
stamps written to bags are exact, and every stream keeps its rate with no float drift.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..robot_description import PANDA_JOINTS
from .arm import SimArm
from .tasks import TaskStatus

# act(t) -> points (K, 8) in PANDA_JOINTS order, due one control period apart from t + dt; None: no command.
Act = Callable[[float], 'np.ndarray | None']
OnJointState = Callable[[int, tuple[str, ...], np.ndarray, np.ndarray], None]
OnImage = Callable[[int, str, np.ndarray], None]
OnCommand = Callable[[int, tuple[str, ...], np.ndarray, float], None]


@dataclass(frozen=True)
class RolloutResult:
    status: TaskStatus
    duration: float  # sim seconds
    commands: int
    images: int
    joint_states: int


def _period_ns(hz: float) -> int:
    return int(round(1e9 / hz))


def rollout(arm: SimArm, act: Act, *, on_joint_state: OnJointState | None = None,
            on_image: OnImage | None = None, on_command: OnCommand | None = None,
            cameras: tuple[str, ...] = ('scene',), max_seconds: float | None = None) -> RolloutResult:
    """Run from the current (just reset) state until the task is done or ``max_seconds`` pass.

    At equal times observations come first (joint state, then images) and the command last, so a
    controller acting at t has seen the observations stamped t. Images are rendered only when
    ``on_image`` is given.
    """
    cfg = arm.cfg
    periods = {'joint_state': _period_ns(cfg.joint_state_hz), 'image': _period_ns(cfg.camera_hz),
               'command': _period_ns(cfg.control_hz)}
    if on_image is None:
        periods.pop('image')
    order = ('joint_state', 'image', 'command')
    start_ns = int(round(arm.sim_time * 1e9))
    next_due = {name: start_ns for name in periods}
    dt = 1.0 / cfg.control_hz
    limit = cfg.time_limit if max_seconds is None else max_seconds
    limit_ns = int(round(limit * 1e9))
    counts = {'joint_state': 0, 'image': 0, 'command': 0}
    while True:
        now_ns = min(next_due.values())
        t = now_ns / 1e9
        arm.step_until(t)
        for name in order:
            if next_due.get(name) != now_ns:
                continue
            next_due[name] += periods[name]
            counts[name] += 1
            if name == 'joint_state':
                names, position, velocity = arm.joint_state()
                if on_joint_state is not None:
                    on_joint_state(now_ns, names, position, velocity)
            elif name == 'image':
                for camera in cameras:
                    on_image(now_ns, camera, arm.render(camera))
            else:
                status = arm.task_status()
                if status.done or now_ns - start_ns >= limit_ns:
                    counts['command'] -= 1
                    return RolloutResult(status, (now_ns - start_ns) / 1e9, counts['command'],
                                         counts['image'], counts['joint_state'])
                points = act(t)
                if points is not None:
                    points = np.atleast_2d(points)
                    arm.command_trajectory(PANDA_JOINTS, points, dt, start_time=t)
                    if on_command is not None:
                        on_command(now_ns, PANDA_JOINTS, points, dt)

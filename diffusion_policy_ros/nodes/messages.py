"""Message <-> numpy conversion for the ROS nodes: the one place that knows message layouts.

Images go through `diffusion_policy_ros.data.image_codec` (shared with dataset conversion, so training
and deployment decode identically); this module adds the joint-space messages and time stamps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from diffusion_policy_ros.data.image_codec import encode_rgb8
from diffusion_policy_ros.diagnostics import NodeStatus


class MessageError(ValueError):
    """A message that cannot be used; the text says which field is wrong."""


def stamp_to_seconds(stamp: Time) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_to_stamp(t: float) -> Time:
    sec = int(np.floor(t))
    nanosec = int(round((t - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return Time(sec=sec, nanosec=nanosec)


def seconds_to_duration(t: float) -> Duration:
    stamp = seconds_to_stamp(t)
    return Duration(sec=stamp.sec, nanosec=stamp.nanosec)


def duration_to_seconds(d: Duration) -> float:
    return float(d.sec) + float(d.nanosec) * 1e-9


@dataclass
class JointStateSample:
    names: tuple[str, ...]
    positions: np.ndarray  # (J,) float64, in the order of `names`
    velocities: np.ndarray | None


def joint_state_to_sample(msg: JointState) -> JointStateSample:
    """Unpack a JointState; a position array whose length differs from `name` is malformed."""
    names = tuple(msg.name)
    positions = np.asarray(msg.position, dtype=np.float64)
    if len(names) != positions.shape[0]:
        raise MessageError(f'JointState has {len(names)} names but {positions.shape[0]} positions')
    velocities = np.asarray(msg.velocity, dtype=np.float64) if len(msg.velocity) == len(names) else None
    return JointStateSample(names, positions, velocities)


def make_joint_state(names: Sequence[str], positions: np.ndarray, velocities: np.ndarray | None,
                     stamp: Time) -> JointState:
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = [float(x) for x in positions]
    if velocities is not None:
        msg.velocity = [float(x) for x in velocities]
    return msg


def make_joint_trajectory(names: Sequence[str], points: np.ndarray, dt: float, stamp: Time,
                          first_time_from_start: float | None = None) -> JointTrajectory:
    """Points (K, J) `dt` apart; the first is due `first_time_from_start` (default dt) after stamp."""
    points = np.asarray(points, dtype=np.float64)
    msg = JointTrajectory()
    msg.header.stamp = stamp
    msg.joint_names = list(names)
    first = dt if first_time_from_start is None else first_time_from_start
    for k, row in enumerate(points):
        point = JointTrajectoryPoint()
        point.positions = [float(x) for x in row]
        point.time_from_start = seconds_to_duration(first + k * dt)
        msg.points.append(point)
    return msg


@dataclass
class TrajectorySample:
    names: tuple[str, ...]
    points: np.ndarray  # (K, J)
    times_from_start: np.ndarray  # (K,) seconds
    stamp: float  # header stamp, seconds (0 means "now" in ROS)


def trajectory_to_sample(msg: JointTrajectory) -> TrajectorySample:
    """Unpack a JointTrajectory, rejecting what a controller could not execute."""
    names = tuple(msg.joint_names)
    if not names:
        raise MessageError('JointTrajectory has no joint_names')
    if len(set(names)) != len(names):
        raise MessageError(f'JointTrajectory repeats joint names: {list(names)}')
    if not msg.points:
        raise MessageError('JointTrajectory has no points')
    rows = []
    for k, point in enumerate(msg.points):
        if len(point.positions) != len(names):
            raise MessageError(f'JointTrajectory point {k} has {len(point.positions)} positions '
                               f'for {len(names)} joints')
        rows.append(point.positions)
    points = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(points)):
        bad = sorted({names[j] for j in np.argwhere(~np.isfinite(points))[:, 1]})
        raise MessageError(f'JointTrajectory has non-finite positions for {bad}')
    times = np.array([duration_to_seconds(p.time_from_start) for p in msg.points])
    if np.any(np.diff(times) <= 0):
        raise MessageError(f'JointTrajectory time_from_start is not strictly increasing: {times.round(3).tolist()}')
    return TrajectorySample(names, points, times, stamp_to_seconds(msg.header.stamp))


def make_image(rgb: np.ndarray, stamp: Time, frame_id: str = 'camera') -> Image:
    fields = encode_rgb8(rgb)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height = fields['height']
    msg.width = fields['width']
    msg.encoding = fields['encoding']
    msg.is_bigendian = fields['is_bigendian']
    msg.step = fields['step']
    msg.data = fields['data']
    return msg


def diagnostic_status(name: str, hardware_id: str, status: NodeStatus, level: bytes, message: str) -> DiagnosticStatus:
    """A node's typed status as a DiagnosticStatus (`diagnostics` encodes the key/values); `level` is
    one of DiagnosticStatus.OK / WARN / ERROR / STALE."""
    return DiagnosticStatus(name=name, hardware_id=hardware_id, level=level, message=message,
                            values=[KeyValue(key=k, value=v) for k, v in status.to_values().items()])

"""Message <-> numpy conversion for the ROS nodes: the one place that knows message layouts.

Images go through `diffusion_policy_ros.data.image_codec` (shared with dataset conversion, so training
and deployment decode identically); this module adds the joint-space messages and time stamps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import Marker, MarkerArray

from diffusion_policy_ros.data.image_codec import encode_rgb8
from diffusion_policy_ros.diagnostics import NodeStatus
from diffusion_policy_ros.robot_description import PANDA_JOINTS

if TYPE_CHECKING:  # (the guard's types pull in pinocchio: only the guard needs them at run time)
    from diffusion_policy_ros.collision.guard import TrajectoryChunk


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


def chunk_to_message(chunk: TrajectoryChunk, stamp: Any) -> JointTrajectory:
    """A guard trajectory (arbitrary times from the stamp) as a JointTrajectory."""
    msg = JointTrajectory()
    msg.header.stamp = stamp
    msg.joint_names = list(chunk.joint_names)
    for row, t in zip(np.asarray(chunk.positions, dtype=float), np.asarray(chunk.time_from_start, dtype=float)):
        msg.points.append(JointTrajectoryPoint(positions=[float(x) for x in row],
                                               time_from_start=seconds_to_duration(float(t))))
    return msg


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


_SCENE_COLORS = {'table': (0.62, 0.5, 0.38, 1.0)}
_DEFAULT_COLOR = (0.8, 0.2, 0.15, 1.0)
SCENE_MARKER_NS = 'sim_scene'  # the sim's scene markers (a DELETEALL of it leaves other publishers' markers)


def scene_markers(objects: list[Any], frame_id: str, stamp: Any) -> MarkerArray:
    """Markers of scene objects (shape_msgs/SolidPrimitive sizes: box (x, y, z) full edges, sphere
    (radius,), cylinder (height, radius)); a DELETEALL of namespace SCENE_MARKER_NS first, so every array
    replaces the sim's scene and leaves markers other publishers added (another ns) in place.

    Each marker carries the object's name in `text`; poses are (x, y, z, qx, qy, qz, qw).
    """
    clear = Marker(ns=SCENE_MARKER_NS, action=Marker.DELETEALL)
    clear.header.frame_id = frame_id
    clear.header.stamp = stamp
    markers = [clear]
    for index, obj in enumerate(objects):
        marker = Marker(ns=SCENE_MARKER_NS, id=index, action=Marker.ADD, text=obj.name)
        marker.header.frame_id = frame_id
        marker.header.stamp = stamp
        size = [float(v) for v in obj.size]
        if obj.shape == 'box':
            marker.type = Marker.CUBE
            marker.scale.x, marker.scale.y, marker.scale.z = size[:3]
        elif obj.shape == 'sphere':
            marker.type = Marker.SPHERE
            marker.scale.x = marker.scale.y = marker.scale.z = 2.0 * size[0]
        elif obj.shape == 'cylinder':
            marker.type = Marker.CYLINDER
            height, radius = size[:2]
            marker.scale.x = marker.scale.y = 2.0 * radius
            marker.scale.z = height
        else:
            raise ValueError(f'scene object {obj.name!r}: shape {obj.shape!r} has no marker type '
                             f'(expected box, sphere or cylinder)')
        x, y, z, qx, qy, qz, qw = (float(v) for v in obj.pose)
        marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = x, y, z
        o = marker.pose.orientation
        o.x, o.y, o.z, o.w = qx, qy, qz, qw
        c = marker.color
        c.r, c.g, c.b, c.a = _SCENE_COLORS.get(obj.name, _DEFAULT_COLOR)
        markers.append(marker)
    return MarkerArray(markers=markers)


@dataclass
class ParsedCommand:
    """A trajectory ready for the simulated arm (`sim.paced.PacedSim.command`): every PANDA_JOINT, in that order."""
    points: np.ndarray  # (K, len(PANDA_JOINTS))
    time_from_start: np.ndarray  # (K,) seconds, strictly increasing, > 0
    stamp: float  # header stamp, seconds of sim time; 0 = start now


def parse_command(msg: JointTrajectory, current_setpoint: np.ndarray, allow_partial: bool,
                  min_first_time: float) -> ParsedCommand:
    """Check a JointTrajectory the way a joint_trajectory_controller does; raise MessageError saying why.

    Joints are matched by name; left-out joints hold `current_setpoint` when `allow_partial`. A first
    point due at time 0 (allowed by the controller: "jump there") is moved to `min_first_time`, one
    physics step, since the sim interpolates from the current setpoint.
    """
    sample = trajectory_to_sample(msg)  # empty, NaN, ragged, repeated names, non-increasing times
    unknown = [n for n in sample.names if n not in PANDA_JOINTS]
    if unknown:
        raise MessageError(f'JointTrajectory names unknown joints {unknown}; this robot has {list(PANDA_JOINTS)}')
    missing = [n for n in PANDA_JOINTS if n not in sample.names]
    if missing and not allow_partial:
        raise MessageError(f'JointTrajectory leaves out joints {missing} (allow_partial_joints_goal is false)')
    times = sample.times_from_start.copy()
    if times[0] < 0:
        raise MessageError(f'JointTrajectory point 0 has a negative time_from_start {times[0]:.4f} s')
    if times[0] == 0:
        times[0] = min(min_first_time, times[1] / 2) if len(times) > 1 else min_first_time
    points = np.tile(np.asarray(current_setpoint, dtype=np.float64), (len(times), 1))
    for column, name in enumerate(sample.names):
        points[:, PANDA_JOINTS.index(name)] = sample.points[:, column]
    return ParsedCommand(points, times, sample.stamp)

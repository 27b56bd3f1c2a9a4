"""Joint position and velocity limits, and the clamp applied to every published trajectory.

The policy knows nothing about the robot's limits; this is the last line of defence in the policy
node (the collision guard downstream is the other one).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class JointLimits:
    """Per-joint limits in one fixed joint order (the model's). Continuous joints have +-inf bounds."""

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray  # per second, > 0

    def __post_init__(self) -> None:
        names = tuple(self.names)
        if len(set(names)) != len(names):
            raise ValueError(f'JointLimits has duplicate joint names: {names}')
        arrays = {}
        for field in ('lower', 'upper', 'max_velocity'):
            arr = np.asarray(getattr(self, field), dtype=np.float64).reshape(-1)
            if arr.shape != (len(names),):
                raise ValueError(f'JointLimits.{field} has {arr.size} values for {len(names)} joints')
            arr.setflags(write=False)
            arrays[field] = arr
        for i, name in enumerate(names):
            lo, hi, vel = arrays['lower'][i], arrays['upper'][i], arrays['max_velocity'][i]
            if math.isnan(lo) or math.isnan(hi) or not lo <= hi:
                raise ValueError(f'joint {name!r}: lower {lo} must be <= upper {hi}')
            if math.isnan(vel) or not vel > 0:
                raise ValueError(f'joint {name!r}: max_velocity must be > 0, got {vel}')
        object.__setattr__(self, 'names', names)
        for field, arr in arrays.items():
            object.__setattr__(self, field, arr)

    @classmethod
    def from_params(cls, params: Mapping[str, Sequence[float] | Sequence[str]]) -> JointLimits:
        """From parallel lists, the shape ROS parameters allow:
        {'joint_names': [...], 'lower': [...], 'upper': [...], 'max_velocity': [...]}."""
        missing = [k for k in ('joint_names', 'lower', 'upper', 'max_velocity') if k not in params]
        if missing:
            raise KeyError(f'joint limit parameters lack {missing} (have {sorted(params)})')
        return cls(names=tuple(params['joint_names']), lower=params['lower'], upper=params['upper'],
                   max_velocity=params['max_velocity'])

    @classmethod
    def from_urdf(cls, urdf: str, joint_names: Sequence[str] | None = None) -> JointLimits:
        """From a URDF string's `<limit>` tags; `joint_names` picks and orders joints (default: every
        revolute, prismatic and continuous joint in file order)."""
        try:
            root = ET.fromstring(urdf)
        except ET.ParseError as exc:
            raise ValueError(f'robot_description is not valid XML: {exc}') from exc
        joints = {j.get('name'): j for j in root.iter('joint')}
        movable = [n for n, j in joints.items() if j.get('type') in ('revolute', 'prismatic', 'continuous')]
        names = tuple(joint_names) if joint_names is not None else tuple(movable)
        unknown = [n for n in names if n not in joints]
        if unknown:
            raise KeyError(f'joints {unknown} are not in the URDF (it has {movable})')
        lower, upper, velocity = [], [], []
        for name in names:
            joint = joints[name]
            kind = joint.get('type')
            if kind not in ('revolute', 'prismatic', 'continuous'):
                raise ValueError(f'URDF joint {name!r} has type {kind!r}, which cannot be commanded')
            limit = joint.find('limit')
            if limit is None or limit.get('velocity') is None:
                raise ValueError(f'URDF joint {name!r} has no <limit velocity=...>')
            if kind == 'continuous':
                lo, hi = -math.inf, math.inf
            else:
                # URDF defaults lower/upper to 0 when absent; a real robot always sets them.
                lo, hi = float(limit.get('lower', 0.0)), float(limit.get('upper', 0.0))
            lower.append(lo)
            upper.append(hi)
            velocity.append(float(limit.get('velocity')))
        return cls(names=names, lower=np.array(lower), upper=np.array(upper),
                   max_velocity=np.array(velocity))

    def select(self, names: Sequence[str]) -> JointLimits:
        """The limits of `names`, in that order (e.g. the model's joint order)."""
        index = {n: i for i, n in enumerate(self.names)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise KeyError(f'no limits for joints {unknown} (limits cover {list(self.names)})')
        idx = [index[n] for n in names]
        return JointLimits(tuple(names), self.lower[idx], self.upper[idx], self.max_velocity[idx])

    @classmethod
    def for_robot(cls, joint_names: Sequence[str], lower: Sequence[float] = (), upper: Sequence[float] = (),
                  max_velocity: Sequence[float] = (), robot_description: str = '') -> JointLimits:
        """Limits given explicitly, else from a URDF `robot_description`, else the bundled Panda's."""
        if len(lower) or len(upper) or len(max_velocity):
            return cls.from_params({'joint_names': list(joint_names), 'lower': list(lower), 'upper': list(upper),
                                    'max_velocity': list(max_velocity)})
        if robot_description:
            return cls.from_urdf(robot_description, joint_names)
        from diffusion_policy_ros.robot_description import PANDA_JOINTS, panda_description
        if set(joint_names) <= set(PANDA_JOINTS):
            return cls.from_urdf(panda_description().urdf_text(), joint_names)
        raise ValueError('no joint limits: set position_lower/position_upper/max_velocity or robot_description')

    def scaled(self, velocity_scale: float) -> JointLimits:
        """The same limits with velocities scaled, for a safety margin below the robot's maximum."""
        if not 0 < velocity_scale <= 1:
            raise ValueError(f'velocity_scale must be in (0, 1], got {velocity_scale}')
        return JointLimits(self.names, self.lower, self.upper, self.max_velocity * velocity_scale)


def clamp_trajectory(points: np.ndarray, measured: np.ndarray, dt: float,
                     limits: JointLimits) -> np.ndarray:
    """Clamp points (K, J), `dt` seconds apart, to position and velocity limits.

    Sequential from the measured position clamped into the position limits: point 0 is at most
    `max_velocity * dt` from there, each later point at most that far from the point before it, and
    every point lies within the position limits (targets are clamped into them, and each step from a
    point inside towards a target inside stays inside). The nodes only trust a measurement within a
    small tolerance of the limits (control.measurement), so the start moves by at most that tolerance.
    Hand-written: a K x J loop (K <= horizon) is all there is; no library does it in one call.
    """
    points = np.asarray(points, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64).reshape(-1)
    n_joints = len(limits.names)
    if points.ndim != 2 or points.shape[1] != n_joints:
        raise ValueError(f'trajectory points must be (K, {n_joints}) for joints {list(limits.names)}, '
                         f'got {points.shape}')
    if measured.shape != (n_joints,):
        raise ValueError(f'measured position has {measured.size} values for {n_joints} joints')
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f'dt must be > 0 seconds, got {dt}')
    for what, arr in (('measured position', measured[None]), ('trajectory point', points)):
        bad = ~np.isfinite(arr)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f'{what} {row} of joint {limits.names[col]!r} is not finite: {arr[row, col]}')
    max_step = limits.max_velocity * dt
    targets = np.clip(points, limits.lower, limits.upper)
    out = np.empty_like(targets)
    previous = np.clip(measured, limits.lower, limits.upper)
    for k in range(targets.shape[0]):
        previous = previous + np.clip(targets[k] - previous, -max_step, max_step)
        out[k] = previous
    return out

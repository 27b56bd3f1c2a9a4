"""Which joint-state measurements may be trusted: the one place both nodes decide it.

A measurement that fails a rule is rejected whole, with a reason that names the joint, topic and value;
it is never stored, so it can neither become the position a HOLD publishes nor the start a command is
clamped from. The policy node holds while the newest message of a stream is rejected; the collision
guard keeps each joint's last trusted value and refuses chunks once that is too old.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diffusion_policy_ros.control.health import HoldCode, HoldReason
from diffusion_policy_ros.control.limits import JointLimits


@dataclass(frozen=True)
class MeasurementRules:
    """Tolerances of the rules (the defaults of both nodes' parameters)."""

    # rad (m for prismatic joints) a measured position may lie outside the joint limits: encoder noise
    # and a controller's overshoot at a limit; an arm reported further out is a broken measurement.
    limit_tolerance: float = 0.05
    # s a stamp may lie ahead of the receiving node's clock (clock offset between machines); a stamp
    # further ahead would stay "newest" until the clock got there.
    future_tolerance_s: float = 0.2

    def __post_init__(self) -> None:
        for name in ('limit_tolerance', 'future_tolerance_s'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f'{name} must be a finite number >= 0, got {value}')


def check_stamp(stamp: float, now: float, topic: str, rules: MeasurementRules) -> HoldReason | None:
    """A non-finite stamp, or one more than `future_tolerance_s` ahead of `now`, is a fault."""
    if not math.isfinite(stamp):
        return HoldReason(HoldCode.NON_FINITE, f'{topic} has a non-finite stamp {stamp}', topic)
    if stamp - now > rules.future_tolerance_s:
        return HoldReason(HoldCode.FUTURE_STAMP,
                          f'{topic} is stamped {stamp - now:.3f} s in the future (stamp {stamp:.3f}, clock '
                          f'{now:.3f}, future_tolerance_s {rules.future_tolerance_s:g}): clocks disagree '
                          f'(check use_sim_time)', topic)
    return None


def check_joint_state(names: Sequence[str], positions: Sequence[float], stamp: float, now: float,
                      limits: JointLimits, topic: str, rules: MeasurementRules = MeasurementRules(),
                      require_all: bool = True) -> tuple[tuple[str, ...], np.ndarray] | HoldReason:
    """The message's joints that `limits` covers and their positions, or why it cannot be trusted.

    With `require_all` (the policy node: one message is one observation) every joint of `limits` must be
    in the message; without it (the guard: joints may come from several publishers) it may carry a subset.
    Joints the limits do not know (another arm, a gripper's mimic joint) are ignored.
    """
    names = tuple(str(n) for n in names)
    try:
        values = np.asarray(positions, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return HoldReason(HoldCode.MALFORMED, f'{topic}: positions are not numbers', topic)
    if len(names) != values.size:
        return HoldReason(HoldCode.MALFORMED,
                          f'{topic}: {len(names)} joint names but {values.size} positions', topic)
    stamp_fault = check_stamp(stamp, now, topic, rules)
    if stamp_fault is not None:
        return stamp_fault
    index = {name: i for i, name in enumerate(limits.names)}
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if name in seen:
            return HoldReason(HoldCode.DUPLICATE_JOINT,
                              f'{topic} names joint {name!r} twice (positions {values[seen[name]]:.4f} and '
                              f'{values[k]:.4f})', topic)
        seen[name] = k
    known = [name for name in names if name in index]
    if require_all:
        missing = [name for name in limits.names if name not in seen]
        if missing:
            return HoldReason(HoldCode.MISSING_JOINT, f'{topic} lacks joints {missing}', topic)
        known = list(limits.names)
    picked = np.array([values[seen[name]] for name in known], dtype=np.float64)
    for name, value in zip(known, picked):
        if not math.isfinite(value):
            return HoldReason(HoldCode.NON_FINITE, f'{topic}: joint {name!r} has a non-finite position {value}',
                              topic)
        i = index[name]
        low, high = limits.lower[i] - rules.limit_tolerance, limits.upper[i] + rules.limit_tolerance
        if not low <= value <= high:
            return HoldReason(HoldCode.OUT_OF_LIMITS,
                              f'{topic}: joint {name!r} measured at {value:.4f}, outside its limits '
                              f'[{limits.lower[i]:.4f}, {limits.upper[i]:.4f}] by more than limit_tolerance '
                              f'{rules.limit_tolerance:g}', topic)
    return tuple(known), picked


class LatestJointPositions:
    """The guard's view of the arm: each joint's last trusted position, when it arrived and how it was
    stamped, fed from any number of joint-state publishers (the guard may hear an arm and a gripper
    separately). Thread-safe: messages come in on one thread and chunks are checked on others."""

    def __init__(self, limits: JointLimits, rules: MeasurementRules, topic: str, max_age_s: float) -> None:
        if not max_age_s >= 0:
            raise ValueError(f'max_joint_state_age_s must be >= 0, got {max_age_s}')
        self.limits, self.rules, self.topic, self.max_age_s = limits, rules, topic, max_age_s
        self._lock = threading.Lock()
        # joint -> (position, arrival in ns since the epoch, header stamp in clock seconds or 0)
        self._joints: dict[str, tuple[float, int, float]] = {}
        self.rejected = 0
        self.last_problem = ''

    def update(self, names: Sequence[str], positions: Sequence[float], stamp: float, arrived_ns: int,
               now_s: float) -> HoldReason | None:
        """Store a message's joints (None), or count and return why it cannot be trusted (nothing stored).
        `stamp` 0: unstamped (judged by its arrival alone)."""
        checked = check_joint_state(names, positions, stamp or now_s, now_s, self.limits, self.topic, self.rules,
                                    require_all=False)
        with self._lock:
            if isinstance(checked, HoldReason):
                self.rejected += 1
                self.last_problem = str(checked)
                return checked
            for name, position in zip(*checked):
                self._joints[name] = (float(position), arrived_ns, stamp)
        return None

    def latest(self, now_ns: int, now_s: float) -> tuple[dict[str, float], str | None]:
        """Every joint's latest position, and why they cannot be trusted (or None): a joint never heard
        of, or one whose latest state arrived, or is stamped, more than `max_age_s` ago."""
        with self._lock:
            joints = dict(self._joints)
        positions = {name: value[0] for name, value in joints.items()}
        missing = [n for n in self.limits.names if n not in joints]
        if missing:
            return positions, f'no joint state for {missing} on {self.topic} yet'
        limit = self.max_age_s
        if limit > 0:
            for name in self.limits.names:
                _, arrived_ns, stamp = joints[name]
                age = (now_ns - arrived_ns) * 1e-9
                if age > limit:
                    return positions, (f'joint state of {name} on {self.topic} is {age:.2f} s old by its arrival '
                                       f'(max_joint_state_age_s {limit:g})')
                if stamp > 0 and now_s - stamp > limit:
                    return positions, (f'joint state of {name} on {self.topic} is {now_s - stamp:.2f} s old by '
                                       f'its stamp (max_joint_state_age_s {limit:g})')
        return positions, None

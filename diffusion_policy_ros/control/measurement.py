"""Which joint-state measurements may be trusted: the one place both nodes decide it.

A measurement that fails a rule is rejected whole, with a reason that names the joint, topic and value;
it is never stored, so it can neither become the position a HOLD publishes nor the start a command is
clamped from. The policy node holds while the newest message of a stream is rejected; the collision
guard keeps each joint's last trusted value and refuses chunks once that is too old.
"""
from __future__ import annotations

import math
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

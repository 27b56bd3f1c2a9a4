"""What the nodes report on /diagnostics, typed: one dataclass per node, encoded to and decoded from the
string key/values of a diagnostic_msgs/DiagnosticStatus here and only here.

The nodes fill a `PolicyStatus` / `GuardStatus`; replay, the demo, the benchmarks and the tests decode
the same class, so a renamed or retyped value breaks in one place instead of drifting between a
producer and the consumers that spelled its key by hand. The encoding is the one ROS tools show
(`ros2 topic echo /diagnostics`, rqt_robot_monitor): a scalar field is the key of its own name; a
mapping field (`hold_s`, `rejected`, ...) is one key per entry, `"<field> <entry>"`; numbers are
decimal text, `nan` when unknown, and an observation never received is `never`. Decoding ignores keys
it does not know (a newer node) and leaves missing ones at their defaults (an older one).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

S = TypeVar('S', bound='NodeStatus')

NAN = float('nan')
NEVER = 'never'


def _digits(n: int) -> dict[str, int]:
    return {'digits': n}


@dataclass
class NodeStatus:
    """Encoding and decoding shared by every node's status (fields in the subclasses)."""

    def to_values(self) -> dict[str, str]:
        """The key/values of a DiagnosticStatus, in field order."""
        values: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                for entry, item in value.items():
                    values[f'{f.name} {entry}'] = _encode(item, f.metadata.get('digits'))
            else:
                values[f.name] = _encode(value, f.metadata.get('digits'))
        return values

    @classmethod
    def from_values(cls: type[S], values: Mapping[str, str]) -> S:
        """The status a DiagnosticStatus's key/values describe (unknown keys ignored, missing ones default)."""
        hints = _type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if typing.get_origin(hint) is dict:
                item_type = typing.get_args(hint)[1]
                prefix = f.name + ' '
                kwargs[f.name] = {key[len(prefix):]: _decode(text, item_type, key)
                                  for key, text in values.items() if key.startswith(prefix)}
            elif f.name in values:
                kwargs[f.name] = _decode(values[f.name], hint, f.name)
        return cls(**kwargs)


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # (a replay decodes thousands of samples)


def _encode(value: Any, digits: int | None) -> str:
    if value is None:
        return NEVER
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return 'nan' if math.isnan(value) else str(value)
        return f'{value:.{digits}f}' if digits is not None else f'{value:g}'
    return str(value)


def _decode(text: str, hint: Any, key: str) -> Any:
    """`text` as `hint` (str, int, float, bool, or `float | None` with None for `never`)."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) else [hint]
    kind = options[0] if options else str
    if text == NEVER and type(None) in typing.get_args(hint):
        return None
    try:
        if kind is bool:
            return text.strip().lower() == 'true'
        if kind is int:
            return int(float(text))
        if kind is float:
            return float(text)
    except ValueError:
        raise ValueError(f'diagnostic {key!r}: {text!r} is not a {kind.__name__}') from None
    return text


@dataclass
class PolicyStatus(NodeStatus):
    """policy_node's status (`PolicyController.status` fills the control part, the node the rest)."""

    state: str = ''  # RUNNING | HOLD (control.health.ControlState)
    reason: str = ''  # the HOLD's reason, '' while running
    inference_latency_p50_ms: float = field(default=NAN, metadata=_digits(2))
    inference_latency_p99_ms: float = field(default=NAN, metadata=_digits(2))
    inference_count: int = 0
    inference_errors: int = 0
    chunk_age_s: float = field(default=NAN, metadata=_digits(3))
    dropped_actions: int = 0
    chunks_used: int = 0
    chunks_skipped: int = 0
    max_boundary_step: float = field(default=0.0, metadata=_digits(4))
    obs_age_s: dict[str, float | None] = field(default_factory=dict, metadata=_digits(3))  # per stream; None: never
    hold_s: dict[str, float] = field(default_factory=dict, metadata=_digits(1))  # per HoldCode name
    rejected: dict[str, int] = field(default_factory=dict)  # messages rejected, per HoldCode name
    device: str = ''
    published: int = 0
    num_inference_steps: int = 0
    n_action_steps: int = 0
    control_rate_hz: float = NAN
    publish_period_mean_s: float = field(default=NAN, metadata=_digits(4))


@dataclass
class GuardStatus(NodeStatus):
    """collision_guard_node's status."""

    rejected_messages: int = 0
    joint_states_rejected: int = 0
    last_joint_state_problem: str = ''
    markers_ignored: int = 0
    last_marker_problem: str = ''
    scene_updates: int = 0
    last_action: str = 'none'  # none | pass | replace | hold | cut
    last_reason: str = ''
    backend: str = ''
    checks_per_second: float = field(default=0.0, metadata=_digits(2))
    check_latency_p50_ms: float = field(default=NAN, metadata=_digits(3))
    check_latency_p99_ms: float = field(default=NAN, metadata=_digits(3))
    chunks_reviewed: int = 0
    chunks_passed: int = 0
    blocked_chunks: int = 0
    fallbacks_planned: int = 0
    planning_failures: int = 0
    plans_superseded: int = 0
    holds: int = 0
    executing_blocked: int = 0
    evasions: int = 0  # motions out of a moving object's way sent instead of a hold
    planning_time_p50_ms: float = field(default=NAN, metadata=_digits(3))
    planning_time_p99_ms: float = field(default=NAN, metadata=_digits(3))
    last_planning_time_ms: float = field(default=NAN, metadata=_digits(3))
    fallback_active: bool = False
    scene_objects: str = ''  # comma-separated names
    moving_objects: str = ''  # comma-separated "name speed m/s"
    joint_state: str = 'fresh'  # or what is wrong with the newest one
    # from a proposal's (or, for 'scene', a scene update's) arrival to what the guard published about it
    output_latency_free_p50_ms: float = field(default=NAN, metadata=_digits(3))
    output_latency_free_p99_ms: float = field(default=NAN, metadata=_digits(3))
    output_latency_blocked_p50_ms: float = field(default=NAN, metadata=_digits(3))
    output_latency_blocked_p99_ms: float = field(default=NAN, metadata=_digits(3))
    output_latency_scene_p50_ms: float = field(default=NAN, metadata=_digits(3))
    output_latency_scene_p99_ms: float = field(default=NAN, metadata=_digits(3))

    @property
    def healthy(self) -> bool:
        return self.last_action in ('pass', 'none') and self.joint_state == 'fresh'

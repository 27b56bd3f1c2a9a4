"""What the collision guard node did, for /diagnostics and for its log (no rclpy).

The node reports every decision it publishes here (with the latency from what caused it) and every
scene update; `status()` turns that, the guard's own counters and the scene into the typed
`GuardStatus` that /diagnostics carries; `log_line()` says how loudly a decision is logged.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from diffusion_policy_ros.collision.guard import CollisionGuard, GuardCounters, GuardDecision
from diffusion_policy_ros.collision.scene_overlay import MarkerScene
from diffusion_policy_ros.control.measurement import LatestJointPositions
from diffusion_policy_ros.diagnostics import GuardStatus

REPEAT_WARN_S = 60.0  # the same kind of blocked chunk is a WARN at most once in this time
RATE_WINDOW_S = 5.0  # checks_per_second counts the decisions of this window


@dataclass(frozen=True)
class LogLine:
    """How a decision is logged. `kind` decides severity and throttling (the node's business: rclpy fixes
    both per call site): no_position (ERROR), reject, hold, new_contact (WARN), continues, repeated_contact
    (INFO)."""

    kind: str
    text: str


class GuardActivity:
    """Running totals of the node (the guard's own are in `CollisionGuard.counters`). Thread-safe:
    decisions come from the executor, the planning thread and deadline timers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rejected_messages = 0
        self._markers_ignored = 0
        self._scene_updates = 0
        self._last_marker_problem = ''
        self._last_action = 'none'
        self._last_reason = 'no chunk reviewed yet'
        self._decision_times: deque[float] = deque(maxlen=2000)
        # seconds from a proposal's arrival to the publication of what the guard made of it ('scene':
        # from a scene update's arrival to the cut of the executing trajectory it caused)
        self._output_latency: dict[str, deque[float]] = {
            'free': deque(maxlen=1000), 'blocked': deque(maxlen=200), 'scene': deque(maxlen=200)}
        self._warned_at: dict[str, float] = {}  # kind of blocked chunk -> when it was last a WARN

    def scene_update(self, changed: int, ignored: list[str]) -> None:
        with self._lock:
            self._scene_updates += changed
            self._markers_ignored += len(ignored)
            if ignored:
                self._last_marker_problem = ignored[-1]

    def decision(self, decision: GuardDecision, latency_s: float, reaction: str | None = None) -> LogLine | None:
        """Record a published decision; `reaction` files its latency under another name than free/blocked
        (a scene update). Returns how to log it (None: a free chunk, not logged)."""
        now = time.monotonic()
        with self._lock:
            self._last_action, self._last_reason = decision.action, decision.reason
            self._decision_times.append(now)
            kind = reaction or ('free' if decision.action == 'pass' else 'blocked')
            self._output_latency[kind].append(latency_s)
            if decision.action == 'reject':
                self._rejected_messages += 1
            return self._log_line(decision, now)

    def _log_line(self, decision: GuardDecision, now: float) -> LogLine | None:
        if decision.action == 'pass':
            return None
        if decision.trajectory is None:
            return LogLine('no_position', f'{decision.action}: {decision.reason}; no measured position to hold '
                           'at, nothing published')
        if decision.action in ('reject', 'hold'):
            suffix = '; holding position' if decision.action == 'reject' else ''
            return LogLine(decision.action, decision.reason + suffix)
        if 'continues' in decision.reason:
            return LogLine('continues', decision.reason)
        # The same contact again and again (fingers at the table during a grasp) is one WARN a minute;
        # the repeats are INFO, so the log shows a new kind of collision when it comes.
        kind = decision.reason.split(' at ', 1)[0]
        text = (f'{decision.reason} (planned in {1000 * (decision.stats.planning_time_s or 0):.1f} ms, '
                f'{len(decision.trajectory.positions)} points)')
        if now - self._warned_at.get(kind, -math.inf) < REPEAT_WARN_S:
            return LogLine('repeated_contact', text)
        self._warned_at[kind] = now
        return LogLine('new_contact', f'{text}; the same contact is logged at INFO for {REPEAT_WARN_S:.0f} s')

    def status(self, guard: CollisionGuard, scene: MarkerScene, backend: str, joints: LatestJointPositions,
               joint_state_problem: str | None) -> GuardStatus:
        """What /diagnostics carries."""
        counters = guard.counters
        latency = list(counters.check_latency_s)  # copies under the GIL: the planning thread appends
        planning = list(counters.planning_time_s)
        now = time.monotonic()

        def ms(values: list[float], q: float) -> float:
            value = GuardCounters.percentile(values, q)
            return float('nan') if value is None else 1000 * value

        with self._lock:
            recent = sum(1 for t in self._decision_times if now - t <= RATE_WINDOW_S)
            output = {kind: list(samples) for kind, samples in self._output_latency.items()}
            status = GuardStatus(
                rejected_messages=self._rejected_messages, joint_states_rejected=joints.rejected,
                last_joint_state_problem=joints.last_problem, markers_ignored=self._markers_ignored,
                last_marker_problem=self._last_marker_problem, scene_updates=self._scene_updates,
                last_action=self._last_action, last_reason=self._last_reason)
        return dataclasses.replace(
            status, backend=backend, checks_per_second=recent / RATE_WINDOW_S,
            check_latency_p50_ms=ms(latency, 50), check_latency_p99_ms=ms(latency, 99),
            chunks_reviewed=counters.chunks_reviewed, chunks_passed=counters.chunks_passed,
            blocked_chunks=counters.chunks_blocked, fallbacks_planned=counters.fallbacks_planned,
            planning_failures=counters.planning_failures, plans_superseded=counters.plans_superseded,
            holds=counters.holds, executing_blocked=counters.executing_blocked, evasions=counters.evasions,
            planning_time_p50_ms=ms(planning, 50), planning_time_p99_ms=ms(planning, 99),
            last_planning_time_ms=1000 * planning[-1] if planning else float('nan'),
            fallback_active=bool(guard.fallback_active),
            scene_objects=','.join(o.name for o in scene.scene.objects()),
            moving_objects=','.join(f'{name} {np.linalg.norm(v):.2f} m/s'
                                    for name, v in scene.velocities().items() if np.any(v)),
            joint_state=joint_state_problem or 'fresh',
            **{f'output_latency_{kind}_p{q}_ms': ms(output[kind], q)
               for kind in ('free', 'blocked', 'scene') for q in (50, 99)})

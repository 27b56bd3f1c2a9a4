"""RUNNING or HOLD, and why: the policy node's safety state, decided once per timer tick.

In HOLD the node publishes the measured position as a single point. It resumes by itself as soon as
the inputs are good again, except after an estop or a stop request, which latch until cleared.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class HoldCode(enum.Enum):
    """Why the node holds, in the order of precedence used when several apply."""

    ESTOP = 'estop'
    STOPPED = 'stopped'
    NO_OBSERVATION = 'no_observation'
    STALE_OBSERVATION = 'stale_observation'
    NON_FINITE = 'non_finite'
    MISSING_JOINT = 'missing_joint'
    DUPLICATE_JOINT = 'duplicate_joint'
    OUT_OF_LIMITS = 'out_of_limits'
    FUTURE_STAMP = 'future_stamp'
    MALFORMED = 'malformed'
    BAD_IMAGE = 'bad_image'
    INFERENCE_ERROR = 'inference_error'
    NO_CHUNK = 'no_chunk'


class HealthState(enum.Enum):
    RUNNING = 'RUNNING'
    HOLD = 'HOLD'


@dataclass(frozen=True)
class HoldReason:
    """A machine-readable code, what it concerns (topic, joint, ...) and a sentence for humans.

    `subject` identifies the reason for log throttling: 'camera stale for 0.61 s' and '... 0.72 s' are
    the same reason, a different topic is a new one.
    """

    code: HoldCode
    text: str
    subject: str = ''

    def __str__(self) -> str:
        return f'{self.code.name}: {self.text}'

    @property
    def key(self) -> tuple[HoldCode, str]:
        return (self.code, self.subject)


@dataclass(frozen=True)
class HealthVerdict:
    """The decision for one tick; `log_message` is set when the caller should log now."""

    state: HealthState
    reason: HoldReason | None
    log_message: str | None = None

    @property
    def running(self) -> bool:
        return self.state is HealthState.RUNNING


def stream_age_reason(stream: str, stamp: float | None, now: float,
                      max_age_s: float) -> HoldReason | None:
    """HOLD reason for one input stream given its latest stamp, or None if it is fresh."""
    if stamp is None:
        return HoldReason(HoldCode.NO_OBSERVATION, f'no message received yet on {stream}', stream)
    if not math.isfinite(stamp):
        return HoldReason(HoldCode.NON_FINITE, f'{stream} has a non-finite stamp {stamp}', stream)
    age = now - stamp
    if age > max_age_s:
        return HoldReason(HoldCode.STALE_OBSERVATION,
                          f'{stream} is {age:.3f} s old (max_obs_age_s {max_age_s:g})', stream)
    if -age > max_age_s:
        # Same bound into the future: a clock mismatch (use_sim_time on one side only) is a fault too.
        return HoldReason(HoldCode.STALE_OBSERVATION,
                          f'{stream} is stamped {-age:.3f} s in the future: clocks disagree '
                          f'(check use_sim_time)', stream)
    return None


class HealthMonitor:
    """Decides RUNNING vs HOLD per tick, counts hold time per reason, throttles the log.

    Not thread-safe except for the latches: estop/stop services may run on another executor thread,
    and setting a bool is atomic in CPython, which is all they do.
    """

    def __init__(self, max_obs_age_s: float, log_throttle_s: float = 10.0) -> None:
        if not (max_obs_age_s > 0):
            raise ValueError(f'max_obs_age_s must be > 0, got {max_obs_age_s}')
        self.max_obs_age_s = float(max_obs_age_s)
        self.log_throttle_s = float(log_throttle_s)
        self._estop_text: str | None = None
        self._stop_text: str | None = None
        self._reason: HoldReason | None = HoldReason(HoldCode.NO_OBSERVATION, 'not started', '')
        self._last_update: float | None = None
        self._hold_seconds: dict[HoldCode, float] = {}
        self._last_logged: dict[tuple[HoldCode, str], float] = {}
        self._hold_announced = False
        self.transitions = 0

    # --- latches (services) ---
    def set_estop(self, text: str = 'emergency stop requested') -> None:
        self._estop_text = text

    def clear_estop(self) -> None:
        self._estop_text = None

    @property
    def estopped(self) -> bool:
        return self._estop_text is not None

    def stop(self, text: str = 'stopped by request') -> None:
        self._stop_text = text

    def start(self) -> None:
        self._stop_text = None

    @property
    def stopped(self) -> bool:
        return self._stop_text is not None

    # --- state ---
    @property
    def state(self) -> HealthState:
        return HealthState.RUNNING if self._reason is None else HealthState.HOLD

    @property
    def reason(self) -> HoldReason | None:
        return self._reason

    @property
    def hold_seconds(self) -> dict[HoldCode, float]:
        """Seconds spent in HOLD per reason code since construction."""
        return dict(self._hold_seconds)

    def _decide(self, now: float, stream_stamps: Mapping[str, float | None],
                faults: Iterable[HoldReason | None]) -> HoldReason | None:
        if self._estop_text is not None:
            return HoldReason(HoldCode.ESTOP, self._estop_text, 'estop')
        if self._stop_text is not None:
            return HoldReason(HoldCode.STOPPED, self._stop_text, 'stop')
        for stream, stamp in stream_stamps.items():
            reason = stream_age_reason(stream, stamp, now, self.max_obs_age_s)
            if reason is not None:
                return reason
        return next((f for f in faults if f is not None), None)

    def update(self, now: float, stream_stamps: Mapping[str, float | None],
               faults: Iterable[HoldReason | None] = ()) -> HealthVerdict:
        """Decide this tick's state from each stream's latest stamp and any faults found elsewhere
        (window building, inference errors, no chunk). Faults are considered in the order given."""
        if self._last_update is not None and self._reason is not None:
            elapsed = max(0.0, now - self._last_update)
            code = self._reason.code
            self._hold_seconds[code] = self._hold_seconds.get(code, 0.0) + elapsed
        self._last_update = now

        previous = self._reason
        reason = self._decide(now, stream_stamps, faults)
        self._reason = reason
        changed = (previous is None) != (reason is None) or (
            previous is not None and reason is not None and previous.key != reason.key)
        if changed:
            self.transitions += 1

        # Log a HOLD on a change (unless the same reason was logged moments ago: a flapping input) and
        # remind every log_throttle_s while it persists; log the resume whenever the HOLD was logged.
        message = None
        if reason is None:
            if changed and self._hold_announced:
                message = 'RUNNING: inputs are good again, resuming'
            self._hold_announced = False
        else:
            if previous is None:
                self._hold_announced = False  # a new HOLD episode
            if now - self._last_logged.get(reason.key, -math.inf) >= self.log_throttle_s:
                message = f'HOLD {reason}' if changed else f'still HOLD {reason}'
                self._last_logged[reason.key] = now
                self._hold_announced = True
        state = HealthState.RUNNING if reason is None else HealthState.HOLD
        return HealthVerdict(state=state, reason=reason, log_message=message)

"""Open-loop scoring of a bag replay (`dp-ros replay`), without ROS: numpy over rosbags messages.

Two bags go in: the INPUT bag (what the robot saw and what the demonstrator commanded) and the
RECORDED bag (what the nodes published while the input was played to them). Everything here reads
message fields by name, so it works on rosbags and rclpy messages alike.

Definitions (all times are the bag's clock, i.e. sim time under `use_sim_time`):

- A *tick* is one trajectory the policy published. Its *first action* is point 0, due at
  ``header.stamp + time_from_start``. The demonstrated command at that tick is the input bag's command
  whose point 0 is due nearest in time (within half a command period); both follow the same rule
  (the action commanded at t is due one control period later), so matching due times matches ticks.
- *Zero-action baseline*: a policy that commands the measured position at each tick (the newest
  input joint state at or before the tick's stamp). A useful policy's MAE is well below it.
- *Latency, observation to publish*: for each chunk, the sim time from the stamp of the observation it
  was computed from to the first control tick that published from it (the policy node's `chunk_age_s`
  diagnostic at the tick where `chunks_used` went up by one; exact when diagnostics run at the control
  rate, which `dp-ros replay` sets). Inference latency alone (wall clock) comes from the same
  diagnostics.
- *HOLD time*: the node's own per-reason HOLD seconds (`hold_s CODE` diagnostics), minus what it had
  accumulated before the replay.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bags import BagError, bag_topics, read_messages
from ..diagnostics import GuardStatus, PolicyStatus
from ..errors import UserError
from ..jsonio import write_json

NS = 1_000_000_000
IMAGE_TYPE = 'sensor_msgs/msg/Image'
JOINT_STATE_TYPE = 'sensor_msgs/msg/JointState'
TRAJECTORY_TYPE = 'trajectory_msgs/msg/JointTrajectory'
DIAGNOSTICS_TYPE = 'diagnostic_msgs/msg/DiagnosticArray'
POLICY_STATUS_SUFFIX = ': policy'  # DiagnosticStatus.name of policy_node is '<node name>: policy'
GUARD_STATUS_SUFFIX = ': collision guard'
GUARD_COUNTERS = ('chunks_reviewed', 'chunks_passed', 'blocked_chunks', 'fallbacks_planned',
                  'planning_failures', 'holds', 'rejected_messages')


class ReplayInputError(UserError, ValueError):
    """The bag cannot be replayed with these parameters; the message lists every problem found."""


@dataclass(frozen=True)
class ReplayTopics:
    """What the params and the checkpoint need from a bag."""

    camera_topics: tuple[str, ...]
    joint_states_topic: str
    command_topic: str  # the demonstrated commands (JointTrajectory) the policy is scored against
    observed_joints: tuple[str, ...]  # joints the checkpoint reads from the joint states
    action_joints: tuple[str, ...]  # joints the checkpoint commands (scored)


@dataclass
class JointSeries:
    """Positions of ``names`` over time: ``values[i]`` at ``stamps[i]`` (seconds)."""

    names: tuple[str, ...]
    stamps: np.ndarray  # (N,)
    values: np.ndarray  # (N, J)

    def __len__(self) -> int:
        return int(self.stamps.shape[0])


@dataclass
class TrajectorySeries(JointSeries):
    """First points of trajectories: ``values[i]`` is point 0 of message i, due at ``due[i]``."""

    due: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,) seconds
    n_points: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # (N,)
    # every point of message i, (n_points[i], J), due at chunk_due[i] (seconds): the horizon scores
    chunks: list[np.ndarray] = field(default_factory=list)
    chunk_due: list[np.ndarray] = field(default_factory=list)


@dataclass
class DiagnosticSample:
    stamp: float  # header stamp, seconds
    name: str
    level: int
    message: str
    values: dict[str, str]

    @property
    def policy(self) -> PolicyStatus:
        """The values as policy_node's status (a sample of the policy node)."""
        return PolicyStatus.from_values(self.values)

    @property
    def guard(self) -> GuardStatus:
        """The values as collision_guard_node's status (a sample of the guard)."""
        return GuardStatus.from_values(self.values)


@dataclass
class BagReference:
    """What a replay is scored against, read (and fully validated) from the input bag."""

    bag: Path
    topics: dict[str, tuple[str, int]]  # topic -> (type, messages)
    start: float  # first stamp, seconds
    end: float  # last stamp, seconds
    joint_states: JointSeries  # the observed + action joints
    commands: TrajectorySeries  # the action joints

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class RecordedOutputs:
    policy: TrajectorySeries
    guard: TrajectorySeries | None
    policy_diagnostics: list[DiagnosticSample]
    guard_diagnostics: list[DiagnosticSample]
    topics: dict[str, int]  # recorded topic -> messages


# ---------------------------------------------------------------------- message fields -> arrays
def _seconds(stamp: Any) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def _pick(names: Sequence[str], values: Sequence[float], wanted: Sequence[str], what: str) -> np.ndarray:
    """``values`` (in ``names`` order) reordered to ``wanted``; ValueError names missing joints."""
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in wanted if n not in index]
    if missing:
        raise ValueError(f'{what} lacks joint(s) {missing} (it has {list(names)})')
    if len(values) != len(names):
        raise ValueError(f'{what} has {len(names)} joint names but {len(values)} positions')
    return np.asarray([float(values[index[n]]) for n in wanted])


def trajectory_points(msg: Any, joints: Sequence[str], what: str) -> tuple[np.ndarray, np.ndarray]:
    """(time_from_start of every point in s, (points, joints) positions in ``joints`` order)."""
    if len(msg.points) == 0:
        raise ValueError(f'{what} has no points')
    names = list(msg.joint_names)
    offsets = np.asarray([_seconds(p.time_from_start) for p in msg.points])
    return offsets, np.stack([_pick(names, p.positions, joints, what) for p in msg.points])


def _trajectory_series(items: Iterable[tuple[float, Any]], joints: Sequence[str], topic: str) -> TrajectorySeries:
    stamps, chunks, chunk_due = [], [], []
    for stamp, msg in items:
        offsets, points = trajectory_points(msg, joints, f'{topic} message stamped {stamp:.3f} s')
        stamps.append(stamp)
        chunks.append(points)
        chunk_due.append(stamp + offsets)
    j = len(joints)
    return TrajectorySeries(tuple(joints), np.asarray(stamps, float),
                            np.asarray([c[0] for c in chunks], float).reshape(-1, j),
                            np.asarray([d[0] for d in chunk_due], float), np.asarray([len(c) for c in chunks], int),
                            chunks, chunk_due)


# ---------------------------------------------------------------------- the input bag
def check_bag(bag: str | Path, topics: ReplayTopics) -> BagReference:
    """Validate ``bag`` against what the replay needs and read the reference series, before any node
    starts: every message must deserialise (a truncated bag raises `BagError`), each needed topic must
    exist with the right type and hold messages, and the joint states and commands must name the
    checkpoint's joints. Raises `ReplayInputError` listing everything that is missing."""
    bag = Path(bag)
    try:
        available = bag_topics(bag)
    except BagError as err:
        if not bag.exists():
            raise
        raise BagError(f'{err}; the bag looks truncated or corrupt (a recording cut short?), so it is not '
                       f'replayed') from err
    problems: list[str] = []

    def need(topic: str, msgtype: str, role: str) -> None:
        if topic not in available:
            problems.append(f'no topic {topic} ({role}); the bag has {sorted(available)}')
        elif available[topic][0] != msgtype:
            problems.append(f'topic {topic} ({role}) carries {available[topic][0]}, not {msgtype}')
        elif available[topic][1] == 0:
            problems.append(f'topic {topic} ({role}) has no messages')

    for k, topic in enumerate(topics.camera_topics):
        need(topic, IMAGE_TYPE, f'camera_topics[{k}]')
    need(topics.joint_states_topic, JOINT_STATE_TYPE, 'joint_states_topic')
    need(topics.command_topic, TRAJECTORY_TYPE, 'demonstrated commands, --command-topic')
    if problems:
        raise ReplayInputError(_problem_text(bag, problems))

    counts: Counter[str] = Counter()
    first = last = None
    state_joints = tuple(dict.fromkeys([*topics.observed_joints, *topics.action_joints]))
    state_stamps: list[float] = []
    state_values: list[np.ndarray] = []
    commands: list[tuple[float, Any]] = []
    for item in read_messages(bag):  # BagError part-way for a truncated or corrupt bag
        counts[item.topic] += 1
        stamp = item.stamp_ns / NS
        first = stamp if first is None else min(first, stamp)
        last = stamp if last is None else max(last, stamp)
        if item.topic == topics.joint_states_topic:
            try:
                state_values.append(_pick(list(item.msg.name), item.msg.position, state_joints,
                                          f'{item.topic} message stamped {stamp:.3f} s'))
            except ValueError as err:
                problem = f'{err}: the checkpoint needs {list(state_joints)}'
                raise ReplayInputError(_problem_text(bag, [problem])) from None
            state_stamps.append(stamp)
        elif item.topic == topics.command_topic:
            commands.append((stamp, item.msg))
    for topic, (_, expected) in available.items():
        if counts[topic] < expected:
            raise BagError(f'bag {str(bag)!r} is truncated: its metadata lists {expected} messages on {topic} '
                           f'but only {counts[topic]} could be read')
    try:
        command_series = _trajectory_series(commands, topics.action_joints, topics.command_topic)
    except ValueError as err:
        raise ReplayInputError(_problem_text(bag, [f'{err}: the checkpoint commands '
                                                   f'{list(topics.action_joints)}'])) from None
    order = np.argsort(state_stamps, kind='stable')
    states = JointSeries(state_joints, np.asarray(state_stamps)[order],
                         np.asarray(state_values).reshape(-1, len(state_joints))[order])
    return BagReference(bag, available, float(first), float(last), states, command_series)


def _problem_text(bag: Path, problems: list[str]) -> str:
    return f'bag {str(bag)!r} does not fit the params/checkpoint: ' + '; '.join(problems)


# ---------------------------------------------------------------------- the recorded bag
def load_recorded(recorded_bag: str | Path, policy_topic: str, action_joints: Sequence[str],
                  guard_topic: str | None = None) -> RecordedOutputs:
    """The policy's (and guard's) trajectories and both nodes' diagnostics from a recorded bag."""
    policy: list[tuple[float, Any]] = []
    guard: list[tuple[float, Any]] = []
    policy_diag: list[DiagnosticSample] = []
    guard_diag: list[DiagnosticSample] = []
    counts: Counter[str] = Counter()
    for item in read_messages(recorded_bag):
        counts[item.topic] += 1
        stamp = item.stamp_ns / NS
        if item.topic == policy_topic:
            policy.append((stamp, item.msg))
        elif guard_topic is not None and item.topic == guard_topic:
            guard.append((stamp, item.msg))
        elif item.msgtype == DIAGNOSTICS_TYPE:
            for status in item.msg.status:
                sample = DiagnosticSample(stamp, status.name, int(status.level), status.message,
                                          {kv.key: kv.value for kv in status.values})
                if status.name.endswith(POLICY_STATUS_SUFFIX):
                    policy_diag.append(sample)
                elif status.name.endswith(GUARD_STATUS_SUFFIX):
                    guard_diag.append(sample)
    policy_series = _trajectory_series(policy, action_joints, policy_topic)
    guard_series = _trajectory_series(guard, action_joints, guard_topic) if guard_topic is not None else None
    return RecordedOutputs(policy_series, guard_series, policy_diag, guard_diag, dict(counts))


# ---------------------------------------------------------------------- metrics
def match_nearest(query: np.ndarray, reference: np.ndarray, tolerance: float) -> np.ndarray:
    """Index of the ``reference`` time (sorted) nearest each ``query`` time, -1 if none within ``tolerance``."""
    query, reference = np.asarray(query, float), np.asarray(reference, float)
    if reference.size == 0:
        return np.full(query.shape, -1)
    right = np.clip(np.searchsorted(reference, query), 0, reference.size - 1)
    left = np.clip(right - 1, 0, reference.size - 1)
    best = np.where(np.abs(reference[left] - query) <= np.abs(reference[right] - query), left, right)
    return np.where(np.abs(reference[best] - query) <= tolerance, best, -1)


def _percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {'p50': None, 'p99': None, 'n': 0}
    return {'p50': float(np.percentile(v, 50)), 'p99': float(np.percentile(v, 99)), 'n': int(v.size)}


def _per_joint(names: Sequence[str], values: np.ndarray) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, values)}


def action_errors(reference: BagReference, policy: TrajectorySeries) -> dict[str, Any]:
    """MAE/RMSE of the policy's first actions against the demonstrated commands, and the zero-action
    baseline's on the same ticks (see the module docstring)."""
    names = reference.commands.names
    demo = reference.commands
    period = float(np.median(np.diff(demo.due))) if len(demo) > 1 else 0.1
    order = np.argsort(demo.due, kind='stable')
    matched = match_nearest(policy.due, demo.due[order], 0.5 * period)
    ok = matched >= 0
    # the zero-action policy holds where the arm was when the demonstrator commanded (at its stamp),
    # so its MAE is a property of the bag, the same in every replay
    states = reference.joint_states
    demo_stamps = demo.stamps[order][np.maximum(matched, 0)]
    state_row = np.searchsorted(states.stamps, demo_stamps, side='right') - 1
    ok &= state_row >= 0  # no measured state yet: the baseline is undefined at that tick
    out: dict[str, Any] = {'joint_names': list(names), 'policy_ticks': len(policy), 'compared_ticks': int(ok.sum()),
                           'command_period_s': period, 'match_tolerance_s': 0.5 * period}
    if not ok.any():
        out.update(mae=None, rmse=None, mae_per_joint=None, rmse_per_joint=None,
                   zero_action={'mae': None, 'rmse': None, 'mae_per_joint': None}, mae_ratio_to_zero_action=None,
                   hold_start={'mae': None, 'rmse': None}, mae_ratio_to_hold_start=None)
        return out
    demo_points = demo.values[order][matched[ok]]
    error = policy.values[ok] - demo_points
    column = [states.names.index(n) for n in names]
    zero_error = states.values[state_row[ok]][:, column] - demo_points
    mae_j, rmse_j = np.abs(error).mean(0), np.sqrt((error ** 2).mean(0))
    zero_mae_j = np.abs(zero_error).mean(0)
    mae, zero_mae = float(mae_j.mean()), float(zero_mae_j.mean())
    # the hold-start policy never moves from where the arm was at the first compared tick: what a stuck
    # or broken policy scores. (The zero-action one above follows the arm, one command period behind.)
    hold_error = states.values[state_row[ok][0]][column][None] - demo_points
    hold_mae = float(np.abs(hold_error).mean())
    out.update(
        mae=mae, rmse=float(np.sqrt((error ** 2).mean())),
        mae_per_joint=_per_joint(names, mae_j), rmse_per_joint=_per_joint(names, rmse_j),
        zero_action={'mae': zero_mae, 'rmse': float(np.sqrt((zero_error ** 2).mean())),
                     'mae_per_joint': _per_joint(names, zero_mae_j)},
        mae_ratio_to_zero_action=mae / zero_mae if zero_mae > 0 else None,
        hold_start={'mae': hold_mae, 'rmse': float(np.sqrt((hold_error ** 2).mean()))},
        mae_ratio_to_hold_start=mae / hold_mae if hold_mae > 0 else None)
    return out


def output_rate(series: TrajectorySeries) -> float | None:
    """Messages per second of sim time between the first and the last."""
    if len(series) < 2:
        return None
    span = float(series.stamps.max() - series.stamps.min())
    return (len(series) - 1) / span if span > 0 else None


def hold_summary(samples: Sequence[DiagnosticSample], baseline: DiagnosticSample | None = None) -> dict[str, Any]:
    """HOLD seconds per reason code (the node's counters, less ``baseline``'s) and the reasons seen."""
    last = samples[-1].policy.hold_s if samples else {}
    before = baseline.policy.hold_s if baseline is not None else {}
    by_code = {code: max(0.0, s - before.get(code, 0.0)) for code, s in last.items()}
    by_code = {code: s for code, s in by_code.items() if s > 0}
    reasons: dict[str, dict[str, Any]] = {}
    statuses = [sample.policy for sample in samples]
    for sample, status in zip(samples, statuses):
        if status.state == 'HOLD':
            text = status.reason or sample.message
            code = text.split(':', 1)[0] or 'UNKNOWN'
            entry = reasons.setdefault(code, {'samples': 0, 'example': text})
            entry['samples'] += 1
    states = Counter(status.state or '?' for status in statuses)
    return {'seconds': float(sum(by_code.values())), 'seconds_by_code': by_code, 'reasons': reasons,
            'diagnostic_samples': dict(states)}


def latency_summary(samples: Sequence[DiagnosticSample]) -> dict[str, Any]:
    """Observation-to-publish latency per chunk (sim s) and inference latency (wall ms)."""
    first_use: list[float] = []
    previous: int | None = None
    for status in (sample.policy for sample in samples):
        if previous is not None and status.chunks_used == previous + 1 and status.state == 'RUNNING':
            first_use.append(status.chunk_age_s)
        previous = status.chunks_used
    last = samples[-1].policy if samples else PolicyStatus()
    return {
        'obs_to_publish_s': {
            **_percentiles(first_use), 'samples': [float(v) for v in first_use],
            'definition': 'sim time from the stamp of the observation a chunk was computed from to the first '
                          'control tick that published from it (policy_node diagnostics chunk_age_s where '
                          'chunks_used rose by one)'},
        'inference_ms': {'p50': last.inference_latency_p50_ms, 'p99': last.inference_latency_p99_ms,
                         'count': last.inference_count,
                         'definition': "wall-clock time of one policy inference (the node's worker)"},
    }


def guard_summary(samples: Sequence[DiagnosticSample], baseline: DiagnosticSample | None = None) -> dict[str, Any]:
    """The guard's counters over the replay (last diagnostics less ``baseline``)."""
    if not samples:
        return {counter: None for counter in GUARD_COUNTERS} | {'diagnostic_samples': 0}
    last = samples[-1].guard
    before = baseline.guard if baseline is not None else GuardStatus()
    out: dict[str, Any] = {counter: getattr(last, counter) - getattr(before, counter) for counter in GUARD_COUNTERS}
    out['diagnostic_samples'] = len(samples)
    out['last_action'] = last.last_action
    return out


def compute_report(reference: BagReference, recorded: RecordedOutputs, *,
                   policy_baseline: DiagnosticSample | None = None,
                   guard_baseline: DiagnosticSample | None = None) -> dict[str, Any]:
    """Every metric of one replay as a JSON-ready dict (see the module docstring for definitions)."""
    errors = action_errors(reference, recorded.policy)
    report: dict[str, Any] = {
        'input_bag': str(reference.bag),
        'sim_duration_s': reference.duration,
        'recorded_topics': recorded.topics,
        'action_error': errors,
        'output_rate_hz': output_rate(recorded.policy),
        'policy_outputs': len(recorded.policy),
        'hold': hold_summary(recorded.policy_diagnostics, policy_baseline),
        'latency': latency_summary(recorded.policy_diagnostics),
    }
    if recorded.guard is not None:
        report['guard'] = {**guard_summary(recorded.guard_diagnostics, guard_baseline),
                           'outputs': len(recorded.guard), 'output_rate_hz': output_rate(recorded.guard)}
    return report


# ---------------------------------------------------------------------- plots
def write_plots(reference: BagReference, recorded: RecordedOutputs, report: dict[str, Any],
                out_dir: str | Path) -> list[Path]:
    """``joints.png`` (demonstrated vs policy vs measured, per joint, over sim time) and
    ``latency.png`` (histogram of observation-to-publish latency)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = reference.commands.names
    t0 = reference.start
    rows = len(names)
    fig, axes = plt.subplots(rows, 1, figsize=(9, 1.7 * rows + 0.8), sharex=True, squeeze=False)
    states = reference.joint_states
    for j, (name, ax) in enumerate(zip(names, axes[:, 0])):
        ax.plot(states.stamps - t0, states.values[:, states.names.index(name)], color='0.6', lw=1,
                label='measured (bag)')
        ax.step(reference.commands.due - t0, reference.commands.values[:, j], where='post', color='C0',
                label='demonstrated command')
        if recorded.guard is not None and len(recorded.guard):
            ax.plot(recorded.guard.due - t0, recorded.guard.values[:, j], 's', mfc='none', color='C2', ms=6,
                    label='guard output')
        for chunk, chunk_due in zip(recorded.policy.chunks, recorded.policy.chunk_due):  # the whole horizon
            ax.plot(chunk_due - t0, chunk[:, j], color='C3', alpha=0.2, lw=0.8)
        ax.plot(recorded.policy.due - t0, recorded.policy.values[:, j], 'o', color='C3', ms=3,
                label='policy first action (lines: each tick\'s whole chunk)')
        ax.set_ylabel(name, fontsize=8)
    axes[0, 0].legend(fontsize=7, loc='upper right', ncol=4)
    from .replay_scores import best_baseline_mae, format_or_na, horizon_mae  # (it imports this module)
    horizon = report.get('horizon') or {}
    policy_mae = horizon_mae(horizon)
    if policy_mae is not None:
        axes[0, 0].set_title(f"horizon MAE {policy_mae:.4f} rad (best baseline "
                             f"{format_or_na(best_baseline_mae(horizon))}) over {horizon['ticks']} ticks: "
                             f"{report.get('verdict', {}).get('result', '')}", fontsize=9)
    axes[-1, 0].set_xlabel('time due (s, from bag start)')
    fig.tight_layout()
    joints_png = out_dir / 'joints.png'
    fig.savefig(joints_png, dpi=80)
    plt.close(fig)

    latency = report.get('latency', {}).get('obs_to_publish_s', {})
    samples = np.asarray(latency.get('samples', []), float) * 1e3
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if samples.size:
        ax.hist(samples, bins=min(30, max(5, samples.size // 2)), color='C0')
        ax.axvline(np.percentile(samples, 50), color='k', ls='--', label=f'p50 {np.percentile(samples, 50):.0f} ms')
        ax.axvline(np.percentile(samples, 99), color='C3', ls=':', label=f'p99 {np.percentile(samples, 99):.0f} ms')
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, 'no latency samples (policy diagnostics slower than the control rate?)',
                ha='center', va='center', transform=ax.transAxes, fontsize=8)
    ax.set_xlabel('observation stamp -> first publish of its chunk (ms, sim time)')
    ax.set_ylabel('chunks')
    fig.tight_layout()
    latency_png = out_dir / 'latency.png'
    fig.savefig(latency_png, dpi=80)
    plt.close(fig)
    return [joints_png, latency_png]


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """report.json, with non-finite floats as null (strict JSON) and floats rounded."""
    return write_json(path, report)

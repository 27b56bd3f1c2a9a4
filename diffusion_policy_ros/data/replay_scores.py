"""Whether a replayed policy is good enough: scores along the action horizon, honest baselines, and a
PASS/FAIL verdict (`dp-ros replay`). ROS-free: numpy over the series `replay_metrics` reads from bags.

Why along the horizon: at 10 Hz the first action of any chunk is close to where the arm already is, so
a policy that never moves scores about as well on it as a good one. What tells them apart is where the
policy says the arm should be 0.3, 0.5, 1 s from now.

Definitions (times are the bag's clock):

- The *demonstrated path* D(t) is the demonstrated commands' first points at their due times, linearly
  interpolated per joint. A point due outside the demonstration's span is not scored.
- For each *tick* (message the policy published at stamp t), every point k is due at
  ``t + time_from_start[k]``. Its error is the point minus D(due). The *horizon score* is the mean
  absolute error over every point due within ``horizon_s`` (1 s) of its tick, over all ticks and joints:
  a time-aligned distance between the commanded path over the next second and the demonstrated one.
  ``first``/``end`` are the same at the first and the last point of each message (the executed slice).
- *Baselines*, scored on exactly the same (tick, due time) pairs:
  ``hold_measured`` commands the measured position at the tick for the whole horizon (a policy that
  never moves); ``repeat_last_command`` repeats the newest demonstrated command at or before the tick
  (it knows what the demonstrator just did); ``start_pose`` stays where the arm was at the first tick
  (a stuck or broken policy).
- *Kept up*: the share of the replay the policy held because it fell behind (HOLD NO_CHUNK: no
  executable chunk; STALE_OBSERVATION: inputs older than allowed; INFERENCE_ERROR) from its first
  executed chunk on, from the node's own HOLD counters, and the longest gap between the outputs of the
  policy and of the guard.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import yaml

from ..config_loader import from_mapping
from .replay_metrics import BagReference, DiagnosticSample, JointSeries, RecordedOutputs, TrajectorySeries

BASELINES = ('hold_measured', 'repeat_last_command', 'start_pose')
# HOLD codes (as the policy node's `hold_s CODE` diagnostics name them) that mean the stack did not keep
# up, as opposed to bad input or a stop
FELL_BEHIND_CODES = ('NO_CHUNK', 'STALE_OBSERVATION', 'INFERENCE_ERROR')


@dataclass
class ReplayThresholds:
    """What a replay must meet to PASS (`dp-ros replay --threshold NAME=VALUE` sets any of them)."""

    horizon_s: float = 1.0  # points due within this of their tick are scored
    max_ratio_to_baseline: float = 0.8  # policy horizon MAE / the best baseline's, at most (20 % better)
    max_fell_behind_share: float = 0.1  # of the bag's duration in HOLD NO_CHUNK / STALE / INFERENCE_ERROR
    min_output_rate_share: float = 0.9  # policy messages per sim second / the control rate, at least
    max_output_gap_periods: float = 3.0  # longest gap between outputs (policy and guard), in control periods

    @classmethod
    def with_overrides(cls, items: list[str]) -> 'ReplayThresholds':
        """`NAME=VALUE` strings over the defaults; ValueError names an unknown or malformed one."""
        values: dict[str, Any] = {}
        for item in items:
            name, sep, text = item.partition('=')
            if not sep:
                raise ValueError(f'--threshold {item!r}: expected NAME=VALUE')
            values[name] = yaml.safe_load(text)
        return from_mapping(cls, values, '--threshold')


def demonstrated_path(reference: BagReference) -> tuple[np.ndarray, np.ndarray]:
    """(due times sorted, positions): the demonstrated commands' first points."""
    order = np.argsort(reference.commands.due, kind='stable')
    return reference.commands.due[order], reference.commands.values[order]


def _interpolate(path_t: np.ndarray, path_x: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Path positions at `query` times, NaN outside [path_t[0], path_t[-1]]."""
    out = np.stack([np.interp(query, path_t, path_x[:, j]) for j in range(path_x.shape[1])], axis=-1)
    outside = (query < path_t[0]) | (query > path_t[-1])
    out[outside] = np.nan
    return out


def _state_at(states: JointSeries, columns: list[int], times: np.ndarray) -> np.ndarray:
    """The newest measured position at or before each time (the first one before the first sample)."""
    rows = np.clip(np.searchsorted(states.stamps, times, side='right') - 1, 0, len(states) - 1)
    return states.values[rows][:, columns]


def _summary(errors: np.ndarray, names: tuple[str, ...]) -> dict[str, Any]:
    """MAE/RMSE over rows x joints of an error array with NaN rows (not scored) dropped."""
    errors = errors[np.all(np.isfinite(errors), axis=1)]
    if errors.size == 0:
        return {'mae': None, 'rmse': None, 'mae_per_joint': None, 'points': 0}
    return {'mae': float(np.abs(errors).mean()), 'rmse': float(np.sqrt((errors ** 2).mean())),
            'mae_per_joint': {n: float(v) for n, v in zip(names, np.abs(errors).mean(0))}, 'points': len(errors)}


def horizon_scores(reference: BagReference, policy: TrajectorySeries, horizon_s: float = 1.0) -> dict[str, Any]:
    """The policy's and every baseline's errors along the horizon (see the module docstring)."""
    names = reference.commands.names
    path_t, path_x = demonstrated_path(reference)
    states = reference.joint_states
    columns = [states.names.index(n) for n in names]
    if len(policy) == 0 or len(path_t) < 2 or len(states) == 0:
        return {'horizon_s': horizon_s, 'ticks': len(policy), 'policy': None, 'baselines': {}, 'by_offset_mae': []}
    tick_of, due, points, offset = [], [], [], []
    for i, (chunk, chunk_due) in enumerate(zip(policy.chunks, policy.chunk_due)):
        keep = chunk_due <= policy.stamps[i] + horizon_s + 1e-9
        keep[0] = True  # the first point is always scored
        tick_of.append(np.full(int(keep.sum()), i))
        due.append(chunk_due[keep])
        points.append(chunk[keep])
        offset.append(np.flatnonzero(keep))
    tick_of, due, points, offset = (np.concatenate(tick_of), np.concatenate(due), np.concatenate(points),
                                    np.concatenate(offset))
    target = _interpolate(path_t, path_x, due)
    tick_time = policy.stamps[tick_of]
    by_stamp = np.argsort(reference.commands.stamps, kind='stable')
    last_command = np.clip(np.searchsorted(reference.commands.stamps[by_stamp], tick_time, side='right') - 1, 0, None)
    predictions = {
        'policy': points,
        'hold_measured': _state_at(states, columns, tick_time),
        'repeat_last_command': reference.commands.values[by_stamp][last_command],
        'start_pose': np.repeat(_state_at(states, columns, policy.stamps[:1]), len(due), axis=0),
    }
    last = _last_of_each_tick(tick_of)
    errors = {name: pred - target for name, pred in predictions.items()}
    scored = {name: {'horizon': _summary(error, names), 'first': _summary(error[offset == 0], names),
                     'end': _summary(error[last], names)}
              for name, error in errors.items()}
    error = np.abs(errors['policy']).mean(axis=1)
    by_offset = [float(np.nanmean(error[offset == k])) for k in range(int(offset.max()) + 1)
                 if np.isfinite(error[offset == k]).any()]
    return {'horizon_s': horizon_s, 'ticks': len(policy), 'policy': scored.pop('policy'), 'baselines': scored,
            'by_offset_mae': by_offset,
            'definition': 'MAE (rad) of every point due within horizon_s of its tick against the demonstrated '
                          'commands interpolated at its due time; baselines on the same points'}


def _last_of_each_tick(tick_of: np.ndarray) -> np.ndarray:
    last = np.zeros(tick_of.shape, bool)
    last[:-1] = tick_of[1:] != tick_of[:-1]
    last[-1] = True
    return last


def fell_behind(samples: list[DiagnosticSample]) -> tuple[float, float | None]:
    """(seconds held because the stack fell behind, stamp of the first chunk executed).

    Counted from the first executed chunk on: waiting for the very first inference is start-up, not
    falling behind (a policy that never produces a chunk fell behind the whole time)."""
    if not samples:
        return 0.0, None

    def behind(sample: DiagnosticSample) -> float:  # a code never held has no counter: 0
        hold_s = sample.policy.hold_s
        return sum(hold_s.get(code, 0.0) for code in FELL_BEHIND_CODES)

    first = next((s for s in samples if s.policy.chunks_used >= 1), None)
    if first is None:
        return behind(samples[-1]), None
    return max(0.0, behind(samples[-1]) - behind(first)), first.stamp


def max_gap(stamps: np.ndarray, start: float, end: float) -> float | None:
    """Longest time without an output between `start` and `end` (the replayed span), seconds."""
    if len(stamps) == 0:
        return None
    times = np.concatenate([[start], np.sort(stamps), [end]])
    return float(np.diff(times).max())


def _scored(horizon: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """The horizon summary (mae, rmse, points, ...) of 'policy' or a baseline in a `horizon_scores`
    result; empty when it was not scored."""
    horizon = horizon or {}
    scored = horizon.get('policy') if name == 'policy' else horizon.get('baselines', {}).get(name)
    return (scored or {}).get('horizon') or {}


def horizon_mae(horizon: dict[str, Any] | None, name: str = 'policy') -> float | None:
    """The horizon MAE of 'policy' or of a baseline (None when not scored)."""
    return _scored(horizon, name).get('mae')


def best_baseline_mae(horizon: dict[str, Any] | None) -> float | None:
    maes = [mae for name in BASELINES if (mae := horizon_mae(horizon, name)) is not None]
    return min(maes) if maes else None


def add_scores(report: dict[str, Any], reference: BagReference, recorded: RecordedOutputs,
               thresholds: ReplayThresholds, control_rate_hz: float) -> dict[str, Any]:
    """Horizon scores, how far the stack fell behind, output gaps and the verdict, into `report`
    (from `replay_metrics.compute_report`, with its `replay` section filled in)."""
    report['horizon'] = horizon_scores(reference, recorded.policy, thresholds.horizon_s)
    report['fell_behind_s'], first_chunk = fell_behind(recorded.policy_diagnostics)
    report['first_chunk_after_s'] = None if first_chunk is None else first_chunk - reference.start
    report['max_output_gap_s'] = max_gap(recorded.policy.stamps, reference.start, reference.end)
    if 'guard' in report and recorded.guard is not None:
        report['guard']['max_gap_s'] = max_gap(recorded.guard.stamps, reference.start, reference.end)
    report['verdict'] = verdict(report, thresholds, control_rate_hz)
    return report


def verdict(report: dict[str, Any], thresholds: ReplayThresholds, control_rate_hz: float) -> dict[str, Any]:
    """PASS only if every check holds; each check says what it measured against what it needed."""
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float, at_most: bool, what: str) -> None:
        ok = value is not None and (value <= limit if at_most else value >= limit)
        checks.append({'check': name, 'value': value, 'limit': limit, 'ok': bool(ok),
                       'text': f"{what}: {'n/a' if value is None else format(value, '.3g')} "
                               f"({'<=' if at_most else '>='} {limit:g})"})

    horizon = report['horizon']
    policy_mae = horizon_mae(horizon)
    for name in BASELINES:
        base = horizon_mae(horizon, name)
        ratio = policy_mae / base if policy_mae is not None and base else None
        check(f'beats_{name}', ratio, thresholds.max_ratio_to_baseline, True,
              f'horizon MAE / {name.replace("_", " ")} baseline')
    duration = max(report['sim_duration_s'], 1e-9)
    check('kept_up', report['fell_behind_s'] / duration, thresholds.max_fell_behind_share, True,
          'share of the bag held because the stack fell behind (NO_CHUNK, STALE, INFERENCE_ERROR)')
    rate = report.get('output_rate_hz')
    check('output_rate', None if rate is None else rate / control_rate_hz, thresholds.min_output_rate_share, False,
          'policy output rate / control rate')
    period = 1.0 / control_rate_hz
    for who, gap in (('policy', report.get('max_output_gap_s')), ('guard', report.get('guard', {}).get('max_gap_s'))):
        if who == 'guard' and 'guard' not in report:
            continue
        check(f'{who}_gaps', None if gap is None else gap / period, thresholds.max_output_gap_periods, True,
              f'longest gap between {who} outputs, control periods')
    if report.get('replay', {}).get('interrupted'):
        checks.append({'check': 'complete', 'value': None, 'limit': None, 'ok': False,
                       'text': 'the replay was stopped before the end of the bag'})
    failed = [c['text'] for c in checks if not c['ok']]
    return {'result': 'FAIL' if failed else 'PASS', 'failed': failed, 'checks': checks,
            'thresholds': asdict(thresholds)}


def suite_verdict(reports: list[dict[str, Any]], thresholds: ReplayThresholds) -> dict[str, Any]:
    """The verdict of a set of bags: the horizon comparison pooled over every scored point of every bag
    (one bag where a bimodal policy took the other way does not decide it alone), and every other
    check (keeping up, gaps, complete) held on every bag."""
    pooled: dict[str, float | None] = {}
    for name in ('policy', *BASELINES):
        total = points = 0.0
        for report in reports:
            scored = _scored(report.get('horizon'), name)
            mae, n = scored.get('mae'), scored.get('points', 0)
            if mae is not None and n:
                total, points = total + mae * n, points + n
        pooled[name] = total / points if points else None
    failed = []
    for name in BASELINES:
        ratio = pooled['policy'] / pooled[name] if pooled['policy'] is not None and pooled[name] else None
        if ratio is None or ratio > thresholds.max_ratio_to_baseline:
            shown = 'n/a' if ratio is None else format(ratio, '.3g')
            failed.append(f"pooled horizon MAE / {name.replace('_', ' ')} baseline: {shown} "
                          f"(<= {thresholds.max_ratio_to_baseline:g})")
    for report in reports:
        other = [c['text'] for c in report['verdict']['checks'] if not c['ok'] and not c['check'].startswith('beats_')]
        failed += [f"{report['input_bag']}: {text}" for text in other]
    return {'result': 'FAIL' if failed else 'PASS', 'failed': failed, 'pooled_horizon_mae': pooled,
            'bags_passing_alone': sum(r['verdict']['result'] == 'PASS' for r in reports), 'bags': len(reports)}


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """The horizon scores beside their baselines, and the verdict with every failed check."""
    horizon = report.get('horizon') or {}
    policy = horizon_mae(horizon)
    if policy is None:
        lines = ['horizon score   n/a (no policy output could be compared with the demonstration)']
    else:
        bases = ', '.join(f"{name.replace('_', ' ')} {format_or_na(horizon_mae(horizon, name))}"
                          for name in BASELINES if name in horizon.get('baselines', {}))
        lines = [f"horizon score   MAE {policy:.4f} rad over every point due within {horizon['horizon_s']:g} s "
                 f"of its tick (baselines on the same points: {bases}; lower is better)"]
    result = report.get('verdict', {})
    lines.append(f"verdict         {result.get('result', '?')}"
                 + (': ' + '; '.join(result['failed']) if result.get('failed') else ' (every check met)'))
    return lines


def summary_table(rows: list[dict[str, Any]]) -> str:
    """One row per bag (bag, verdict, horizon MAE, best baseline, fell-behind share) for several bags."""
    header = f"{'bag':<32} {'verdict':<7} {'horizon MAE':>11} {'best baseline':>13} {'held behind':>11}"
    lines = [header, '-' * len(header)]
    for row in rows:
        lines.append(f"{row['bag'][-32:]:<32} {row['verdict']:<7} {format_or_na(row.get('horizon_mae')):>11} "
                     f"{format_or_na(row.get('best_baseline_mae')):>13} "
                     f"{format_or_na(row.get('fell_behind_share'), '.0%'):>11}")
    return '\n'.join(lines)


def summary_row(bag: str, report: dict[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """The table row of one bag's report (or of a bag that could not be replayed: `error`)."""
    if report is None:
        return {'bag': bag, 'verdict': 'ERROR', 'error': error}
    return {'bag': bag, 'verdict': report['verdict']['result'], 'failed': report['verdict']['failed'],
            'horizon_mae': horizon_mae(report.get('horizon')),
            'best_baseline_mae': best_baseline_mae(report.get('horizon')),
            'fell_behind_share': report['fell_behind_s'] / max(report['sim_duration_s'], 1e-9)}


def format_or_na(value: float | None, spec: str = '.4f') -> str:
    return 'n/a' if value is None else format(value, spec)

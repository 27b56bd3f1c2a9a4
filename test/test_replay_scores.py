"""The replay verdict's scores on known series (no ROS): horizon errors, baselines, kept-up checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffusion_policy_ros.data.replay_metrics import BagReference, JointSeries, TrajectorySeries
from diffusion_policy_ros.data.replay_scores import (ReplayThresholds, horizon_scores, max_gap, summary_row,
                                                     summary_table, verdict)

JOINTS = ('a', 'b')
PERIOD = 0.1


def path(t: np.ndarray) -> np.ndarray:
    """The demonstrated motion: both joints ramp at 0.5 rad/s."""
    return np.stack([0.5 * t, -0.5 * t], axis=-1)


def reference(duration: float = 4.0) -> BagReference:
    stamps = np.arange(0.0, duration, PERIOD)
    due = stamps + PERIOD
    commands = TrajectorySeries(JOINTS, stamps, path(due), due, np.ones(len(stamps), int),
                                [path(d[None]) for d in due], [d[None] for d in due])
    state_t = np.arange(0.0, duration, 0.01)
    states = JointSeries(JOINTS, state_t, path(state_t))  # the arm follows the demonstration
    return BagReference(Path('bag'), {}, 0.0, duration, states, commands)


def chunks(predict, duration: float = 3.0, points: int = 8) -> TrajectorySeries:
    """One message per tick, `points` points due (k + 1) periods later, positions `predict(t, due)`."""
    stamps = np.arange(0.05, duration, PERIOD)
    due = [t + PERIOD * np.arange(1, points + 1) for t in stamps]
    values = [predict(t, d) for t, d in zip(stamps, due)]
    return TrajectorySeries(JOINTS, stamps, np.stack([v[0] for v in values]), np.array([d[0] for d in due]),
                            np.full(len(stamps), points), values, due)


def test_a_policy_on_the_demonstrated_path_scores_zero_and_beats_every_baseline():
    scores = horizon_scores(reference(), chunks(lambda t, due: path(due)))
    assert scores['policy']['horizon']['mae'] == pytest.approx(0.0, abs=1e-9)
    # 8 points 0.1-0.8 s ahead: holding still is wrong by 0.5 rad/s x the lead time, 0.225 rad on average
    assert scores['baselines']['hold_measured']['horizon']['mae'] == pytest.approx(0.5 * 0.45, abs=0.01)
    assert scores['baselines']['start_pose']['horizon']['mae'] > 0.5
    assert scores['by_offset_mae'] == pytest.approx([0.0] * 8, abs=1e-9)


def test_a_policy_that_holds_scores_like_the_hold_baseline_and_fails():
    ref = reference()
    holding = chunks(lambda t, due: np.repeat(path(np.array([t])), len(due), axis=0))
    scores = horizon_scores(ref, holding)
    assert scores['policy']['horizon']['mae'] == pytest.approx(
        scores['baselines']['hold_measured']['horizon']['mae'], rel=0.05)
    # its first action alone looks fine: 0.1 s of lead, 0.05 rad
    assert scores['policy']['first']['mae'] == pytest.approx(0.05, abs=0.01)
    report = {'horizon': scores, 'sim_duration_s': 4.0, 'fell_behind_s': 0.0, 'output_rate_hz': 10.0,
              'max_output_gap_s': 0.1}
    result = verdict(report, ReplayThresholds(), control_rate_hz=10.0)
    assert result['result'] == 'FAIL'
    assert any('hold measured baseline' in text for text in result['failed'])


def test_points_beyond_the_horizon_are_not_scored():
    # right for the first 0.5 s, then 1 rad off: a 0.5 s horizon sees no error, 1 s does
    def half_right(t, due):
        return path(due) + np.where(due - t > 0.55, 1.0, 0.0)[:, None]
    short = horizon_scores(reference(), chunks(half_right), horizon_s=0.5)
    long = horizon_scores(reference(), chunks(half_right), horizon_s=1.0)
    assert short['policy']['horizon']['mae'] == pytest.approx(0.0, abs=1e-9)
    assert long['policy']['horizon']['mae'] == pytest.approx(3 / 8, abs=0.02)
    assert long['policy']['end']['mae'] == pytest.approx(1.0, abs=1e-6)


def test_falling_behind_and_gaps_fail_the_verdict_with_their_numbers():
    good = horizon_scores(reference(), chunks(lambda t, due: path(due)))
    base = {'horizon': good, 'sim_duration_s': 4.0, 'fell_behind_s': 0.0, 'output_rate_hz': 10.0,
            'max_output_gap_s': 0.1, 'guard': {'max_gap_s': 0.1}}
    assert verdict(base, ReplayThresholds(), 10.0)['result'] == 'PASS'
    slow = dict(base, fell_behind_s=1.2, output_rate_hz=6.0)
    result = verdict(slow, ReplayThresholds(), 10.0)
    assert result['result'] == 'FAIL' and len(result['failed']) == 2
    assert any('fell behind' in text and '0.3' in text for text in result['failed'])
    gap = dict(base, guard={'max_gap_s': 0.7})
    assert verdict(gap, ReplayThresholds(), 10.0)['failed'] == ['longest gap between guard outputs, control '
                                                                'periods: 7 (<= 3)']
    interrupted = dict(base, replay={'interrupted': True})
    assert verdict(interrupted, ReplayThresholds(), 10.0)['result'] == 'FAIL'


def test_thresholds_from_the_command_line_and_the_summary_table():
    assert ReplayThresholds.with_overrides(['max_ratio_to_baseline=0.5']).max_ratio_to_baseline == 0.5
    with pytest.raises(ValueError, match="unknown key.*'max_ratio'.*max_ratio_to_baseline"):
        ReplayThresholds.with_overrides(['max_ratio=0.5'])
    with pytest.raises(ValueError, match="horizon_s: expected a number, got 'soon'"):
        ReplayThresholds.with_overrides(['horizon_s=soon'])
    assert max_gap(np.array([1.0, 1.1, 1.5]), 0.9, 1.6) == pytest.approx(0.4)
    report = {'horizon': horizon_scores(reference(), chunks(lambda t, due: path(due))), 'sim_duration_s': 4.0,
              'fell_behind_s': 0.4, 'verdict': {'result': 'PASS', 'failed': []}}
    rows = [summary_row('bags/one', report), summary_row('bags/two', None, 'truncated')]
    table = summary_table(rows).splitlines()
    assert len(table) == 4 and 'PASS' in table[2] and '10%' in table[2] and 'ERROR' in table[3]


def test_waiting_for_the_first_chunk_is_start_up_not_falling_behind():
    from diffusion_policy_ros.data.replay_metrics import DiagnosticSample
    from diffusion_policy_ros.data.replay_scores import fell_behind

    def sample(stamp, used, no_chunk, stale=0.0):
        return DiagnosticSample(stamp, 'policy_node: policy', 0, '', {
            'chunks_used': str(used), 'hold_s NO_CHUNK': str(no_chunk), 'hold_s STALE_OBSERVATION': str(stale)})
    samples = [sample(0.1, 0, 0.1), sample(0.3, 0, 0.3), sample(0.4, 1, 0.3), sample(2.0, 9, 0.5, 0.4)]
    assert fell_behind(samples) == (pytest.approx(0.6), 0.4)
    never = [sample(0.1, 0, 0.1), sample(3.0, 0, 3.0)]
    assert fell_behind(never) == (pytest.approx(3.0), None)
    assert fell_behind([]) == (0.0, None)


def test_a_suite_pools_the_horizon_comparison_and_needs_every_bag_to_keep_up():
    from diffusion_policy_ros.data.replay_scores import suite_verdict
    ref = reference()

    def report(predict, fell_behind_s=0.0):
        out = {'input_bag': 'bag', 'horizon': horizon_scores(ref, chunks(predict)), 'sim_duration_s': 4.0,
               'fell_behind_s': fell_behind_s, 'output_rate_hz': 10.0, 'max_output_gap_s': 0.1}
        out['verdict'] = verdict(out, ReplayThresholds(), 10.0)
        return out
    good = report(lambda t, due: path(due))
    worse = report(lambda t, due: path(due) + 0.19)  # 0.19 rad off everywhere: no better than holding
    assert worse['verdict']['result'] == 'FAIL'
    suite = suite_verdict([good, good, worse], ReplayThresholds())
    assert suite['result'] == 'PASS' and suite['bags_passing_alone'] == 2
    assert suite['pooled_horizon_mae']['policy'] == pytest.approx(0.19 / 3, abs=1e-6)
    slow = report(lambda t, due: path(due), fell_behind_s=2.0)
    suite = suite_verdict([good, slow], ReplayThresholds())
    assert suite['result'] == 'FAIL' and len(suite['failed']) == 1 and 'fell behind' in suite['failed'][0]


def test_a_policy_that_published_nothing_has_no_score_and_fails():
    empty = TrajectorySeries(JOINTS, np.zeros(0), np.zeros((0, 2)), np.zeros(0), np.zeros(0, int), [], [])
    scores = horizon_scores(reference(), empty)
    assert scores['policy'] is None and scores['by_offset_mae'] == [] and scores['ticks'] == 0
    report = {'horizon': scores, 'sim_duration_s': 4.0, 'fell_behind_s': 4.0, 'output_rate_hz': None,
              'max_output_gap_s': None}
    result = verdict(report, ReplayThresholds(), 10.0)
    assert result['result'] == 'FAIL' and all(not c['ok'] for c in result['checks'])

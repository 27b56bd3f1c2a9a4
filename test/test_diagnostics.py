"""Typed diagnostics: what a node encodes is what replay, the demo and the tests decode."""
from __future__ import annotations

import math

import pytest

from diffusion_policy_ros.diagnostics import GuardStatus, PolicyStatus


def full_policy_status() -> PolicyStatus:
    return PolicyStatus(
        state='HOLD', reason='NO_CHUNK: waiting', inference_latency_p50_ms=51.25, inference_latency_p99_ms=64.5,
        inference_count=12, inference_errors=1, chunk_age_s=0.125, dropped_actions=3, chunks_used=11,
        chunks_skipped=2, max_boundary_step=0.0123, obs_age_s={'joint_states': 0.012, 'camera': None},
        hold_s={'NO_CHUNK': 0.6, 'STOPPED': 3.2}, rejected={'NON_FINITE': 2}, device='cpu', published=300,
        num_inference_steps=3, n_action_steps=4, control_rate_hz=15.0, publish_period_mean_s=0.0667)


def test_a_policy_status_round_trips_through_its_key_values():
    status = full_policy_status()
    values = status.to_values()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())
    # the keys ROS tools show: one per scalar, "<field> <entry>" per mapping entry, `never` for no message
    assert values['hold_s NO_CHUNK'] == '0.6' and values['obs_age_s camera'] == 'never'
    assert values['rejected NON_FINITE'] == '2' and values['num_inference_steps'] == '3'
    assert values['inference_latency_p50_ms'] == '51.25' and values['control_rate_hz'] == '15'
    assert PolicyStatus.from_values(values) == status


def test_a_guard_status_round_trips_and_says_whether_it_is_healthy():
    status = GuardStatus(rejected_messages=1, last_action='replace', last_reason='collision with box',
                         backend='embedded', checks_per_second=9.5, check_latency_p50_ms=0.4, chunks_reviewed=40,
                         blocked_chunks=3, fallback_active=True, scene_objects='table,box',
                         output_latency_scene_p99_ms=12.25)
    decoded = GuardStatus.from_values(status.to_values())
    assert decoded.to_values() == status.to_values()  # (unset latencies are NaN, which equals nothing)
    assert decoded.blocked_chunks == 3 and decoded.output_latency_scene_p99_ms == 12.25
    assert decoded.fallback_active is True and not decoded.healthy
    assert GuardStatus(last_action='pass').healthy and not GuardStatus(last_action='pass', joint_state='stale').healthy


def test_unknown_keys_are_ignored_and_missing_ones_default():
    """A newer node's extra keys and an older node's missing ones do not break a replay of its bag."""
    decoded = PolicyStatus.from_values({'state': 'RUNNING', 'chunks_used': '4', 'a_future_value': 'x'})
    assert decoded.state == 'RUNNING' and decoded.chunks_used == 4
    assert decoded.hold_s == {} and math.isnan(decoded.inference_latency_p50_ms)


def test_a_malformed_value_is_an_error_naming_its_key():
    with pytest.raises(ValueError, match="diagnostic 'chunks_used': 'many' is not a int"):
        PolicyStatus.from_values({'chunks_used': 'many'})
    with pytest.raises(ValueError, match="diagnostic 'hold_s NO_CHUNK'"):
        PolicyStatus.from_values({'hold_s NO_CHUNK': 'long'})


def test_nan_and_unknown_numbers_are_written_as_nan():
    values = PolicyStatus().to_values()
    assert values['inference_latency_p99_ms'] == 'nan' and values['publish_period_mean_s'] == 'nan'
    assert math.isnan(PolicyStatus.from_values(values).chunk_age_s)

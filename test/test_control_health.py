"""RUNNING/HOLD decisions, automatic resume, latches, hold-time accounting, log throttling."""
import pytest

from diffusion_policy_ros.control.health import HealthMonitor, HealthState, HoldCode, HoldReason
from diffusion_policy_ros.control.stats import RollingPercentiles

CAMERA, JOINTS = '/camera/color/image_raw', '/joint_states'


def fresh(now: float) -> dict:
    return {CAMERA: now - 0.03, JOINTS: now - 0.01}


def test_camera_stops_then_resumes_hold_to_running_with_reason_and_hold_time():
    monitor = HealthMonitor(max_obs_age_s=0.5)
    assert monitor.update(1.0, fresh(1.0)).running
    last_image = 1.0
    verdict = None
    now = 1.0
    while now < 2.0:  # camera silent from here on, joints keep coming
        now = round(now + 0.1, 3)
        verdict = monitor.update(now, {CAMERA: last_image, JOINTS: now})
        if not verdict.running:
            break
    assert verdict.state is HealthState.HOLD
    assert now <= last_image + 0.5 + 0.1  # within max_obs_age_s + one period
    assert verdict.reason.code is HoldCode.STALE_OBSERVATION and CAMERA in verdict.reason.text
    assert verdict.log_message and 'HOLD' in verdict.log_message
    for _ in range(5):
        now = round(now + 0.1, 3)
        assert not monitor.update(now, {CAMERA: last_image, JOINTS: now}).running
    now = round(now + 0.1, 3)
    verdict = monitor.update(now, fresh(now))  # camera is back
    assert verdict.running and verdict.reason is None
    assert 'RUNNING' in verdict.log_message
    assert monitor.hold_seconds[HoldCode.STALE_OBSERVATION] == pytest.approx(0.6)


def test_faults_and_missing_streams_hold_in_precedence_order():
    monitor = HealthMonitor(max_obs_age_s=0.5)
    error = HoldReason(HoldCode.INFERENCE_ERROR, 'boom', 'inference')
    no_chunk = HoldReason(HoldCode.NO_CHUNK, 'waiting for the first chunk')
    assert monitor.update(0.0, {CAMERA: None, JOINTS: 0.0}, [error]).reason.code is HoldCode.NO_OBSERVATION
    assert monitor.update(0.1, fresh(0.1), [None, error, no_chunk]).reason is error
    assert monitor.update(0.2, fresh(0.2), [no_chunk]).reason is no_chunk
    assert monitor.update(0.3, fresh(0.3), [None]).running


def test_future_stamps_are_a_clock_mismatch():
    monitor = HealthMonitor(max_obs_age_s=0.5)
    verdict = monitor.update(100.0, {CAMERA: 1e6, JOINTS: 100.0})
    assert verdict.reason.code is HoldCode.STALE_OBSERVATION and 'use_sim_time' in verdict.reason.text


def test_estop_latches_until_cleared_and_stop_until_started():
    monitor = HealthMonitor(max_obs_age_s=0.5)
    monitor.set_estop()
    for i in range(3):
        assert monitor.update(i * 0.1, fresh(i * 0.1)).reason.code is HoldCode.ESTOP
    monitor.stop()
    monitor.clear_estop()
    assert monitor.update(0.3, fresh(0.3)).reason.code is HoldCode.STOPPED
    monitor.start()
    assert monitor.update(0.4, fresh(0.4)).running


def test_a_persisting_reason_is_logged_once_then_throttled():
    monitor = HealthMonitor(max_obs_age_s=0.5, log_throttle_s=5.0)
    messages = []
    for i in range(100):  # 10 s of the same HOLD at 10 Hz, the age text changing every tick
        now = 10.0 + i * 0.1
        verdict = monitor.update(now, {CAMERA: 9.0, JOINTS: now})
        if verdict.log_message:
            messages.append(verdict.log_message)
    assert len(messages) == 2  # once, plus a reminder after 5 s
    assert messages[1].startswith('still HOLD')


def test_flapping_input_does_not_flood_the_log():
    monitor = HealthMonitor(max_obs_age_s=0.5, log_throttle_s=5.0)
    logged = 0
    for i in range(40):
        now = i * 0.1
        camera = now if i % 2 else now - 1.0  # stale every other tick
        logged += bool(monitor.update(now, {CAMERA: camera, JOINTS: now}).log_message)
    assert monitor.transitions >= 39
    assert logged <= 2  # one HOLD, one RUNNING


def test_rolling_percentiles():
    stats = RollingPercentiles(capacity=100)
    assert stats.summary()['count'] == 0
    for value in range(1000):  # only the last 100 (900..999) stay
        stats.add(float(value))
    assert stats.p50 == pytest.approx(949.5)
    assert stats.p99 == pytest.approx(998.01)
    assert stats.total_count == 1000
    assert stats.summary()['max'] == 999.0
    with pytest.raises(ValueError, match='non-finite'):
        stats.add(float('inf'))

"""Stamped ring buffers and the observation window the policy sees at each tick."""
import threading

import numpy as np
import pytest

from diffusion_policy_ros.control.health import HoldCode, HoldReason
from diffusion_policy_ros.control.observation import ObservationHistory, ObservationWindow, StampedRingBuffer

JOINTS = ('j1', 'j2', 'j3')


def test_latest_not_newer_returns_the_newest_entry_at_or_before_t():
    buffer = StampedRingBuffer[str](capacity=8)
    for stamp, value in ((1.0, 'a'), (2.0, 'b'), (3.0, 'c')):
        buffer.push(stamp, value)
    assert buffer.latest_not_newer(0.99) is None
    assert buffer.latest_not_newer(1.0) == (1.0, 'a')  # a message stamped exactly t counts
    assert buffer.latest_not_newer(2.5) == (2.0, 'b')
    assert buffer.latest_not_newer(99.0) == (3.0, 'c')
    assert buffer.latest() == (3.0, 'c')


def test_ring_buffer_keeps_stamp_order_and_capacity():
    buffer = StampedRingBuffer[int](capacity=3)
    for stamp in (1.0, 3.0, 2.0, 4.0):  # one out of order
        buffer.push(stamp, int(stamp))
    assert len(buffer) == 3
    assert buffer.latest_not_newer(2.9) == (2.0, 2)
    assert buffer.latest_not_newer(1.5) is None  # 1.0 was evicted as the oldest
    buffer.push(0.5, 0)  # older than everything kept: dropped, not evicting newer data
    assert buffer.latest_not_newer(1.0) is None
    with pytest.raises(ValueError, match='stamp'):
        buffer.push(float('nan'), 1)


def test_ring_buffer_is_consistent_under_concurrent_pushes_and_reads():
    buffer = StampedRingBuffer[float](capacity=50)
    errors: list[str] = []

    def writer(offset: int) -> None:
        for i in range(3000):
            stamp = i * 2 + offset
            buffer.push(stamp, stamp)  # the value always equals its stamp

    def reader() -> None:
        for i in range(3000):
            entry = buffer.latest_not_newer(float(i * 2))
            if entry is not None and (entry[0] != entry[1] or entry[0] > i * 2):
                errors.append(f'bad entry {entry} for t={i * 2}')

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(buffer) == 50
    stamps = [buffer.latest_not_newer(s)[0] for s in range(5950, 6000)]
    assert stamps == list(range(5950, 6000))  # both writers' entries, sorted, the newest 50


def make_history(**kw) -> ObservationHistory:
    return ObservationHistory(['cam'], JOINTS, stream_names={'cam': '/camera/image', 'joint_states': '/js'},
                              **kw)


def image(value: int) -> np.ndarray:
    return np.full((4, 5, 3), value, dtype=np.uint8)


def test_window_samples_latest_not_newer_at_each_step_and_reorders_joints():
    history = make_history()
    for i in range(10):  # camera at 10 Hz, joint states at 20 Hz in another joint order, extra joint
        history.push_image('cam', 1.0 + 0.1 * i, image(i))
    for i in range(20):
        t = 1.0 + 0.05 * i
        history.push_joint_state(t, ['j3', 'gripper', 'j1', 'j2'], [30 + t, -1.0, 10 + t, 20 + t])
    window = history.build_window(now=1.77, n_obs_steps=2, period=0.1)
    assert isinstance(window, ObservationWindow)
    np.testing.assert_allclose(window.sample_times, [1.67, 1.77])
    assert window.images['cam'].shape == (2, 4, 5, 3)
    assert [int(window.images['cam'][k, 0, 0, 0]) for k in range(2)] == [6, 7]  # stamps 1.6, 1.7
    np.testing.assert_allclose(window.stamps['joint_states'], [1.65, 1.75])
    np.testing.assert_allclose(window.state, [[11.65, 21.65, 31.65], [11.75, 21.75, 31.75]], rtol=1e-6)
    assert window.state.dtype == np.float32
    assert window.obs_time == pytest.approx(1.75)  # newest stamp used (joint state beats camera 1.7)
    inputs = window.as_policy_input()
    assert set(inputs) == {'cam', 'state'}


def test_missing_joint_holds_and_names_it():
    history = make_history()
    history.push_image('cam', 1.0, image(0))
    history.push_joint_state(1.0, ['j1', 'j3'], [0.0, 0.0])
    reason = history.build_window(now=1.0, n_obs_steps=1, period=0.1)
    assert isinstance(reason, HoldReason) and reason.code is HoldCode.MISSING_JOINT
    assert "'j2'" in reason.text and '/js' in reason.text


def test_non_finite_joint_state_holds_and_names_the_joint():
    history = make_history()
    history.push_image('cam', 1.0, image(0))
    history.push_joint_state(1.0, JOINTS, [0.0, float('nan'), 0.0])
    reason = history.build_window(now=1.0, n_obs_steps=1, period=0.1)
    assert reason.code is HoldCode.NON_FINITE and "'j2'" in reason.text
    assert history.latest_joint_positions().code is HoldCode.NON_FINITE


def test_stale_or_absent_stream_holds_and_names_the_topic():
    history = make_history()
    history.push_joint_state(1.9, JOINTS, [0.0, 0.0, 0.0])
    history.push_joint_state(2.0, JOINTS, [0.0, 0.0, 0.0])
    reason = history.build_window(now=2.0, n_obs_steps=2, period=0.1)
    assert reason.code is HoldCode.NO_OBSERVATION and '/camera/image' in reason.text
    history.push_image('cam', 1.0, image(0))  # the camera stopped a second ago
    reason = history.build_window(now=2.0, n_obs_steps=2, period=0.1, max_age_s=0.5)
    assert reason.code is HoldCode.STALE_OBSERVATION and '/camera/image' in reason.text
    assert isinstance(history.build_window(now=2.0, n_obs_steps=2, period=0.1), ObservationWindow)


def test_window_needs_history_for_every_step():
    history = make_history()
    history.push_image('cam', 1.0, image(0))
    history.push_joint_state(1.0, JOINTS, [0.0, 0.0, 0.0])
    reason = history.build_window(now=1.05, n_obs_steps=2, period=0.1)  # needs a message at <= 0.95
    assert reason.code is HoldCode.NO_OBSERVATION and 't=0.950' in reason.text


def test_malformed_image_holds_with_bad_image():
    history = make_history()
    history.push_joint_state(1.0, JOINTS, [0.0, 0.0, 0.0])
    history.push_image('cam', 0.9, image(0))
    history.push_image('cam', 1.0, np.zeros((4, 5), dtype=np.uint8))
    reason = history.build_window(now=1.0, n_obs_steps=2, period=0.1)
    assert reason.code is HoldCode.BAD_IMAGE and 'stamp 1.000' in reason.text


def test_bad_pushes_raise_naming_the_problem():
    history = make_history()
    with pytest.raises(KeyError, match='wrist_cam'):
        history.push_image('wrist_cam', 1.0, image(0))
    with pytest.raises(ValueError, match='2 names but 3 positions'):
        history.push_joint_state(1.0, ['j1', 'j2'], [0.0, 0.0, 0.0])


def test_latest_stamps_and_measured_positions_for_health_and_hold():
    history = make_history()
    assert history.latest_stamps() == {'/camera/image': None, '/js': None}
    assert history.latest_joint_positions().code is HoldCode.NO_OBSERVATION
    history.push_joint_state(3.0, ['j2', 'j3', 'j1'], [2.0, 3.0, 1.0])
    np.testing.assert_allclose(history.latest_joint_positions(), [1.0, 2.0, 3.0])
    assert history.latest_stamps()['/js'] == 3.0

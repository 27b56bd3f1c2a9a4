"""BagWriter -> read_messages round trip in both storages, and bags that cannot be read."""
import numpy as np
import pytest

from diffusion_policy_ros.data.bags import (BagError, BagWriter, bag_topics, find_bags, header, msg_class,
                                           read_messages)
from diffusion_policy_ros.data.image_codec import message_to_rgb8

SEC = 1_000_000_000


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_writer_roundtrip(tmp_path, storage):
    rgb = np.random.default_rng(1).integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
    bag = tmp_path / 'demo'
    with BagWriter(bag, storage) as writer:
        writer.write_image('/cam', 5 * SEC + 7, rgb)
        writer.write_image('/cam_bgr', 5 * SEC + 8, rgb[:, :, ::-1], encoding='bgr8', step=30)
        writer.write_joint_state('/joint_states', 5 * SEC + 9, ['b', 'a'], [2.0, 1.0], velocities=[0.5, 0.25])
        writer.write_joint_trajectory('/cmd', 5 * SEC + 10, ['a', 'b'], np.array([[1.0, 2.0], [3.0, 4.0]]), 0.1)
        writer.write_bool('/episode', 6 * SEC, True)
        writer.write_compressed_image('/cam/compressed', 6 * SEC + 1, rgb)
    assert bag_topics(bag)['/joint_states'] == ('sensor_msgs/msg/JointState', 1)
    messages = {m.topic: m for m in read_messages(bag)}
    assert messages['/cam'].stamp_ns == 5 * SEC + 7
    np.testing.assert_array_equal(message_to_rgb8(messages['/cam'].msg), rgb)
    np.testing.assert_array_equal(message_to_rgb8(messages['/cam_bgr'].msg), rgb)
    np.testing.assert_array_equal(message_to_rgb8(messages['/cam/compressed'].msg), rgb)
    js = messages['/joint_states'].msg
    assert list(js.name) == ['b', 'a'] and js.position.tolist() == [2.0, 1.0] and js.velocity.tolist() == [0.5, 0.25]
    traj = messages['/cmd'].msg
    assert [p.positions.tolist() for p in traj.points] == [[1.0, 2.0], [3.0, 4.0]]
    assert [(p.time_from_start.sec, p.time_from_start.nanosec) for p in traj.points] == [(0, 100_000_000),
                                                                                        (0, 200_000_000)]
    # Bool has no header: its stamp is the log time
    assert messages['/episode'].stamp_ns == 6 * SEC and messages['/episode'].msg.data is True
    assert [m.topic for m in read_messages(bag, topics=['/cmd', '/cam'])] == ['/cam', '/cmd']


def test_zero_header_stamp_means_log_time(tmp_path):
    """Controllers' commands often carry stamp 0 ('start now'): the recording time stands in."""
    with BagWriter(tmp_path / 'bag') as writer:
        traj = msg_class('trajectory_msgs/msg/JointTrajectory')(header=header(0), joint_names=['a'], points=[])
        writer.write('/cmd', 'trajectory_msgs/msg/JointTrajectory', traj, 7 * SEC)
    assert [m.stamp_ns for m in read_messages(tmp_path / 'bag')] == [7 * SEC]


def test_missing_bag_is_named(tmp_path):
    with pytest.raises(BagError, match='nowhere'):
        list(read_messages(tmp_path / 'nowhere'))


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_truncated_bag_is_named(tmp_path, storage):
    bag = tmp_path / 'cut'
    with BagWriter(bag, storage) as writer:
        for i in range(50):
            writer.write_image('/cam', i * SEC // 10, np.full((32, 32, 3), i, np.uint8))
    storage_file = next(p for p in bag.iterdir() if p.suffix in ('.mcap', '.db3'))
    storage_file.write_bytes(storage_file.read_bytes()[: storage_file.stat().st_size // 2])
    with pytest.raises(BagError, match="'.*cut'"):
        list(read_messages(bag))


def test_find_bags_scans_directories(tmp_path):
    for name in ('b2', 'b1'):
        with BagWriter(tmp_path / 'set' / name) as writer:
            writer.write_bool('/x', 1, True)
    assert [p.name for p in find_bags([tmp_path / 'set'])] == ['b1', 'b2']
    assert find_bags([tmp_path / 'set' / 'b2']) == [tmp_path / 'set' / 'b2']
    with pytest.raises(BagError, match='missing_dir'):
        find_bags([tmp_path / 'missing_dir'])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(BagError, match='no rosbag2.*empty'):
        find_bags([tmp_path / 'empty'])

"""Recorded demonstrations are rosbag2 MCAP with a real robot's topics, types, rates and sim-time stamps."""
import argparse
import json

import numpy as np
from rosbags.highlevel import AnyReader

from diffusion_policy_ros.data.bags import TYPESTORE, BagWriter
from diffusion_policy_ros.robot_description import PANDA_JOINTS
from diffusion_policy_ros.sim import record_demos
from diffusion_policy_ros.sim.arm import SimConfig
from diffusion_policy_ros.sim.record_demos import COMMAND_TOPIC, IMAGE_TOPIC, JOINT_STATES_TOPIC, record_episode


def _read(bag):
    """topic -> (msgtype, [header stamps ns], [messages]) read back with plain rosbags."""
    topics = {}
    with AnyReader([bag], default_typestore=TYPESTORE) as reader:
        for connection, _log_time, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            entry = topics.setdefault(connection.topic, (connection.msgtype, [], []))
            entry[1].append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
            entry[2].append(msg)
    return topics


def _rate(stamps):
    return 1e9 / np.median(np.diff(stamps))


def test_recorded_episode_has_the_three_topics_at_their_rates(tmp_path):
    bag = tmp_path / 'episode'
    with BagWriter(bag, storage='mcap') as writer:
        record = record_episode('reach_around', 4, writer, cfg=SimConfig(task='reach_around'))
    assert record.success and record.side == 'left'
    assert list(bag.glob('*.mcap'))
    topics = _read(bag)
    assert set(topics) == {IMAGE_TOPIC, JOINT_STATES_TOPIC, COMMAND_TOPIC}

    image_type, image_stamps, images = topics[IMAGE_TOPIC]
    assert image_type == 'sensor_msgs/msg/Image'
    assert images[0].encoding == 'rgb8' and (images[0].height, images[0].width) == (96, 96)
    assert len(images[0].data) == 96 * 96 * 3
    assert 10 <= _rate(image_stamps) <= 30

    state_type, state_stamps, states = topics[JOINT_STATES_TOPIC]
    assert state_type == 'sensor_msgs/msg/JointState'
    assert list(states[0].name) == list(PANDA_JOINTS) and len(states[0].velocity) == len(PANDA_JOINTS)
    assert _rate(state_stamps) >= 50

    command_type, command_stamps, commands = topics[COMMAND_TOPIC]
    assert command_type == 'trajectory_msgs/msg/JointTrajectory'
    assert _rate(command_stamps) == 10.0
    assert list(commands[0].joint_names) == list(PANDA_JOINTS)
    first = commands[0].points[0]
    assert first.time_from_start.sec == 0 and first.time_from_start.nanosec == 100_000_000

    # Header stamps are sim time from 0 and all streams cover the same episode.
    assert image_stamps[0] == state_stamps[0] == command_stamps[0] == 0
    assert len(commands) == record.commands and len(states) == record.joint_states
    assert abs(state_stamps[-1] / 1e9 - record.duration_s) < 1e-6
    # The arm really moved the way it was told: the final joint state is near the last command.
    np.testing.assert_allclose(states[-1].position[:7], commands[-1].points[0].positions[:7], atol=0.05)


def test_cli_keeps_only_successful_episodes_and_writes_a_summary(tmp_path, monkeypatch):
    # Seeds fail when the episode limit is shorter than the expert needs; force one failure by
    # wrapping the config: the second attempt (seed 1) gets an impossible 0.5 s limit.
    real_record = record_demos.record_episode

    def flaky_record(task, seed, writer, *, cfg, arm):
        if seed == 1:
            arm.cfg.episode_seconds = 0.5
        try:
            return real_record(task, seed, writer, cfg=cfg, arm=arm)
        finally:
            arm.cfg.episode_seconds = None

    monkeypatch.setattr(record_demos, 'record_episode', flaky_record)
    parser = argparse.ArgumentParser()
    record_demos.add_arguments(parser)
    args = parser.parse_args(['--task', 'reach_around', '--episodes', '2', '--out', str(tmp_path / 'demos')])
    assert record_demos.run(args) == 0
    out = tmp_path / 'demos'
    assert sorted(p.name for p in out.iterdir()) == ['demos.json', 'episode_0000', 'episode_0001']
    assert (out / 'episode_0001' / 'episode_0001.mcap').is_file()
    summary = json.loads((out / 'demos.json').read_text())
    assert [e['seed'] for e in summary['kept']] == [0, 2]
    assert [e['seed'] for e in summary['failed']] == [1] and summary['retried'] == 1
    assert summary['sides'] == {'left': 2, 'right': 0}

"""Bags -> zarr episodes: resampled values, joint order, episode ends, action sources, broken inputs."""
import dataclasses

import numpy as np
import pytest
import yaml
import zarr
from data_helpers import (ARM, MODEL_HW, MS, SEC, T0, DemoSpec, command_points, demo_config, front_rgb,
                          joint_positions, latest, wrist_rgb, write_demo_bag)

from diffusion_policy_ros.cli import main as cli_main
from diffusion_policy_ros.data.bags import BagWriter, header, msg_class
from diffusion_policy_ros.data.convert import (ActionConfig, CameraConfig, ConfigError, convert_bags,
                                               load_dataset_config)

TICKS = [T0 + 50 * MS + i * 100 * MS for i in range(20)]  # from the wrist camera's first frame, 10 Hz


def open_dataset(path):
    root = zarr.open_group(str(path), mode='r')
    return root, {key: root['data'][key][:] for key in root['data'].array_keys()}


def expected_episode(spec: DemoSpec, ticks: list[int], point: str = 'first') -> dict[str, np.ndarray]:
    """Brute-force oracle of the resampler for the demo bag."""
    state = np.array([[joint_positions(spec.joints[latest(spec.joints, t)])[n] for n in ARM] for t in ticks])
    front = np.stack([front_rgb(latest(spec.front, t))[: MODEL_HW[0], : MODEL_HW[1]] for t in ticks])
    wrist = np.stack([wrist_rgb(latest(spec.wrist, t))[: MODEL_HW[0], : MODEL_HW[1]] for t in ticks])
    action = []
    for t in ticks:
        m = latest(spec.commands, t)
        points = command_points(m, spec.command_points)
        due = [spec.commands[m] + round((k + 1) * spec.command_dt * SEC) for k in range(len(points))]
        k = 0 if point == 'first' else next((k for k, d in enumerate(due) if d > t), len(points) - 1)
        action.append(points[k])
    return {'state': state, 'front': front, 'wrist': wrist, 'action': np.array(action),
            'timestamp': (np.array(ticks) - ticks[0]) / SEC}


def test_both_storages_two_cameras_extra_joints_and_command_topic(tmp_path):
    bags = [write_demo_bag(tmp_path / 'bags' / 'a_mcap', storage='mcap'),
            write_demo_bag(tmp_path / 'bags' / 'b_sqlite', storage='sqlite3')]
    summary = convert_bags(bags, demo_config(), tmp_path / 'ds.zarr', progress=False)
    assert (summary.episodes, summary.frames, summary.skipped) == (2, 40, [])
    root, data = open_dataset(tmp_path / 'ds.zarr')
    assert root['meta/episode_ends'][:].tolist() == [20, 40]
    assert root['meta/episode_ends'].dtype == np.int64
    assert root.metadata.zarr_format == 2
    expected = expected_episode(DemoSpec(), TICKS)
    for key in ('state', 'action', 'front', 'wrist', 'timestamp'):
        np.testing.assert_allclose(data[key][:20], expected[key], err_msg=key, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(data[key][20:], data[key][:20], err_msg=key)
    # spot checks against hand-computed values
    np.testing.assert_allclose(data['state'][0], [1.05, 2.05, 3.05], atol=1e-6)  # joint order of config
    assert data['front'][3, 0, 0].tolist() == [7, 100, 7]  # frame 7 of 20 Hz at tick 0.35 s
    assert data['wrist'][3, 0, 0].tolist() == [200, 1, 30]  # bgr8 frame 1 of 5 Hz, in rgb order
    np.testing.assert_allclose(data['action'][:5, 0], [100, 100, 100, 100, 101], atol=1e-6)
    np.testing.assert_allclose(data['timestamp'][:3], [0.0, 0.1, 0.2])
    assert data['state'].dtype == np.float32 and data['action'].dtype == np.float32
    assert data['timestamp'].dtype == np.float64 and data['front'].shape == (40, *MODEL_HW, 3)
    attrs = dict(root.attrs)
    assert attrs['joint_names'] == list(ARM) and attrs['camera_keys'] == ['front', 'wrist']
    assert attrs['image_size'] == list(MODEL_HW) and attrs['control_rate_hz'] == 10.0
    assert attrs['source_bags'] == [str(b) for b in bags] and attrs['skipped'] == []


def test_action_due_point_and_next_joint_state(tmp_path):
    bag = write_demo_bag(tmp_path / 'bag')
    convert_bags([bag], demo_config(action=ActionConfig('joint_trajectory', '/cmd', 'due')), tmp_path / 'due',
                 progress=False)
    _root, due = open_dataset(tmp_path / 'due')
    np.testing.assert_allclose(due['action'], expected_episode(DemoSpec(), TICKS, 'due')['action'], atol=1e-5)
    # ticks 0..4 are 30, 130, 230, 330 ms after command 0 (points due at 100/200/300 ms), then command 1
    np.testing.assert_allclose(due['action'][:5, 0], [100.0, 100.1, 100.2, 100.2, 101.0], atol=1e-5)
    # a point due exactly at the tick has been reached: the action is the next one
    aligned = DemoSpec(commands=[T0 + 50 * MS + i * 400 * MS for i in range(5)])
    convert_bags([write_demo_bag(tmp_path / 'aligned', aligned)],
                 demo_config(action=ActionConfig('joint_trajectory', '/cmd', 'due')), tmp_path / 'due2', progress=False)
    _root, due2 = open_dataset(tmp_path / 'due2')
    np.testing.assert_allclose(due2['action'][:5, 0], [100.0, 100.1, 100.2, 100.2, 101.0], atol=1e-5)

    convert_bags([bag], demo_config(action=ActionConfig('next_joint_state')), tmp_path / 'next', progress=False)
    _root, nxt = open_dataset(tmp_path / 'next')
    np.testing.assert_array_equal(nxt['action'][:-1], nxt['state'][1:])
    np.testing.assert_array_equal(nxt['action'][-1], nxt['state'][-1])  # the last tick holds position


def test_split_topic_makes_episodes(tmp_path):
    spec = DemoSpec(split=[(T0, True), (T0 + 300 * MS, True), (T0 + 800 * MS, False), (T0 + 900 * MS, False),
                           (T0 + 1000 * MS, True)])
    bag = write_demo_bag(tmp_path / 'bag', spec)
    summary = convert_bags([bag], demo_config(episode_split_topic='/recording'), tmp_path / 'ds', progress=False)
    assert summary.episodes == 2 and summary.skipped == []
    root, data = open_dataset(tmp_path / 'ds')
    # episode 1: [0, 0.8] s, ticks from 0.05 s (wrist) to 0.75 s; episode 2: [1.0, end], the first command
    # inside it is at 1.22 s, so its ticks run 1.22 .. 1.92 s
    first = [T0 + 50 * MS + i * 100 * MS for i in range(8)]
    second = [T0 + 1220 * MS + i * 100 * MS for i in range(8)]
    assert root['meta/episode_ends'][:].tolist() == [8, 16]
    for key in ('state', 'action', 'front', 'wrist', 'timestamp'):
        expected = np.concatenate([expected_episode(spec, first)[key], expected_episode(spec, second)[key]])
        np.testing.assert_allclose(data[key], expected, atol=1e-6, err_msg=key)
    assert [e['start_stamp_ns'] for e in root.attrs['episodes']] == [first[0], second[0]]


def test_compressed_camera_is_detected_from_the_bag(tmp_path):
    with BagWriter(tmp_path / 'bag') as writer:
        for i in range(12):
            stamp = T0 + i * 100 * MS
            writer.write_compressed_image('/cam/compressed', stamp, front_rgb(i), fmt='png')
            writer.write_joint_state('/joint_states', stamp, ARM, [1.0, 2.0, float(i)])
    cfg = demo_config(cameras=(CameraConfig('/cam/compressed', 'cam'),), action=ActionConfig('next_joint_state'))
    assert convert_bags([tmp_path / 'bag'], cfg, tmp_path / 'ds', progress=False).frames == 12
    _root, data = open_dataset(tmp_path / 'ds')
    assert data['cam'][5, 0, 0].tolist() == [5, 100, 7] and data['state'][5].tolist() == [1.0, 2.0, 5.0]


def _image(stamp, height, width, encoding, data_len):
    return msg_class('sensor_msgs/msg/Image')(
        header=header(stamp, 'cam'), height=height, width=width, encoding=encoding, is_bigendian=0,
        step=width * 3, data=np.zeros(data_len, np.uint8))


def test_broken_inputs_are_reported_and_the_rest_converts(tmp_path):
    bags = tmp_path / 'bags'
    write_demo_bag(bags / 'good')
    truncated = write_demo_bag(bags / 'truncated')
    mcap = next(truncated.glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 3])
    # two bags whose front camera has one bad frame (index 5) amid good ones
    for name, encoding, data_len in (('unknown_encoding', 'yuv422', 16 * 20 * 3), ('wrong_size', 'rgb8', 100)):
        spec = DemoSpec()
        with BagWriter(bags / name) as writer:
            for i, stamp in enumerate(spec.front):
                if i == 5:
                    writer.write('/front/image_raw', 'sensor_msgs/msg/Image', _image(stamp, 16, 20, encoding, data_len),
                                 stamp)
                else:
                    writer.write_image('/front/image_raw', stamp, front_rgb(i))
            for stamp in spec.wrist:
                writer.write_image('/wrist/image_raw', stamp, wrist_rgb(0))
            for stamp in spec.joints:
                writer.write_joint_state('/joint_states', stamp, ARM, [0.0, 0.0, 0.0])
            for stamp in spec.commands:
                writer.write_joint_trajectory('/cmd', stamp, ARM, np.zeros((1, 3)), 0.1)
    write_demo_bag(bags / 'missing_joint', DemoSpec(joint_names=('j1', 'j3', 'finger')))
    spec = DemoSpec()
    write_demo_bag(bags / 'gap', dataclasses.replace(
        spec, joints=[s for s in spec.joints if not T0 + 700 * MS < s < T0 + 1400 * MS]))
    write_demo_bag(bags / 'missing_topic', dataclasses.replace(spec, commands=[]))

    summary = convert_bags([bags], demo_config(), tmp_path / 'ds', progress=False)
    assert summary.episodes == 1 and summary.frames == 20
    reasons = {bag.rsplit('/', 1)[-1]: reason for bag, reason in summary.skipped}
    assert set(reasons) == {'truncated', 'unknown_encoding', 'wrong_size', 'missing_joint', 'gap', 'missing_topic'}
    assert 'truncated' in reasons['truncated'] or 'corrupt' in reasons['truncated'] or 'opened' in reasons['truncated']
    assert '/front/image_raw' in reasons['unknown_encoding'] and "'yuv422'" in reasons['unknown_encoding']
    assert '100.250000000' in reasons['unknown_encoding']  # the stamp of frame 5
    assert '100 bytes' in reasons['wrong_size'] and '/front/image_raw' in reasons['wrong_size']
    assert "['j2'] missing" in reasons['missing_joint'] and '/joint_states' in reasons['missing_joint']
    assert 'gap of 0.720 s in /joint_states' in reasons['gap'] and 'max_gap_s=0.5' in reasons['gap']
    assert '/cmd' in reasons['missing_topic']
    root, data = open_dataset(tmp_path / 'ds')
    np.testing.assert_allclose(data['state'], expected_episode(DemoSpec(), TICKS)['state'], atol=1e-6)
    assert len(root.attrs['skipped']) == 6


def test_dataset_config_yaml_rejects_unknown_keys_by_name(tmp_path):
    good = {'cameras': [{'topic': '/c', 'key': 'cam'}], 'joint_names': ['a'],
            'action': {'source': 'joint_trajectory', 'topic': '/cmd', 'point': 'due'}, 'image_size': [64, 48]}
    path = tmp_path / 'cfg.yaml'
    path.write_text(yaml.safe_dump(good))
    cfg = load_dataset_config(path)
    assert cfg.image_size == (64, 48) and cfg.action.point == 'due' and cfg.control_rate_hz == 10.0
    for broken, message in (({**good, 'contol_rate_hz': 5}, "'contol_rate_hz'"),
                            ({**good, 'action': {'source': 'joint_trajectory', 'topik': '/x'}}, "'action.topik'"),
                            ({**good, 'cameras': [{'topic': '/c', 'key': 'state'}]}, 'cameras'),
                            ({**good, 'action': {'source': 'joint_trajectory'}}, 'action.topic'),
                            ({**good, 'image_size': 96}, 'image_size: expected a list'),
                            ({**good, 'max_gap_s': -1}, 'max_gap_s'),
                            ({'cameras': good['cameras']}, "'joint_names'")):
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(ConfigError, match=message):
            load_dataset_config(path)


def test_sim_config_loads():
    from pathlib import Path
    cfg = load_dataset_config(Path(__file__).resolve().parents[1] / 'config' / 'dataset_sim.yaml')
    assert cfg.cameras == (CameraConfig('/camera/color/image_raw', 'camera'),)
    assert cfg.joint_names == tuple(f'panda_joint{i}' for i in range(1, 8)) + ('panda_finger_joint1',)
    assert cfg.action == ActionConfig('joint_trajectory', '/arm_controller/joint_trajectory', 'first')
    assert cfg.image_size == (96, 96) and cfg.control_rate_hz == 10.0


def _cli_dataset_args(tmp_path):
    """The demo config as YAML in tmp_path, and `dp-ros dataset tmp_path/bags ... --out tmp_path/ds.zarr`."""
    cfg = demo_config()
    raw = {'cameras': [{'topic': c.topic, 'key': c.key} for c in cfg.cameras], 'joint_names': list(ARM),
           'action': {'source': 'joint_trajectory', 'topic': '/cmd'}, 'image_size': list(MODEL_HW)}
    (tmp_path / 'cfg.yaml').write_text(yaml.safe_dump(raw))
    return raw, ['dataset', str(tmp_path / 'bags'), '--config', str(tmp_path / 'cfg.yaml'), '--out',
                 str(tmp_path / 'ds.zarr'), '--no-progress']


def test_cli_dataset_on_a_bag_directory(tmp_path, capsys):
    write_demo_bag(tmp_path / 'bags' / 'one')
    write_demo_bag(tmp_path / 'bags' / 'nested' / 'two', storage='sqlite3')
    raw, argv = _cli_dataset_args(tmp_path)
    assert cli_main(argv) == 0
    assert '2 episode(s), 40 frame(s) from 2 bag(s); 0 skipped' in capsys.readouterr().out
    assert zarr.open_group(str(tmp_path / 'ds.zarr'), mode='r')['meta/episode_ends'][:].tolist() == [20, 40]
    assert cli_main(argv) == 2  # refuses to overwrite
    assert 'exists' in capsys.readouterr().err
    assert cli_main(argv + ['--overwrite']) == 0
    assert cli_main(['dataset', str(tmp_path / 'nope'), '--config', str(tmp_path / 'cfg.yaml'), '--out',
                     str(tmp_path / 'x')]) == 2
    assert 'nope' in capsys.readouterr().err


def test_cli_dataset_where_nothing_converts_writes_nothing_and_says_why_once(tmp_path, capsys):
    for name in ('a', 'b', 'c'):
        write_demo_bag(tmp_path / 'bags' / name, dataclasses.replace(DemoSpec(), commands=[]))
    raw, argv = _cli_dataset_args(tmp_path)
    assert cli_main(argv) == 1
    out = capsys.readouterr().out
    assert not (tmp_path / 'ds.zarr').exists() and not (tmp_path / 'ds.zarr.partial').exists()
    assert out.count('/cmd') == 1 and 'skipped 3 bags' in out and 'ds.zarr was not written' in out, out
    # The corrected rerun (commands recorded on /joint_states' next sample instead) needs no --overwrite.
    raw['action'] = {'source': 'next_joint_state'}
    (tmp_path / 'cfg.yaml').write_text(yaml.safe_dump(raw))
    assert cli_main(argv) == 0
    assert 'wrote ' in capsys.readouterr().out and (tmp_path / 'ds.zarr').is_dir()

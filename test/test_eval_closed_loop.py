"""Closed-loop evaluation: statistics, and the node's execution path driven on sim time.

The policies here are stand-ins that need no training: an oracle that returns the scripted expert's
plan as chunks (a perfectly trained policy), and a hold policy that never moves. If the latency /
execution plumbing broke, the oracle would stop reaching the expert's success.
"""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from diffusion_policy_ros.robot_description import PANDA_JOINTS
from diffusion_policy_ros.sim.arm import SimArm, SimConfig
from diffusion_policy_ros.sim.evaluate import compare, evaluate, mean_squared_jerk, wilson_interval
from diffusion_policy_ros.sim.experts import ScriptedExpert
from diffusion_policy_ros.sim.sweeps import sweep


class OraclePolicy:
    """Chunks from the scripted expert's plan, in the dataset's action convention: the row for time t
    is the joint target the expert commands at t (due at t + dt). It peeks at the arm (privileged)."""

    def __init__(self, arm: SimArm, horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 8) -> None:
        self.arm = arm
        self.config = SimpleNamespace(policy='oracle', horizon=horizon, n_obs_steps=n_obs_steps,
                                      n_action_steps=n_action_steps)
        self.obs_spec = SimpleNamespace(camera_keys=[], image_shape=(96, 96), joint_names=list(PANDA_JOINTS))
        self.action_spec = SimpleNamespace(joint_names=list(PANDA_JOINTS))
        self.calls = 0
        self._expert = None
        self._seed = None
        self._last_time = math.inf

    def predict_action_chunk(self, obs, num_inference_steps=None, generator=None):
        self.calls += 1
        dt = 1.0 / self.arm.cfg.control_hz
        now = round(self.arm.sim_time / dt) * dt  # the sim is paused at the tick during inference
        if self._expert is None or self.arm.seed != self._seed or now < self._last_time:
            self._expert, self._seed, self._start = ScriptedExpert(self.arm), self.arm.seed, now
        self._last_time = now
        t0 = now - (self.config.n_obs_steps - 1) * dt
        return np.stack([self._expert.joint_target(t0 + (i + 1) * dt - self._start)
                         for i in range(self.config.horizon)]).astype(np.float32)


class HoldPolicy(OraclePolicy):
    """Repeats the newest measured state: a policy that has learned nothing."""

    def predict_action_chunk(self, obs, num_inference_steps=None, generator=None):
        self.calls += 1
        return np.repeat(np.asarray(obs['state'])[-1:], self.config.horizon, axis=0)


@pytest.fixture(scope='module')
def arm():
    with SimArm(SimConfig(task='reach_around')) as sim:
        yield sim


def test_wilson_interval_matches_published_values():
    # Reference values: Wilson (1927) / Newcombe (1998) 95 % intervals.
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(48, 50) == pytest.approx((0.8654, 0.9890), abs=1e-4)
    with pytest.raises(ValueError, match='trials'):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match='successes'):
        wilson_interval(11, 10)


def test_mean_squared_jerk_of_a_cubic_is_its_constant_third_derivative():
    dt = 0.1
    t = np.arange(20) * dt
    path = np.stack([t ** 3, 2 * t ** 3], axis=1)  # jerk 6 and 12 rad/s^3
    assert mean_squared_jerk(path, dt) == pytest.approx(36 + 144, rel=1e-6)
    assert mean_squared_jerk(np.stack([t, t]).T, dt) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(mean_squared_jerk(path[:3], dt))


def test_oracle_reaches_expert_success_through_latency_compensation(arm, tmp_path):
    oracle = OraclePolicy(arm)
    report = evaluate(oracle, 'reach_around', 4, 1000, latency_s=0.3, arm=arm, gif_path=tmp_path / 'ep.gif')
    assert report.seeds == [1000, 1001, 1002, 1003]
    assert report.success_rate == 1.0 and report.successes == 4
    assert report.success_ci95 == pytest.approx(wilson_interval(4, 4))
    # The expert alternates sides by seed: the closed loop must reproduce both modes, without contact.
    assert report.reach_around['sides'] == {'left': 2, 'right': 2, 'none': 0}
    assert report.reach_around['side_share'] == {'left': 0.5, 'right': 0.5}
    assert report.reach_around['obstacle_contacts'] == 0
    assert report.latency_s == 0.3 and report.latency_source == 'fixed'
    for episode in report.episodes:
        assert episode.success and episode.duration_s < 6.0
        # A 0.3 s late chunk has lost the rows for t, t + 0.1, t + 0.2 (all but possibly the last chunk).
        assert episode.dropped_actions >= 3 * (episode.inference_calls - 1)
        assert math.isfinite(episode.mean_squared_jerk)
    assert report.inference_latency_s['count'] == sum(e.inference_calls for e in report.episodes) == oracle.calls
    gif = (tmp_path / 'ep.gif').read_bytes()
    assert gif[:6] == b'GIF89a' and report.gif == str(tmp_path / 'ep.gif')
    from PIL import Image
    with Image.open(tmp_path / 'ep.gif') as image:  # plays at the control rate: 100 ms a frame
        durations = []
        for index in range(image.n_frames):  # (Pillow merges identical frames, adding their delays)
            image.seek(index)
            durations.append(image.info['duration'])
    assert len(durations) > 10 and min(durations) == 100 and all(d % 100 == 0 for d in durations), durations
    document = json.loads(report.to_json())
    assert {'success_rate', 'success_ci95', 'episodes', 'inference_latency_s', 'mean_squared_jerk',
            'reach_around', 'latency_s', 'seeds', 'gif'} <= set(document)
    assert set(document['episodes'][0]) >= {'seed', 'success', 'duration_s', 'info', 'mean_squared_jerk'}
    assert document['episodes'][0]['info']['side'] == 'left'


def test_hold_policy_fails_and_the_comparison_uses_the_same_seeds(arm):
    result = compare({'oracle': OraclePolicy(arm), 'hold': HoldPolicy(arm)}, 'reach_around', 2, 1010,
                     latency_s=0.1, arm=arm)
    assert result['seeds'] == [1010, 1011]
    assert [p['seeds'] for p in result['policies'].values()] == [[1010, 1011]] * 2
    assert result['summary']['oracle']['success_rate'] == 1.0
    hold = result['policies']['hold']
    assert hold['success_rate'] == 0.0 and hold['successes'] == 0
    assert hold['reach_around']['sides']['none'] == 2  # it never passed the obstacle
    assert all(e['duration_s'] == pytest.approx(6.0) for e in hold['episodes'])  # ran to the time limit
    json.dumps(result, allow_nan=False)


def test_the_window_sink_gets_every_window_the_policy_saw_in_the_episodes(arm, tmp_path):
    """`dp-ros eval --save-windows` (on-policy distillation): each window the policy was called with in
    the episodes, oldest frame first, and not the warm-up calls that measure the latency."""
    policy, windows = OraclePolicy(arm), []
    evaluate(policy, 'reach_around', 1, 1002, arm=arm, episode_seconds=2.5, window_sink=windows)
    assert len(windows) == policy.calls - 3 >= 3  # three warm-up calls measured the latency
    assert all(w['state'].shape == (2, 8) for w in windows)
    assert not np.array_equal(windows[0]['state'], windows[-1]['state'])  # copies, not one reused buffer
    from diffusion_policy_ros.data.windows import load_windows, save_windows
    stacked, meta = load_windows(save_windows(tmp_path / 'w.safetensors', windows, {'task': 'reach_around'}))
    assert stacked['state'].shape == (len(windows), 2, 8) and meta == {'task': 'reach_around'}
    np.testing.assert_array_equal(stacked['state'][1], windows[1]['state'])


def test_default_latency_is_measured_and_rounded_up_to_control_periods(arm):
    report = evaluate(OraclePolicy(arm), 'reach_around', 1, 1002, arm=arm)
    assert report.latency_s == pytest.approx(0.1)  # microseconds of work still cost one tick, as in the node
    assert report.latency_source.startswith('measured')
    assert report.success_rate == 1.0


def test_action_horizon_shorter_than_latency_stutters(arm, tmp_path):
    # 4 actions per chunk with 0.3 s latency leave one action per chunk: stop-and-go. 8 do not.
    result = sweep(OraclePolicy(arm), 'reach_around', 'action_horizon', 2, 1000, tmp_path, latency_s=0.3,
                   arm=arm, values=(4, 8, 32))
    rows = {row.value: row for row in result.rows}
    assert sorted(rows) == [4, 8, 15] and rows[15].requested == [32]
    assert any('clipped to 15' in note for note in result.notes)
    assert all(row.success_rate == 1.0 for row in result.rows)
    assert rows[4].mean_squared_jerk > 5 * rows[8].mean_squared_jerk
    for kind in ('csv', 'markdown', 'png', 'json'):
        assert (tmp_path / result.files[kind].split('/')[-1]).stat().st_size > 0
    table = (tmp_path / 'sweep_action_horizon.md').read_text()
    assert 'requested [32]' in table and '| 4 | 2/2 (100%)' in table
    csv_lines = (tmp_path / 'sweep_action_horizon.csv').read_text().splitlines()
    assert len(csv_lines) == 1 + 3 and csv_lines[0].startswith('value,success_rate')


def test_bad_arguments_are_named(arm):
    oracle = OraclePolicy(arm)
    with pytest.raises(ValueError, match="unknown task 'stack'"):
        evaluate(oracle, 'stack', 1, arm=arm)
    with pytest.raises(ValueError, match='n_action_steps 16 must be in'):
        evaluate(oracle, 'reach_around', 1, n_action_steps=16, arm=arm, latency_s=0.1)
    with pytest.raises(ValueError, match='blending'):
        evaluate(oracle, 'reach_around', 1, blending='average', arm=arm)
    wrong = OraclePolicy(arm)
    wrong.action_spec = SimpleNamespace(joint_names=['joint_a', 'joint_b'])
    with pytest.raises(ValueError, match="commands joints \\['joint_a', 'joint_b'\\]"):
        evaluate(wrong, 'reach_around', 1, arm=arm, latency_s=0.1)
    with pytest.raises(TypeError, match='not a policy'):
        evaluate(object(), 'reach_around', 1, arm=arm)
    with pytest.raises(ValueError, match='sweep: unknown --what'):
        sweep(oracle, 'reach_around', 'temperature', 1, arm=arm)


def test_the_evaluator_renders_at_the_recording_size_and_resizes_like_the_node():
    """A 64x64 camera policy is trained on 96x96 recordings resized by the dataset (and the node resizes
    the same way): rendering at 64x64 directly would show it images it never saw."""
    from diffusion_policy_ros.sim.evaluate import default_sim_config
    policy = SimpleNamespace(obs_spec=SimpleNamespace(camera_keys=['camera'], image_shape=(64, 64)))
    cfg = default_sim_config('pick_place', policy)
    assert (cfg.camera_height, cfg.camera_width) == (SimConfig().camera_height, SimConfig().camera_width) == (96, 96)
